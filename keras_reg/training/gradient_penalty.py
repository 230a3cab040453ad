"""Gradient penalties: on the embedding (FGM to first order) and on the weights.

References:
    Su Jianlin. 对抗训练浅谈：意义、方法和思考 (On adversarial training).
    https://kexue.fm/archives/7234 -- FGM's loss L(x + eps g/||g||) is, to
    first order, L(x) + eps ||g||, which the post trains as a gradient penalty
    0.5 * eps * ||dL/de||^2 on the looked-up embeddings (bert4keras,
    ``examples/task_iflytek_gradient_penalty.py``).

    Barrett, Dherin. Implicit Gradient Regularization. ICLR 2021.
    https://arxiv.org/abs/2009.11162 -- gradient descent with step h follows,
    to second order, the flow of L + (h/4) ||dL/dtheta||^2; Su Jianlin,
    为什么学习率不宜过小 (https://kexue.fm/archives/7787), makes the penalty
    explicit.
"""

from keras_reg.training import step as step_module
from keras_reg.training.embedding import embedding_matrix, find_embedding_layer
from keras_reg.training.regularizer import TrainingRegularizer, register
from keras_reg.validation import check_options, choice, positive_number

PER = ("occurrence", "row")


@register
class GradientPenalty(TrainingRegularizer):
    """Penalises the gradient of the loss with respect to the embeddings.

    With L the training loss of the batch (compiled loss with sample weights,
    plus the model's losses) the step optimizes

        L + 0.5 * epsilon * ||dL/de||^2

    where, with ``per="occurrence"`` (the source), e are the looked-up vectors,
    one per token occurrence (the gradient with respect to the embedding
    layer's output; the source's ``K.gradients(loss, [E])[0].values``), and with
    ``per="row"`` the matrix gradient dL/dE, repeated tokens summed. The
    penalty is differentiated too (double backprop), so it changes every
    weight's update; a penalty computed from a detached gradient changes none.

    Args:
        embedding_name: Name of the embedding layer (``'Embedding-Token'`` in
            bert4keras's BERT).
        epsilon: Weight of the penalty (the source uses 1).
        per: ``"occurrence"`` or ``"row"``, see above.

    Example:
        >>> model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
        >>> keras_reg.gradient_penalty(model, "Embedding-Token", epsilon=1.0)
        >>> model.fit(x, y)
    """

    def __init__(self, embedding_name, epsilon=1.0, per="occurrence"):
        if not isinstance(embedding_name, str) or not embedding_name:
            raise ValueError(
                "`embedding_name` must be the name of an embedding layer, received "
                f"embedding_name={embedding_name!r}."
            )
        self.embedding_name = embedding_name
        self.epsilon = positive_number("epsilon", epsilon, example=1.0)
        self.per = choice("per", per, PER)

    def validate(self, model):
        find_embedding_layer(model, self.embedding_name)

    def logged_terms(self):
        return ("gradient_penalty",)

    def watched_variables(self, model):
        if self.per == "occurrence":
            return []
        return [embedding_matrix(find_embedding_layer(model, self.embedding_name))]

    def watched_outputs(self, model):
        if self.per == "row":
            return []
        return [find_embedding_layer(model, self.embedding_name)]

    def regularized_loss(self, step):
        layer = find_embedding_layer(step.model, self.embedding_name)
        if self.per == "occurrence":
            gradients = step.output_gradients(layer)
        else:
            gradients = step.penalty_gradients([embedding_matrix(layer)])
        squared = sum(step.squared_norm(g) for g in gradients)
        penalty = 0.5 * self.epsilon * squared
        step.log("gradient_penalty", penalty)
        return step.loss + penalty

    def get_config(self):
        return {
            "embedding_name": self.embedding_name,
            "epsilon": self.epsilon,
            "per": self.per,
        }


@register
class ParameterGradientPenalty(TrainingRegularizer):
    """Penalises the gradient of the loss with respect to the weights.

    The step optimizes ``L + weight * ||dL/dtheta||^2`` over all trainable
    weights, or those of the named layers. Gradient descent with learning rate
    h already does this implicitly with ``weight = h / 4`` (Barrett & Dherin
    2021); a larger weight asks for flatter minima. Sparse (embedding)
    gradients are summed per row first, so the norm is the dense one.

    Args:
        weight: Factor of the squared gradient norm.
        layers: Names of the layers whose trainable weights enter the norm;
            None: every trainable weight of the model.

    Example:
        >>> keras_reg.parameter_gradient_penalty(model, weight=0.01)
    """

    def __init__(self, weight, layers=None):
        self.weight = positive_number("weight", weight, example=0.01)
        if layers is not None:
            if isinstance(layers, str) or not all(
                isinstance(name, str) for name in layers
            ):
                raise ValueError(
                    "`layers` must be a list of layer names or None, received "
                    f"layers={layers!r}. Pass e.g. layers=['dense']."
                )
            layers = list(layers)
        self.layers = layers

    def validate(self, model):
        if not self.watched_variables(model):
            raise ValueError(
                f"ParameterGradientPenalty found no trainable weight in model "
                f"{model.name!r} (layers={self.layers!r}). Build the model first, "
                "or name layers that have trainable weights."
            )

    def logged_terms(self):
        return ("gradient_penalty",)

    def watched_variables(self, model):
        if self.layers is None:
            return list(model.trainable_variables)
        variables = []
        for name in self.layers:
            try:
                layer = model.get_layer(name)
            except ValueError as error:
                raise ValueError(
                    f"No layer named {name!r} in model {model.name!r} "
                    f"(layers={self.layers!r}). Layers: "
                    f"{', '.join(repr(x.name) for x in model.layers)}."
                ) from error
            variables.extend(layer.trainable_variables)
        return variables

    def regularized_loss(self, step):
        variables = self.watched_variables(step.model)
        gradients = step.penalty_gradients(variables)
        penalty = self.weight * sum(step.squared_norm(g) for g in gradients)
        step.log("gradient_penalty", penalty)
        return step.loss + penalty

    def get_config(self):
        return {"weight": self.weight, "layers": self.layers}


@check_options
def gradient_penalty(model, embedding_name, epsilon=1.0, per="occurrence"):
    """Trains a compiled model on L + 0.5 * epsilon * ||dL/d embeddings||^2.

    See `GradientPenalty`. One line after ``compile``.

    Returns:
        ``model``.

    Example:
        >>> keras_reg.gradient_penalty(model, "Embedding-Token", epsilon=1.0)
    """
    regularizer = GradientPenalty(embedding_name, epsilon=epsilon, per=per)
    return step_module.install(model, regularizer)


@check_options
def parameter_gradient_penalty(model, weight, layers=None):
    """Trains a compiled model on L + weight * ||dL/dtheta||^2.

    See `ParameterGradientPenalty`. One line after ``compile``.

    Returns:
        ``model``.

    Example:
        >>> keras_reg.parameter_gradient_penalty(model, weight=0.01)
    """
    regularizer = ParameterGradientPenalty(weight, layers=layers)
    return step_module.install(model, regularizer)
