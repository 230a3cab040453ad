"""FreeFGM: FGM at about the cost of a plain step, from the previous gradient.

References:
    Shafahi, Najibi, Ghiasi, Xu, Dickerson, Studer, Davis, Taylor, Goldstein.
    Adversarial Training for Free! NeurIPS 2019. https://arxiv.org/abs/1904.12843

    Miyato, Dai, Goodfellow. Adversarial Training Methods for Semi-Supervised
    Text Classification. ICLR 2017. https://arxiv.org/abs/1605.07725
"""

from keras_reg._compat import keras
from keras_reg.training.adversarial.fgm import FGM
from keras_reg.training.core import relative, schedule
from keras_reg.training.core.embedding import embedding_matrix, find_embedding_layer
from keras_reg.training.core.export import export

ops = keras.ops

_STATE = "free_fgm_delta"


@export("free_fgm")
class FreeFGM(FGM):
    """FGM whose direction is the previous step's gradient ("for free").

    With E the embedding matrix, step t runs one training pass, at E + delta_t,
    and one backward pass; the gradient of that pass both updates every weight
    and gives the next step's direction:

        delta_1 = 0
        g_t = dL_t/dE at E_t + delta_t    (the gradient the optimizer applies)
        delta_{t+1} = epsilon * g_t / ||g_t||_F     (0 if ||g_t|| is 0 or not finite)

    As in free adversarial training (Shafahi et al. 2019), the ascent step
    costs nothing: it reuses the backward pass that trains the weights. Unlike
    the paper, the batch is not replayed: the direction comes from the
    previous batch, so it perturbs the rows of the tokens the two batches
    share (on a character or sub-word vocabulary, most of them).

    delta is kept in a non-trainable ``vocabulary x dim`` variable (on JAX,
    part of the train step's state), zero when the regulariser is installed
    and never one of the model's weights. The step's own (clean) forward pass
    still runs, for the metrics; the loss reported and optimized is
    L_t(E_t + delta_t). The gradients are taken once, of that pass, and
    handed to the optimizer through `keras_reg.backend.base.Step.linear_loss`,
    so the step's own backward pass costs one product per weight.

    The replay form of the paper (each batch repeated m times within one
    ``fit`` step) is not offered: it needs m optimizer updates per step, which
    the one-loss-per-step installer does not make; ``fit`` on a repeated
    dataset replays batches across steps instead.

    Args:
        embedding_name: Name of the embedding layer, e.g. ``'Embedding-Token'``.
        epsilon: Norm of the perturbation of the whole matrix, or a schedule
            of the step (see `keras_reg.training.core.schedule`), or
            ``keras_reg.relative(r)``: ``r * ||E_S||_F``, E_S the rows g_t
            touches (that batch's tokens, each once; see
            `keras_reg.training.core.relative`).

    Example:
        >>> keras_reg.free_fgm(model, "Embedding-Token", epsilon=1.0)
    """

    def __init__(self, embedding_name, epsilon=1.0):
        super().__init__(embedding_name, epsilon=epsilon)

    def carried_state(self, model):
        return {_STATE: tuple(self._matrix(model).shape)}

    def watched_variables(self, model):
        return [self._matrix(model)]

    def regularized_loss(self, step):
        layer = find_embedding_layer(step.model, self.embedding_name)
        matrix = embedding_matrix(layer)
        state = step.state(_STATE)
        delta = ops.stop_gradient(ops.convert_to_tensor(state))
        variables = list(step.model.trainable_variables)
        index = next(
            (i for i, v in enumerate(variables) if v is matrix), len(variables)
        )
        wrt = variables + ([matrix] if index == len(variables) else [])

        def objective(_):
            loss = step.loss_with_perturbation(layer, matrix, delta)
            return step.scale_loss(loss), loss

        # One pass at E + delta, differentiated once: its gradients train the
        # weights (through `linear_loss`) and give the next direction.
        loss, gradients = step.value_and_gradient(objective, wrt)
        loss = ops.stop_gradient(loss)
        gradients = [step.unscaled(g) for g in gradients]
        # The next direction comes from the global batch's embedding gradient
        # (the same on every replica); the weights' gradients stay each
        # replica's share, which the framework sums.
        gradient = step.global_sum(gradients[index])
        epsilon = relative.current(
            step, self.epsilon, lambda: relative.rows_norm(step, matrix, gradient)
        )
        direction = step.scale_to_norm(gradient, epsilon)
        state.assign(_densified(direction, tuple(matrix.shape)))
        step.log("adversarial_loss", loss)
        return step.linear_loss(loss, variables, gradients[: len(variables)])

    def get_config(self):
        return {
            "embedding_name": self.embedding_name,
            "epsilon": schedule.serialize(self.epsilon),
        }


def _densified(direction, shape):
    """A dense ``shape`` matrix from `scale_to_norm`'s result (sparse rows on TF)."""
    rows = getattr(direction, "rows", None)
    if rows is None:
        return direction
    return ops.scatter(ops.expand_dims(rows, -1), direction.values, shape)
