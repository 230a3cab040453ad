"""Rows of a matrix kept in a fixed-size buffer: the touched rows, nothing else.

A direction over an embedding matrix whose only non-zero rows are the rows of
the tokens in one batch is kept as two buffers of ``capacity`` entries: the
row indices, unique and ascending, padded with `PAD` (larger than any row);
and the rows, zero past the last index. Memory and work are those of the
batch, never of the vocabulary. Backend-neutral (`keras.ops`), with static
shapes, so it runs the same under XLA.
"""

from keras_reg._compat import keras

ops = keras.ops

PAD = 2**31 - 1  # int32 max: sorts after every row index, matches none


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
    flat = ops.reshape(ops.cast(ids, "int32"), (-1,))
    capacity = indices.shape[0]
    position = ops.minimum(ops.searchsorted(indices, flat), capacity - 1)
    found = ops.equal(ops.take(indices, position), flat)
    picked = ops.where(
        ops.expand_dims(found, -1), ops.take(rows, position, axis=0), 0.0
    )
    return ops.reshape(picked, tuple(ops.shape(ids)) + (rows.shape[-1],))


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
    flat = ops.reshape(ops.cast(ids, "int32"), (-1,))
    order = ops.argsort(flat)
    ordered = ops.take(flat, order)
    first = ops.concatenate(
        [ops.ones((1,), "bool"), ops.not_equal(ordered[1:], ordered[:-1])]
    )
    count = ops.sum(ops.cast(first, "int32"))
    # More unique ids than the buffer holds (a batch over the capacity whose
    # shape was not known when traced): an empty buffer, no perturbation.
    fits = count <= capacity
    segment = ops.minimum(ops.cumsum(ops.cast(first, "int32")) - 1, capacity - 1)
    valid = ops.logical_and(ops.arange(capacity, dtype="int32") < count, fits)
    unique = ops.segment_sum(
        ops.where(first, ordered, 0), segment, num_segments=capacity
    )
    indices = ops.where(valid, ops.cast(unique, "int32"), PAD)
    if values is not None:
        values = ops.cast(ops.take(values, order, axis=0), "float32")
        rows = ops.segment_sum(values, segment, num_segments=capacity)
    else:
        last = matrix_gradient.shape[0] - 1
        rows = ops.take(matrix_gradient, ops.minimum(indices, last), axis=0)
        rows = ops.cast(rows, "float32")
    rows = ops.where(ops.expand_dims(valid, -1), rows, 0.0)
    return indices, rows
