"""PGD adversarial training on an embedding matrix (Madry et al. 2018).

References:
    Madry, Makelov, Schmidt, Tsipras, Vladu. Towards Deep Learning Models
    Resistant to Adversarial Attacks. ICLR 2018. https://arxiv.org/abs/1706.06083

    bert4torch's ``PGD`` (epsilon 1, alpha 0.3, 3 steps, the clean gradient
    kept): the text-classification form this class follows.
"""

from keras_reg._compat import keras
from keras_reg.training.adversarial.common import clean_gradient, with_clean_term
from keras_reg.training.adversarial.fgm import FGM
from keras_reg.training.core import relative, schedule
from keras_reg.training.core.embedding import embedding_matrix, find_embedding_layer
from keras_reg.training.core.export import export
from keras_reg.validation import boolean, integer_argument

ops = keras.ops


@export("pgd")
class PGD(FGM):
    """Projected gradient descent on an embedding matrix (Madry et al. 2018).

    With L the training loss of the batch and E the embedding matrix, the step
    builds the perturbation in ``steps`` normalised ascent steps, each kept in
    the ball ``||r||_F <= epsilon`` (norms over the whole matrix, as `FGM`):

        r_0 = 0
        g_k = dL/dE at E + r_{k-1}     (g_1: the step's own clean gradient)
        r_k = P_epsilon(r_{k-1} + alpha * g_k / ||g_k||_F),  k = 1..steps

    with ``P_epsilon(r) = r * min(1, epsilon / ||r||_F)``, and applies to the
    unperturbed weights the gradients of L(E + r_steps), plus those of L(E)
    with ``add_clean_loss=True`` (the default, as bert4torch). A zero or
    non-finite g_k adds nothing. Each step costs the clean pass, ``steps - 1``
    passes with a backward pass to E, and the final pass.

    With ``steps=1`` and ``alpha >= epsilon`` this is `FGM` exactly (the same
    operations). The intermediate passes are ordinary training passes; on JAX
    and PyTorch their non-trainable updates (BatchNormalization statistics,
    dropout seeds) are discarded, on TensorFlow they are kept.

    Args:
        embedding_name: Name of the embedding layer, e.g. ``'Embedding-Token'``.
        epsilon: Radius of the ball (norm of the whole matrix's perturbation),
            or a schedule of the step (see `keras_reg.training.core.schedule`),
            or ``keras_reg.relative(r)``: ``r * ||E_S||_F``, E_S the rows the
            clean gradient touches (the batch's tokens, each once; see
            `keras_reg.training.core.relative`).
        alpha: Norm of each ascent step. Any finite value: the projection
            onto the ball is computed stably, so a huge ``alpha`` lands every
            ascent step on the ball. Relative like ``epsilon`` (same scale).
        steps: Number of ascent steps (>= 1).
        add_clean_loss: Optimize L(E) + L(E + r) instead of L(E + r).

    Example:
        >>> model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
        >>> keras_reg.pgd(model, "Embedding-Token", epsilon=1.0, alpha=0.3)
    """

    def __init__(
        self, embedding_name, epsilon=1.0, alpha=0.3, steps=3, add_clean_loss=True
    ):
        super().__init__(embedding_name, epsilon=epsilon, add_clean_loss=add_clean_loss)
        self.alpha = relative.strength("alpha", alpha, example=0.3, squared=False)
        self.steps = integer_argument("steps", steps, minimum=1, example=3)
        self.add_clean_loss = boolean("add_clean_loss", add_clean_loss)

    def regularized_loss(self, step):
        layer = find_embedding_layer(step.model, self.embedding_name)
        matrix = embedding_matrix(layer)
        gradient, clean = clean_gradient(step, layer, matrix, self.add_clean_loss)
        epsilon, alpha = relative.currents(
            step,
            (self.epsilon, self.alpha),
            lambda: relative.rows_norm(step, matrix, gradient),
        )
        # r_1 = P(alpha g / ||g||) = min(alpha, epsilon) g / ||g||.
        first = (
            min(alpha, epsilon)
            if all(isinstance(v, float) for v in (alpha, epsilon))
            else ops.minimum(alpha, epsilon)
        )
        delta = step.scale_to_norm(gradient, first)
        for _ in range(self.steps - 1):
            gradient = step.matrix_gradient(layer, matrix, delta)
            ascent = step.scale_to_norm(gradient, alpha)
            delta = step.clip_to_norm(step.add_perturbations(delta, ascent), epsilon)
        adversarial = step.loss_with_perturbation(layer, matrix, delta)
        step.log("adversarial_loss", adversarial)
        return with_clean_term(clean, adversarial)

    def get_config(self):
        config = super().get_config()
        config.update(alpha=schedule.serialize(self.alpha), steps=self.steps)
        return config

