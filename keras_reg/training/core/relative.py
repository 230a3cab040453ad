"""Perturbation strengths relative to the size of what they perturb.

An absolute radius (``epsilon=1.0``) means something different on every
model: FGM's ``epsilon * g / ||g||_F`` is spread over the rows the batch
touches, whose own size depends on the initialisation, the hidden size and
the pre-training; ``benchmarks/epsilon_scale.py`` measures it (the numbers are
in ``docs/guide/strength.md``). ``relative(r)`` instead asks for a
perturbation whose norm is ``r`` times the norm of what it perturbs, measured
in the same norm the method bounds the perturbation in:

======================  ===================================================
method                  the norm ``r`` multiplies (per step, a constant)
======================  ===================================================
FGM, PGD, FreeFGM       the Frobenius norm of the embedding rows the
                        perturbation moves: the batch's tokens, each row
                        once (``||E_S||_F``, S the rows with a non-zero
                        gradient); PGD's ``alpha`` too
FreeLB                  each example's embedded sequence (its own bound,
                        ``||e_i||``); ``alpha`` too
VAT                     what it perturbs, in its ``norm``: the inputs or the
                        embedded sequence per example or over the batch, or
                        the rows of the unlabelled batch's tokens
noise ``stddev``        the root mean square entry of the noised tensor
                        (the batch's inputs or embedded sequence)
======================  ===================================================

so ``relative(0.1)`` moves the perturbed object by about 10% of its size,
whatever the model. The scale is computed inside the step with ``keras.ops``
(no host round trip: graph, XLA and ``jit`` friendly), held constant
(``stop_gradient``: it is not trained against), and taken over the global
batch under several replicas, as the perturbation is.

The ratio may be a schedule of the step (``relative(PolynomialDecay(0.0,
1000, end_learning_rate=0.1))``); it is validated like every strength
(`keras_reg.training.core.schedule.strength`).
"""

from keras_reg._compat import keras
from keras_reg.backend import rows as sparse_rows
from keras_reg.training.core import schedule
from keras_reg.training.core.export import export

ops = keras.ops


@export()
class Relative:
    """A perturbation strength given as a ratio to the size of what it perturbs.

    Pass it where a regulariser takes a radius (``epsilon`` of FGM, PGD,
    FreeLB, FreeFGM and VAT, ``alpha`` of PGD and FreeLB, ``stddev`` of noise
    training): the step then uses ``value`` x the norm of the perturbed rows,
    embedded sequence or inputs in that step (each regulariser's docstring
    says which norm). The absolute form stays the default.

    Args:
        value: The ratio, a positive number, or a schedule of the step
            returning one (see `keras_reg.training.core.schedule`).

    Example:
        >>> keras_reg.fgm(model, "Embedding-Token", epsilon=keras_reg.relative(0.1))
    """

    # Lets `schedule.strength` refuse it, clearly, where no scale is defined.
    is_relative_strength = True

    def __init__(self, value):
        if isinstance(value, Relative):
            raise TypeError(
                f"`relative` received another relative strength, {value!r}; pass "
                f"its ratio instead: relative({value.value!r})."
            )
        self.value = schedule.strength("relative", value, example=0.1)

    def ratio(self, step):
        """Returns the ratio at this step: a float or a float32 scalar tensor."""
        return schedule.current(step, self.value)

    def get_config(self):
        return {"value": schedule.serialize(self.value)}

    @classmethod
    def from_config(cls, config):
        return cls(schedule.deserialize(config["value"]))

    def __eq__(self, other):
        return type(other) is type(self) and other.value == self.value

    def __hash__(self):
        return hash((type(self), repr(self.value)))

    def __repr__(self):
        return f"relative({self.value!r})"


@export()
def relative(value):
    """Returns `Relative` ``(value)``: a strength relative to what it perturbs.

    Args:
        value: The ratio (a positive number or a schedule of the step).

    Example:
        >>> keras_reg.fgm(model, "Embedding-Token", epsilon=keras_reg.relative(0.1))
        >>> keras_reg.noise_training(model, None, stddev=keras_reg.relative(0.05))
    """
    return Relative(value)


def strength(name, value, example, squared=True):
    """Returns ``value``: a `Relative` kept as it is, else `schedule.strength`'s.

    Args:
        name: The argument's name, for error messages.
        value: A number, a schedule of the step, or a `Relative`.
        example: A sensible absolute number to suggest in error messages.
        squared: See `schedule.strength`.
    """
    if isinstance(value, Relative):
        return value
    return schedule.strength(name, value, example, squared=squared)


def is_relative(value):
    """Whether ``value`` is a `Relative` strength."""
    return isinstance(value, Relative)


def current(step, value, scale):
    """Returns ``value`` at this step, a relative one times ``scale()``.

    Args:
        step: The `keras_reg.backend.base.Step` in progress.
        value: A number, a schedule, or a `Relative`.
        scale: A function returning the (float32) norm the ratio multiplies;
            called only for a `Relative`, and held constant.
    """
    if not isinstance(value, Relative):
        return schedule.current(step, value)
    size = ops.stop_gradient(ops.cast(scale(), "float32"))
    return ops.cast(value.ratio(step), "float32") * size


def currents(step, values, scale):
    """Returns each of ``values`` at this step, ``scale()`` computed at most once."""
    if any(isinstance(v, Relative) for v in values):
        size = ops.stop_gradient(ops.cast(scale(), "float32"))
        scale = lambda: size  # noqa: E731
    return [current(step, value, scale) for value in values]


def rows_norm(step, matrix, gradient):
    """The Frobenius norm of ``matrix``'s rows where ``gradient`` is not zero.

    The rows an FGM-type perturbation ``epsilon * g / ||g||_F`` moves: the
    batch's tokens, each row once (repeated tokens' gradients summed, as in
    `Step.scale_to_norm`, whose sparse rows it reuses). A row
    whose summed gradient is exactly zero (masked padding) is not moved and not
    counted. ``gradient`` is the global batch's, so the norm is too.

    Args:
        step: The `keras_reg.backend.base.Step` in progress.
        matrix: The embedding variable.
        gradient: dL/dE of the global batch (dense, or sparse where the
            framework is).
    """
    direction = step.scale_to_norm(gradient, 1.0)
    if not sparse_rows.is_rows(direction):
        table = ops.cast(ops.convert_to_tensor(matrix), "float32")
        return moved_rows_norm(table, direction)
    return moved_rows_norm(
        sparse_rows.matrix_rows(ops.convert_to_tensor(matrix), direction.rows),
        direction.values,
    )


def moved_rows_norm(rows, values):
    """The Frobenius norm of ``rows`` where ``values`` (one row each) is not zero."""
    moved = ops.sum(ops.square(ops.cast(values, "float32")), axis=-1) > 0
    squares = ops.sum(ops.square(ops.cast(rows, "float32")), axis=-1)
    return ops.sqrt(ops.sum(ops.where(moved, squares, ops.zeros_like(squares))))


def global_norm(step, tensors):
    """The L2 norm over every entry of ``tensors``, over the global batch."""
    total = ops.zeros((), "float32")
    for tensor in tensors:
        total = total + ops.sum(ops.square(ops.cast(tensor, "float32")))
    return ops.sqrt(step.global_sum(total))


def example_norms(tensors):
    """Each example's L2 norm over all ``tensors`` (batch first), shape (batch,)."""
    total = 0.0
    for tensor in tensors:
        tensor = ops.cast(tensor, "float32")
        flat = ops.reshape(ops.square(tensor), (ops.shape(tensor)[0], -1))
        total = total + ops.sum(flat, axis=1)
    return ops.sqrt(total)


def root_mean_square(step, tensors):
    """The root mean square entry of ``tensors``, over the global batch."""
    total = ops.zeros((), "float32")
    count = ops.zeros((), "float32")
    for tensor in tensors:
        total = total + ops.sum(ops.square(ops.cast(tensor, "float32")))
        count = count + ops.cast(ops.size(tensor), "float32")
    return ops.sqrt(ops.divide_no_nan(step.global_sum(total), step.global_sum(count)))


def site_norm(step, site, norm, like):
    """The norm a VAT site's relative radius multiplies (a constant).

    The rows of the unlabelled batch's tokens for the matrix site; else the
    clean inputs or embedded sequence the site recorded, over the global batch
    (``norm="batch"``) or per example, shaped to broadcast against ``like``.
    """
    if hasattr(site, "rows_norm"):
        return site.rows_norm()
    if norm == "batch":
        return global_norm(step, site.clean)
    size = example_norms(site.clean)
    return ops.reshape(size, (-1,) + (1,) * (len(like.shape) - 1))
