"""Sparse rows of a matrix: a gradient or perturbation of the batch's rows only.

The gradient of a plain embedding lookup ``E[ids]`` with respect to E is zero
outside the rows of the batch's tokens; the adversaries' directions built
from it (FGM, PGD) are too. Kept as `SparseRows` -- the row indices and one
row of values per index -- they cost the batch's memory, never the
vocabulary's. Repeated ids are summed into one row, so the maths is the dense
matrix's: its non-zero rows are the values, its Frobenius norm theirs.

Written with `keras.ops` and static shapes (a stable sort and a segment sum,
no ``unique``), so the same functions run under XLA (JAX ``jit``) and on
PyTorch; TensorFlow builds its own `SparseRows` from a `tf.IndexedSlices`
(``tensorflow.py``). Padding rows carry zeros and the index `PAD`, past any
vocabulary: they sort last, match no token, and are clamped where a row of
the matrix is read.
"""

from typing import Any, NamedTuple

from keras_reg._compat import keras

ops = keras.ops

PAD = 2**31 - 1  # int32 max: sorts after every row index, matches none


class SparseRows(NamedTuple):
    """Rows ``rows`` of a matrix holding ``values``; every other row is zero."""

    rows: Any
    values: Any


def is_rows(value):
    """Whether ``value`` is `SparseRows`."""
    return isinstance(value, SparseRows)


def map_values(function, value):
    """``function`` applied to ``value``, or to its values where it is `SparseRows`."""
    if is_rows(value):
        return SparseRows(value.rows, function(value.values))
    return function(value)


def summed(ids, values, capacity=None):
    """Returns `SparseRows` of one row per occurrence, repeated ids summed.

    Args:
        ids: Integer row indices, one per occurrence (any shape), or a list
            of such tensors (one per lookup).
        values: The occurrences' rows: ``ids.shape + (dim,)``, or a list
            matching ``ids``.
        capacity: The number of rows of the result (at least the number of
            distinct ids); by default the number of occurrences.

    Returns:
        `SparseRows`: the distinct ids in ascending order, then `PAD`; each
        row the float32 sum of its occurrences, summed in their order
        (a stable sort); padding rows zero. Where there are more distinct ids
        than ``capacity``, every row is padding.
    """
    if isinstance(ids, (list, tuple)):
        ids = ops.concatenate([ops.reshape(i, (-1,)) for i in ids], axis=0)
        dim = values[0].shape[-1]
        values = ops.concatenate(
            [ops.reshape(ops.cast(v, "float32"), (-1, dim)) for v in values], axis=0
        )
    flat = ops.reshape(ops.cast(ids, "int32"), (-1,))
    if len(values.shape) != 2:  # (a gathered tf.IndexedSlices' dim may be unknown)
        values = ops.reshape(values, (-1, values.shape[-1]))
    values = ops.cast(values, "float32")
    capacity = int(flat.shape[0]) if capacity is None else capacity
    order, segment, valid, rows = _grouped(flat, capacity)
    sums = ops.segment_sum(ops.take(values, order, axis=0), segment, capacity)
    return SparseRows(rows, ops.where(ops.expand_dims(valid, -1), sums, 0.0))


def distinct(ids, capacity):
    """Returns the distinct ``ids``, ascending, padded with `PAD` to ``capacity``.

    The ``rows`` of `summed`, without values (empty where they do not fit).
    """
    flat = ops.reshape(ops.cast(ids, "int32"), (-1,))
    return _grouped(flat, capacity)[-1]


def _grouped(flat, capacity):
    """Groups equal ids: ``(order, segment, valid, rows)`` for a segment sum.

    ``order`` sorts ``flat`` (stably), ``segment`` numbers the groups of the
    sorted ids, ``valid`` marks the ``capacity`` slots that hold a group and
    ``rows`` are the groups' ids (`PAD` elsewhere).
    """
    order = ops.argsort(flat)
    ordered = ops.take(flat, order)
    first = ops.concatenate(
        [ops.ones((1,), "bool"), ops.not_equal(ordered[1:], ordered[:-1])]
    )
    count = ops.sum(ops.cast(first, "int32"))
    # More distinct ids than slots (a batch over a carried buffer's capacity
    # whose shape was not known when traced): no slot is used.
    fits = count <= capacity
    segment = ops.minimum(ops.cumsum(ops.cast(first, "int32")) - 1, capacity - 1)
    valid = ops.logical_and(ops.arange(capacity, dtype="int32") < count, fits)
    # Each group's id, at its first occurrence (a scatter: PyTorch's segment
    # sum goes through float32, which rounds large ids).
    unique = ops.scatter(
        ops.expand_dims(segment, -1), ops.where(first, ordered, 0), (capacity,)
    )
    return order, segment, valid, ops.where(valid, ops.cast(unique, "int32"), PAD)


def lookup(perturbation, ids):
    """Returns the rows of ``perturbation`` at ``ids`` (zero where absent).

    Args:
        perturbation: `SparseRows` whose ``rows`` are ascending (as `summed`
            returns them), or a dense matrix.
        ids: Integer ids of any shape.

    Returns:
        A tensor of shape ``ids.shape + (dim,)``.
    """
    if not is_rows(perturbation):
        return ops.take(perturbation, ops.cast(ids, "int32"), axis=0)
    rows, values = perturbation
    flat = ops.reshape(ops.cast(ids, "int32"), (-1,))
    position = ops.minimum(ops.searchsorted(rows, flat), rows.shape[0] - 1)
    found = ops.equal(ops.take(rows, position), flat)
    picked = ops.where(
        ops.expand_dims(found, -1), ops.take(values, position, axis=0), 0.0
    )
    return ops.reshape(picked, tuple(ops.shape(ids)) + (values.shape[-1],))


def add(first, second):
    """Returns ``first + second`` of two `SparseRows` (repeated rows summed)."""
    return summed(
        ops.concatenate([first.rows, second.rows], axis=0),
        ops.concatenate([first.values, second.values], axis=0),
    )


def matrix_rows(matrix, rows):
    """Returns ``matrix[rows]``, padding rows (`PAD`) clamped to the last row."""
    last = int(matrix.shape[0]) - 1
    return ops.take(matrix, ops.minimum(ops.cast(rows, "int32"), last), axis=0)


def densified(value, shape):
    """Returns `SparseRows` as a dense ``shape`` matrix (a tensor as it is)."""
    if not is_rows(value):
        return value
    # Padding rows hold zeros: adding them to the clamped last row adds 0.
    rows = ops.minimum(ops.cast(value.rows, "int32"), shape[0] - 1)
    return ops.scatter(ops.expand_dims(rows, -1), value.values, shape)
