"""Gradient penalties: on the embedding (FGM to first order) and on the weights.

References:
    Su Jianlin. 对抗训练浅谈：意义、方法和思考 (On adversarial training).
    https://kexue.fm/archives/7234 -- FGM's loss L(x + eps g/||g||) is, to
    first order, L(x) + eps ||g||, which the post trains as a gradient penalty
    0.5 * eps * ||dL/de||^2 (here ``weight``) on the looked-up embeddings (bert4keras,
    ``examples/task_iflytek_gradient_penalty.py``).

    Barrett, Dherin. Implicit Gradient Regularization. ICLR 2021.
    https://arxiv.org/abs/2009.11162 -- gradient descent with step h follows,
    to second order, the flow of L + (h/4) ||dL/dtheta||^2; Su Jianlin,
    为什么学习率不宜过小 (https://kexue.fm/archives/7787), makes the penalty
    explicit.
"""

from keras_reg._compat import keras
from keras_reg.training.core import projection, schedule
from keras_reg.training.core.embedding import (
    embedding_matrix,
    find_embedding_layer,
    largest_embedding,
)
from keras_reg.training.core.export import export
from keras_reg.training.core.regularizer import TrainingRegularizer
from keras_reg.validation import (
    choice,
    non_negative_number,
    require_loss,
)

ops = keras.ops

PER = ("occurrence", "row")


@export("gradient_penalty", renamed={"epsilon": "weight"})
class GradientPenalty(TrainingRegularizer):
    """Penalises the gradient of the loss with respect to the embeddings.

    With L the training loss of the batch (compiled loss with sample weights,
    plus the model's losses) the step optimizes

        L + 0.5 * weight * ||dL/de||^2

    where, with ``per="occurrence"`` (the source), e are the looked-up vectors,
    one per token occurrence (the gradient with respect to the embedding
    layer's output; the source's ``K.gradients(loss, [E])[0].values``), and with
    ``per="row"`` the matrix gradient dL/dE, repeated tokens summed. The
    penalty is differentiated too (double backprop), so it changes every
    weight's update; a penalty computed from a detached gradient changes none.

    Args:
        embedding_name: Name of the embedding layer (``'Embedding-Token'`` in
            bert4keras's BERT).
        weight: Weight of the penalty (the source uses 1), or a schedule of
            the step (see `keras_reg.training.core.schedule`). ``epsilon=``
            is a deprecated alias (removed in 0.3).
        per: ``"occurrence"`` or ``"row"``, see above.

    Example:
        >>> model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
        >>> keras_reg.gradient_penalty(model, "Embedding-Token", weight=1.0)
        >>> model.fit(x, y)
    """

    def __init__(self, embedding_name, weight=1.0, per="occurrence"):
        if not isinstance(embedding_name, str) or not embedding_name:
            raise ValueError(
                "`embedding_name` must be the name of an embedding layer, received "
                f"embedding_name={embedding_name!r}."
            )
        self.embedding_name = embedding_name
        self.weight = schedule.strength("weight", weight, example=1.0)
        self.per = choice("per", per, PER)

    def validate(self, model):
        find_embedding_layer(model, self.embedding_name)
        require_loss("GradientPenalty", model)

    def required_layers(self, model):
        return [(find_embedding_layer(model, self.embedding_name), True)]

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
            # One gradient per token occurrence of this replica's shard: the
            # global batch's penalty sums over every replica's occurrences.
            gradients = step.output_gradients(layer)
            squared = step.global_sum(sum(step.squared_norm(g) for g in gradients))
        else:
            # The matrix gradient of the global loss (summed over replicas),
            # as the batch's rows where the backend takes it so.
            gradient = step.matrix_penalty_gradient(layer, embedding_matrix(layer))
            squared = step.squared_norm(gradient)
        penalty = squared * schedule.current(step, self.weight) * 0.5
        step.log("gradient_penalty", penalty)
        return step.loss_plus(penalty)

    def get_config(self):
        return {
            "embedding_name": self.embedding_name,
            "weight": schedule.serialize(self.weight),
            "per": self.per,
        }


@export("parameter_gradient_penalty")
class ParameterGradientPenalty(TrainingRegularizer):
    """Penalises the gradient of the loss with respect to the weights.

    The step optimizes ``L + weight * ||dL/dtheta||^2`` over all trainable
    weights, or those of the named layers. Gradient descent with learning rate
    h already does this implicitly with ``weight = h / 4`` (Barrett & Dherin
    2021); a larger weight asks for flatter minima. Sparse (embedding)
    gradients are summed per row first, so the norm is the dense one.

    Args:
        weight: Factor of the squared gradient norm, or a schedule of the
            step (see `keras_reg.training.core.schedule`).
        layers: Names of the layers whose trainable weights enter the norm;
            None: every trainable weight of the model.

    Example:
        >>> keras_reg.parameter_gradient_penalty(model, weight=0.01)
    """

    def __init__(self, weight, layers=None):
        self.weight = schedule.strength("weight", weight, example=0.01)
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
        require_loss("ParameterGradientPenalty", model)
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

    def required_layers(self, model):
        if self.layers is None:
            return []
        return [(model.get_layer(name), False) for name in self.layers]

    def row_lookups(self, model):
        table = largest_embedding(model, list(model.trainable_variables))
        return [] if table is None else [table[0]]

    def regularized_loss(self, step):
        variables = self.watched_variables(step.model)
        weight = schedule.current(step, self.weight)
        table = largest_embedding(step.model, list(step.model.trainable_variables))
        loss, penalty = step.loss_plus_gradient_norm(variables, weight, table=table)
        step.log("gradient_penalty", penalty)
        return loss

    def get_config(self):
        return {"weight": schedule.serialize(self.weight), "layers": self.layers}


@export("input_gradient_penalty")
class InputGradientPenalty(TrainingRegularizer):
    """Penalises the gradient of the model's output with respect to its inputs.

    The step optimizes ``L + weight * mean_i ||grad_{x_i} f(x_i)||^2`` over the
    batch's examples, or, with ``target``, ``L + weight * mean_i
    (||grad_{x_i} f(x_i)|| - target)^2`` (the form WGAN-GP uses for critics,
    here at the data points). f is the model's output; for several outputs per
    example the squared norm is that of the Jacobian (Frobenius), estimated
    without bias from one random +-1 projection of the outputs per step
    (`keras_reg.training.core.projection`); ``target`` needs one output per example.
    The gradient is taken in the step's own forward pass and differentiated
    through (double backprop). Inputs must be float; for token ids use
    `GradientPenalty` on the embedding.

    References:
        Gulrajani et al. Improved Training of Wasserstein GANs. NeurIPS 2017.
        Su Jianlin. 深度学习中的Lipschitz约束：泛化与生成模型.
        https://kexue.fm/archives/6051

    Args:
        weight: Factor of the penalty, or a schedule of the step (see
            `keras_reg.training.core.schedule`).
        target: None, or the gradient norm to pull towards (e.g. 1.0).
        seed: Seed of the projections' signs.

    Example:
        >>> keras_reg.input_gradient_penalty(critic, weight=10.0, target=1.0)
    """

    def __init__(self, weight, target=None, seed=None):
        self.weight = schedule.strength("weight", weight, example=1.0)
        if target is not None:
            target = non_negative_number("target", target, example=1.0)
        self.target = target
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def validate(self, model):
        require_loss("InputGradientPenalty", model, example="mse")
        inputs = getattr(model, "inputs", None) or []
        dtypes = [keras.backend.standardize_dtype(t.dtype) for t in inputs]
        if dtypes and not any(keras.backend.is_float_dtype(d) for d in dtypes):
            raise ValueError(
                f"InputGradientPenalty needs float inputs, but model {model.name!r} "
                f"takes {', '.join(dtypes)} (token ids?). Use "
                "keras_reg.gradient_penalty(model, 'Embedding-Token') to penalise "
                "the gradient w.r.t. the embedded sequence."
            )

    def logged_terms(self):
        return ("input_gradient_penalty",)

    def watches_inputs(self, model):
        return True

    def regularized_loss(self, step):
        y_pred = keras.tree.flatten(step.y_pred)[0]
        single = len(y_pred.shape) == 1 or y_pred.shape[-1] == 1
        if self.target is not None and not single:
            raise ValueError(
                f"InputGradientPenalty(target={self.target}) needs one output per "
                f"example (a critic); this model outputs shape {y_pred.shape}. "
                "Pass target=None to penalise the squared Jacobian norm."
            )
        seed = step.seed(self.generator)
        gradients = step.input_gradients(
            lambda outputs: projection.output_projection(
                keras.tree.flatten(outputs)[0], seed, step
            )
        )
        if not gradients:
            raise ValueError(
                "InputGradientPenalty found no float input in the batch. Use "
                "keras_reg.gradient_penalty on the embedding layer for token ids."
            )
        per_example = sum(_per_example_squares(g) for g in gradients)
        if self.target is None:
            penalty = step.global_mean(ops.mean(per_example))
        else:
            norm = ops.sqrt(per_example + 1e-12)
            penalty = step.global_mean(ops.mean(ops.square(norm - self.target)))
        penalty = penalty * schedule.current(step, self.weight)
        step.log("input_gradient_penalty", penalty)
        return step.loss_plus(penalty)

    def get_config(self):
        return {
            "weight": schedule.serialize(self.weight),
            "target": self.target,
            "seed": self.seed,
        }


def _per_example_squares(gradient):
    """Sum of squares of each example's gradient (batch first), in float32."""
    gradient = ops.cast(gradient, "float32")
    axes = tuple(range(1, len(gradient.shape)))
    return ops.sum(ops.square(gradient), axis=axes) if axes else ops.square(gradient)
