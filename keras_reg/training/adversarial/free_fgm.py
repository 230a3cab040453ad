"""FreeFGM: FGM at about the cost of a plain step, from the previous gradient.

References:
    Shafahi, Najibi, Ghiasi, Xu, Dickerson, Studer, Davis, Taylor, Goldstein.
    Adversarial Training for Free! NeurIPS 2019. https://arxiv.org/abs/1904.12843

    Miyato, Dai, Goodfellow. Adversarial Training Methods for Semi-Supervised
    Text Classification. ICLR 2017. https://arxiv.org/abs/1605.07725
"""

from keras_reg._compat import keras
from keras_reg.backend import rows as sparse_rows
from keras_reg.training.adversarial import carried_rows
from keras_reg.training.adversarial.fgm import FGM
from keras_reg.training.core import relative, schedule
from keras_reg.training.core.embedding import embedding_matrix, find_embedding_layer
from keras_reg.training.core.export import export
from keras_reg.validation import integer_argument

ops = keras.ops

_STATE = "free_fgm_delta"
_ROWS = "free_fgm_"  # + carried_rows.state_spec's suffixes


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
    and never one of the model's weights. With ``batch_tokens``, it is kept
    as its non-zero rows instead -- the rows of the previous batch's tokens,
    repeated tokens summed, in a buffer of ``batch_tokens`` rows -- which is
    the same delta (the same training, to float rounding) at the memory of one
    batch, not of the vocabulary (256 MB less at 500,000 x 128).

    The step's own (clean) forward pass
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
        batch_tokens: None (carry a ``vocabulary x dim`` delta), or the most
            token ids one global batch passes through the layer (e.g. 32 x
            64 = 2048): carry only the touched rows, in a buffer of that
            size. Needs a plain ``Embedding`` whose matrix nothing else reads
            (no tied output head, no ``embeddings_regularizer``: they make
            every row of the gradient non-zero). A larger batch is an error
            where its shape is known when the step is traced; otherwise
            (TensorFlow with an unknown batch size) a batch with more
            distinct tokens than ``batch_tokens`` leaves the next step
            unperturbed.

    Example:
        >>> keras_reg.free_fgm(model, "Embedding-Token", epsilon=1.0)
        >>> # A large vocabulary, batches of at most 32 x 128 tokens:
        >>> keras_reg.free_fgm(model, "Embedding-Token", batch_tokens=32 * 128)
    """

    def __init__(self, embedding_name, epsilon=1.0, batch_tokens=None):
        super().__init__(embedding_name, epsilon=epsilon)
        if batch_tokens is not None:
            batch_tokens = integer_argument("batch_tokens", batch_tokens, 1, 2048)
        self.batch_tokens = batch_tokens

    def carried_state(self, model):
        shape = tuple(self._matrix(model).shape)
        if self.batch_tokens is None:
            return {_STATE: shape}
        spec = carried_rows.state_spec(self.batch_tokens, shape[-1])
        return {_ROWS + suffix: value for suffix, value in spec.items()}

    def watched_variables(self, model):
        return [self._matrix(model)]

    def regularized_loss(self, step):
        layer = find_embedding_layer(step.model, self.embedding_name)
        matrix = embedding_matrix(layer)
        if self.batch_tokens is not None:
            return self._rows_loss(step, layer, matrix)
        state = step.state(_STATE)
        delta = ops.stop_gradient(ops.convert_to_tensor(state))
        variables, index, wrt = _differentiated(step, matrix)

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

    def _rows_loss(self, step, layer, matrix):
        """`regularized_loss` with delta carried as its rows (``batch_tokens``)."""
        if not step._plain_lookup(layer, matrix):
            raise ValueError(
                f"FreeFGM(batch_tokens={self.batch_tokens}) carries the rows of "
                f"the batch's tokens only, but the gradient of layer "
                f"{layer.name!r}'s matrix is not limited to them (a tied output "
                "head or an embeddings_regularizer also reads the matrix, or "
                "the layer is not a plain Embedding). Pass batch_tokens=None "
                "to carry the whole matrix."
            )
        indices_state = step.state(_ROWS + "ids")
        rows_state = step.state(_ROWS + "rows")
        indices = ops.stop_gradient(ops.convert_to_tensor(indices_state))
        rows = ops.stop_gradient(ops.convert_to_tensor(rows_state))
        variables, index, wrt = _differentiated(step, matrix)
        looked_up = []

        def add_rows(output, ids):
            carried_rows.check_capacity(
                ids, self.batch_tokens, "FreeFGM", "batch_tokens"
            )
            looked_up.append(ids)
            delta = carried_rows.gather(indices, rows, ids)
            return output + ops.cast(delta, output.dtype)

        def objective(_):
            loss = step.training_loss(layer=layer, transform=add_rows)
            return step.scale_loss(loss), loss

        loss, gradients = step.value_and_gradient(objective, wrt)
        loss = ops.stop_gradient(loss)
        gradients = [step.unscaled(g) for g in gradients]
        gradient = step.global_sum(gradients[index])
        if hasattr(gradient, "dense_shape"):  # tf.IndexedSlices: a row per token
            new_indices, new_rows = carried_rows.from_occurrences(
                gradient.indices, self.batch_tokens, values=gradient.values
            )
        else:
            ids = ops.concatenate([ops.reshape(i, (-1,)) for i in looked_up], 0)
            new_indices, new_rows = carried_rows.from_occurrences(
                ids, self.batch_tokens, matrix_gradient=gradient
            )
        epsilon = relative.current(
            step,
            self.epsilon,
            lambda: _carried_rows_norm(matrix, new_indices, new_rows),
        )
        indices_state.assign(new_indices)
        rows_state.assign(step.scale_to_norm(new_rows, epsilon))
        step.log("adversarial_loss", loss)
        return step.linear_loss(loss, variables, gradients[: len(variables)])

    def get_config(self):
        config = {
            "embedding_name": self.embedding_name,
            "epsilon": schedule.serialize(self.epsilon),
        }
        if self.batch_tokens is not None:
            config["batch_tokens"] = self.batch_tokens
        return config


def _carried_rows_norm(matrix, indices, rows):
    """`relative.rows_norm` for the carried buffer: the norm of the moved rows."""
    table = sparse_rows.matrix_rows(ops.convert_to_tensor(matrix), indices)
    return relative.moved_rows_norm(table, rows)


def _differentiated(step, matrix):
    """The trainable variables, the matrix's index in them, and all to differentiate."""
    variables = list(step.model.trainable_variables)
    index = next((i for i, v in enumerate(variables) if v is matrix), len(variables))
    wrt = variables + ([matrix] if index == len(variables) else [])
    return variables, index, wrt


def _densified(direction, shape):
    """A dense ``shape`` matrix from `scale_to_norm`'s result (sparse rows on TF)."""
    return sparse_rows.densified(direction, shape)
