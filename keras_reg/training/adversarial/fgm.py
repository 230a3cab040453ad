"""FGM adversarial training on an embedding matrix.

References:
    Goodfellow, Shlens, Szegedy. Explaining and Harnessing Adversarial Examples.
    ICLR 2015. https://arxiv.org/abs/1412.6572

    Miyato, Dai, Goodfellow. Adversarial Training Methods for Semi-Supervised
    Text Classification. ICLR 2017. https://arxiv.org/abs/1605.07725

    Su Jianlin. 对抗训练浅谈：意义、方法和思考 (On adversarial training: meaning,
    methods and thoughts). https://kexue.fm/archives/7234
"""

from keras_reg.training.adversarial.common import (
    check_embedding_and_loss,
    clean_gradient,
    clean_term_variables,
    embedding_name_argument,
    with_clean_term,
)
from keras_reg.training.core import relative, schedule
from keras_reg.training.core.embedding import embedding_matrix, find_embedding_layer
from keras_reg.training.core.export import export
from keras_reg.training.core.regularizer import TrainingRegularizer
from keras_reg.validation import boolean


@export("fgm")
class FGM(TrainingRegularizer):
    """Fast gradient method on an embedding matrix (Miyato et al. 2017).

    With L the training loss of the batch (compiled loss with sample weights,
    plus the model's regularisation losses), E the embedding matrix and
    g = dL/dE (rows of repeated tokens summed, unused rows zero), the step uses

        delta = epsilon * g / ||g||_F        (norm over the whole matrix)

    (no perturbation where ||g|| is 0 or not finite: a NaN batch perturbs
    nothing)
    and applies the optimizer, to the unperturbed weights, the gradients of
    L(E + delta) with respect to all trainable weights (E included). With
    ``add_clean_loss=True`` it uses the gradients of L(E) + L(E + delta)
    instead, the common variant that keeps the clean gradient.

    The perturbed pass is a second ordinary training forward pass: like the
    clean one it draws its own dropout mask and updates BatchNormalization
    statistics. Every reader of E sees E + delta: a tied output head too. The
    loss ``fit`` reports is the loss being optimized; ``adversarial_loss``
    in the logs is L(E + delta).

    Args:
        embedding_name: Name of the embedding layer, e.g. ``'Embedding-Token'``
            for bert4keras's BERT.
        epsilon: Norm of the perturbation of the whole matrix. The source post
            uses 1 for BERT fine-tuning (0.5 in some tasks). Or a schedule of
            the step, e.g. a ramp (see `keras_reg.training.core.schedule`).
            At most ~1.8e19 (its square must be a finite float32). Or
            ``keras_reg.relative(r)``: ``||delta||_F = r * ||E_S||_F``, E_S the
            rows the perturbation moves (the batch's tokens, each once): a
            size of move that means the same on every model, still to be
            tuned (see `keras_reg.training.core.relative`).
        add_clean_loss: Optimize L(E) + L(E + delta) instead of L(E + delta).

    Example:
        >>> model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
        >>> keras_reg.fgm(model, "Embedding-Token", epsilon=1.0)
        >>> model.fit(x, y)
    """

    def __init__(self, embedding_name, epsilon=1.0, add_clean_loss=False):
        self.embedding_name = embedding_name_argument(embedding_name)
        self.epsilon = relative.strength("epsilon", epsilon, example=1.0)
        self.add_clean_loss = boolean("add_clean_loss", add_clean_loss)

    def validate(self, model):
        check_embedding_and_loss(self, model)

    def required_layers(self, model):
        return [(find_embedding_layer(model, self.embedding_name), True)]

    def logged_terms(self):
        return ("adversarial_loss",)

    def watched_variables(self, model):
        matrix = self._matrix(model)
        if not self.add_clean_loss:
            return [matrix]
        return clean_term_variables(model, matrix)

    def regularized_loss(self, step):
        layer = find_embedding_layer(step.model, self.embedding_name)
        matrix = embedding_matrix(layer)
        gradient, clean = clean_gradient(step, layer, matrix, self.add_clean_loss)
        epsilon = relative.current(
            step, self.epsilon, lambda: relative.rows_norm(step, matrix, gradient)
        )
        delta = step.scale_to_norm(gradient, epsilon)
        adversarial = step.loss_with_perturbation(layer, matrix, delta)
        step.log("adversarial_loss", adversarial)
        return with_clean_term(clean, adversarial)

    def _matrix(self, model):
        return embedding_matrix(find_embedding_layer(model, self.embedding_name))

    def get_config(self):
        return {
            "embedding_name": self.embedding_name,
            "epsilon": schedule.serialize(self.epsilon),
            "add_clean_loss": self.add_clean_loss,
        }
