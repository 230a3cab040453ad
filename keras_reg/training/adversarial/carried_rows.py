"""Rows of a matrix kept in a fixed-size buffer: the touched rows, nothing else.

A direction over an embedding matrix whose only non-zero rows are the rows of
the tokens in one batch is kept as two buffers of ``capacity`` entries: the
row indices, unique and ascending, padded with `PAD` (larger than any row);
and the rows, zero past the last index. Memory and work are those of the
batch, never of the vocabulary. Backend-neutral (`keras.ops`), with static
shapes, so it runs the same under XLA.
"""

from keras_reg._compat import keras
from keras_reg.backend import rows as sparse_rows

ops = keras.ops

PAD = sparse_rows.PAD  # int32 max: sorts after every row index, matches none


def state_spec(capacity, dim):
    """The carried state of a buffer: ``{suffix: (shape, dtype)}``."""
    return {"ids": ((capacity,), "int32"), "rows": ((capacity, dim), "float32")}


def check_capacity(ids, capacity, owner, argument):
    """Raises where ``ids`` statically holds more than ``capacity`` entries."""
    size = 1
    for dimension in ids.shape:
        if dimension is None:
            return
        size *= int(dimension)
    if size > capacity:
        raise ValueError(
            f"{owner} carries at most {argument}={capacity} token rows, but a "
            f"batch passes {size} token ids through the embedding layer (shape "
            f"{tuple(ids.shape)}). Pass {argument}={size} or more (the tokens "
            "of the largest global batch)."
        )


def gather(indices, rows, ids):
    """Returns the rows at ``ids`` (zero where an id is not in ``indices``).

    Args:
        indices: The buffer's row indices (ascending, `PAD` last).
        rows: The buffer's rows, ``capacity x dim``.
        ids: Integer ids of any shape.

    Returns:
        A tensor of shape ``ids.shape + (dim,)``.
    """
    return sparse_rows.lookup(sparse_rows.SparseRows(indices, rows), ids)


def from_occurrences(ids, capacity, values=None, matrix_gradient=None):
    """Returns ``(indices, rows)``: the buffer of a gradient of a lookup.

    Repeated ids are summed, as the dense matrix gradient sums them. Where
    there are more unique ids than ``capacity``, the buffer is empty.

    Args:
        ids: The token ids of every lookup (any shape; one per occurrence).
        capacity: The buffer's size (at least the number of unique ids).
        values: One gradient row per occurrence, ``ids.size x dim`` (a
            `tf.IndexedSlices`' values), or None.
        matrix_gradient: Else the dense matrix gradient, whose rows at the
            unique ids are taken.

    Returns:
        ``indices`` (``capacity``, int32, ascending, `PAD`-padded) and
        ``rows`` (``capacity x dim``, float32, zero past the last index).
    """
    if values is not None:
        return tuple(sparse_rows.summed(ids, values, capacity))
    indices = sparse_rows.distinct(ids, capacity)
    rows = ops.cast(sparse_rows.matrix_rows(matrix_gradient, indices), "float32")
    return indices, ops.where(ops.expand_dims(indices != PAD, -1), rows, 0.0)
