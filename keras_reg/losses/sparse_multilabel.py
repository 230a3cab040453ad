"""Multilabel "softmax + cross-entropy" with labels given as positive indices."""

import numpy as np

from keras_reg._compat import keras
from keras_reg.losses._numerics import concrete, log1p_sum_exp, promote_logits
from keras_reg.validation import boolean, shapes_match, static_shape

ops = keras.ops

_NEG_INF = -float("inf")
_NAME = "sparse_multilabel_categorical_crossentropy"
_MASK_ZERO_HINT = (
    "Pass mask_zero=True when index 0 pads rows with fewer positives (class 0 "
    "is then a dummy class), else mask_zero=False."
)
_TRACED_RULE = (
    "Inside a compiled function (TF graph or XLA, JAX jit), where label values "
    "cannot be read, such a row gets a NaN loss instead of this error."
)


def _check_label_dtype(y_true):
    dtype = keras.backend.standardize_dtype(y_true.dtype)
    if dtype == "bool" or not dtype.startswith(("int", "uint", "float")):
        raise ValueError(
            f"{_NAME} expects y_true to hold integer class indices, received "
            f"y_true of dtype {dtype}. Cast the indices to int32; for dense "
            "0/1 (or soft) labels use multilabel_categorical_crossentropy."
        )
    return dtype


def _position(bad):
    """The position of the first True entry of ``bad``, as ``"i, j"``."""
    return ", ".join(str(int(i)) for i in np.argwhere(bad)[0])


def _check_label_values(values, num_classes, mask_zero):
    """Raises a ValueError naming the first label that is not a class index."""
    values = np.asarray(values)
    if values.dtype.kind == "f":
        fractional = ~np.isfinite(values) | (values != np.floor(values))
        if fractional.any():
            position = _position(fractional)
            raise ValueError(
                f"{_NAME} expects y_true to hold whole class indices, but "
                f"y_true[{position}] = {values[fractional][0].item()!r} (dtype "
                f"{values.dtype}); float labels are not truncated. Cast the "
                "indices to int32 (e.g. np.asarray(y, 'int32')); for soft or "
                "dense 0/1 labels use multilabel_categorical_crossentropy. "
                + _TRACED_RULE
            )
    outside = values < 0
    if num_classes is not None:
        outside |= values >= num_classes
    if outside.any():
        position = _position(outside)
        index = values[outside][0].item()
        index = int(index) if float(index).is_integer() else index
        upper = "num_classes" if num_classes is None else num_classes
        padding = " (0 is padding with mask_zero=True)" if mask_zero else ""
        raise ValueError(
            f"{_NAME}: y_true[{position}] = {index} is not a valid class index "
            f"for y_pred with {upper} classes (its last axis): indices must lie "
            f"in [0, {upper}){padding}. " + _TRACED_RULE
        )


def _same_leading_shape(true_shape, pred_shape):
    """Same rank and same sizes but the last; unknown ranks are not checked."""
    if true_shape is None or pred_shape is None:
        return True
    return len(true_shape) == len(pred_shape) and shapes_match(
        true_shape[:-1], pred_shape[:-1]
    )


_WIDENED = {
    "int8": "int32",
    "int16": "int32",
    "uint8": "int32",
    "uint16": "int32",
    "float16": "float32",
    "bfloat16": "float32",
}


def _valid_indices(y_true, num_classes, dtype):
    """Whether each label is a whole number in ``[0, num_classes)``.

    Narrow dtypes are widened first: compared with ``num_classes`` in uint8,
    300 classes would wrap to 44 and mark valid indices invalid.
    """
    if dtype in _WIDENED:
        y_true = ops.cast(y_true, _WIDENED[dtype])
    valid = ops.logical_and(ops.greater_equal(y_true, 0), ops.less(y_true, num_classes))
    if dtype.startswith("float"):
        valid = ops.logical_and(valid, ops.equal(y_true, ops.floor(y_true)))
    return valid


def _without_positives(y_pred, indices):
    """Returns ``y_pred`` with ``-inf`` at every listed index of each row.

    The negative-class sum is taken over these logits. Masking the positives
    exactly (one scatter) instead of subtracting their exponentials from the
    sum over all classes avoids catastrophic cancellation once positive logits
    dominate: with ``log(1 - exp(b - a))`` clipped at 1e-7, as in the reference
    implementation, a float32 positive logit above ~16 would add a spurious
    loss of up to ``a - 16`` and a gradient pushing positives down.
    """
    num_classes = ops.shape(y_pred)[-1]
    num_positive = ops.shape(indices)[-1]
    flat_logits = ops.reshape(y_pred, (-1, num_classes))
    flat_indices = ops.reshape(indices, (-1, num_positive))
    # Row number of every index without needing the (maybe dynamic) row count.
    rows = ops.cumsum(ops.ones_like(flat_indices), axis=0) - 1
    coordinates = ops.stack(
        [ops.reshape(rows, (-1,)), ops.reshape(flat_indices, (-1,))], axis=1
    )
    updates = ops.full_like(
        ops.cast(ops.reshape(flat_indices, (-1,)), y_pred.dtype), _NEG_INF
    )
    masked = ops.scatter_update(flat_logits, coordinates, updates)
    return ops.reshape(masked, ops.shape(y_pred))


@keras.saving.register_keras_serializable(package="keras_reg")
def sparse_multilabel_categorical_crossentropy(y_true, y_pred, mask_zero=False):
    """Multilabel cross-entropy with the positive classes given as indices.

    The same loss as `multilabel_categorical_crossentropy` with hard labels,

        loss = log(1 + sum_{i not in P} exp(s_i)) + log(1 + sum_{j in P} exp(-s_j)),

    but ``y_true`` lists the positive classes ``P`` of each example instead of a
    dense 0/1 tensor. Use it when the label space is too large to build and
    feed dense labels every step (e.g. token-pair scores of shape
    ``(batch, heads, length * length)`` in GlobalPointer/GPLinker): the data
    pipeline then carries ``num_positive`` integers per example instead of
    ``num_classes`` floats. Inside the loss one ``y_pred``-sized masked copy of
    the logits is made, so the loss itself costs about as much memory as the
    dense form.

    Rows with fewer positives are padded: with ``mask_zero=True`` index 0 is
    padding, so class 0 must be a dummy class (it takes no part in the loss);
    put real classes at 1..num_classes-1. Without ``mask_zero`` every index is a
    positive class. Indices must be unique within a row (a repeated index
    counts twice in the positive sum) and in ``[0, num_classes)``. Logits equal
    to ``-inf`` leave their class out, as in the dense form.

    Example:
    ```python
    # 2 examples, 5 classes; class 0 is padding.
    y_true = [[1, 3], [4, 0]]  # {1, 3} and {4}
    y_pred = [[-2.0, 3.0, -1.0, 2.0, -4.0], [-9.0, -1.0, -3.0, -2.0, 1.0]]
    loss = sparse_multilabel_categorical_crossentropy(y_true, y_pred, mask_zero=True)
    ```

    References:
        Su Jianlin, "GPLinker: joint entity-relation extraction with
        GlobalPointer" (2022), https://kexue.fm/archives/8888 (the sparse form);
        the loss itself:
        https://kexue.fm/archives/7359 .

    Invalid labels: every index must be a whole number in
    ``[0, num_classes)``. When the label values can be read (NumPy inputs,
    eager calls, Keras on torch, ``run_eagerly=True``) a negative, too large or
    fractional index raises a ``ValueError`` naming it, on every backend.
    Inside a compiled function (TF graph or XLA, JAX jit), where a Python error
    cannot depend on values, the loss of each example holding such an index is
    NaN on every backend (``keras.callbacks.TerminateOnNaN`` stops on it) and
    that example contributes no gradient; other examples are unaffected.

    Args:
        y_true: Indices of the positive classes, shape ``(..., num_positive)``
            with the same leading shape as ``y_pred``. Integer dtype, or a float
            dtype holding whole numbers (Keras casts labels to float32 before a
            `keras.losses.Loss` sees them; exact up to 2**24).
        y_pred: Logits, shape ``(..., num_classes)``.
        mask_zero: Whether index 0 is padding (and class 0 is left out); True
            or False.

    Returns:
        The loss per example, shape ``y_pred.shape[:-1]``.

    Raises:
        ValueError: ``mask_zero`` is not a boolean; ``y_true`` is boolean, its
            shape does not match ``y_pred``'s leading shape, or (values known)
            it holds an index that is negative, fractional or
            ``>= num_classes``.
    """
    mask_zero = boolean("mask_zero", mask_zero, _MASK_ZERO_HINT)
    y_pred = promote_logits(y_pred)
    values = concrete(y_true)
    y_true = ops.convert_to_tensor(y_true)
    dtype = _check_label_dtype(y_true)
    true_shape, pred_shape = static_shape(y_true), static_shape(y_pred)
    if not _same_leading_shape(true_shape, pred_shape):
        raise ValueError(
            f"{_NAME} expects y_true of shape (..., num_positive) with the same "
            "rank and leading shape as y_pred (..., num_classes). "
            f"Received: y_true.shape={true_shape}, y_pred.shape={pred_shape}. "
            "For one positive per example pass labels of shape (batch, 1)."
        )
    num_classes = ops.shape(y_pred)[-1]
    if values is not None:
        _check_label_values(values, pred_shape and pred_shape[-1], mask_zero)
    neg_inf = ops.full_like(y_pred, _NEG_INF)
    if mask_zero:
        is_class_zero = ops.equal(ops.arange(num_classes), 0)
        y_pred = ops.where(is_class_zero, neg_inf, y_pred)
    if true_shape and true_shape[-1] == 0:
        return log1p_sum_exp(y_pred)
    # Traced values cannot be checked: invalid indices are replaced by 0 (in
    # range for the gather and scatter below) and their rows become NaN.
    valid_index = _valid_indices(y_true, num_classes, dtype)
    indices = ops.cast(ops.where(valid_index, y_true, ops.zeros_like(y_true)), "int32")
    positive = ops.take_along_axis(y_pred, indices, axis=-1)
    # -inf covers both logits that were -inf and (with mask_zero) padding.
    valid = ops.not_equal(positive, _NEG_INF)
    positive = ops.where(valid, -positive, ops.full_like(positive, _NEG_INF))
    negative = _without_positives(y_pred, indices)
    loss = log1p_sum_exp(negative) + log1p_sum_exp(positive)
    valid_row = ops.all(valid_index, axis=-1)
    return ops.where(valid_row, loss, ops.full_like(loss, float("nan")))


@keras.saving.register_keras_serializable(package="keras_reg")
class SparseMultilabelCategoricalCrossentropy(keras.losses.Loss):
    """Loss class for `sparse_multilabel_categorical_crossentropy`.

    Keras casts labels to the loss dtype before ``call`` (as for its own sparse
    losses), so with the default float32 the indices are exact up to 2**24.
    Invalid indices (negative, fractional or ``>= num_classes``) raise a
    ``ValueError`` when their values can be read and give a NaN loss for their
    example inside a compiled step; see the function of the same name.

    Example:
    ```python
    model.compile(
        optimizer="adam",
        loss=keras_reg.losses.SparseMultilabelCategoricalCrossentropy(mask_zero=True),
    )
    ```

    References:
        https://kexue.fm/archives/8888 and https://kexue.fm/archives/7359

    Args:
        mask_zero: Whether index 0 is padding (and class 0 is left out); True
            or False (strings and integers are rejected).
        reduction: Keras reduction of the per-example losses.
        name: Name of the loss instance.
        dtype: Dtype the inputs are cast to before the loss is computed.
    """

    def __init__(
        self,
        mask_zero=False,
        reduction="sum_over_batch_size",
        name="sparse_multilabel_categorical_crossentropy",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.mask_zero = boolean("mask_zero", mask_zero, _MASK_ZERO_HINT)

    def call(self, y_true, y_pred):
        """Returns the per-example loss; see the function of the same name."""
        return sparse_multilabel_categorical_crossentropy(
            y_true, y_pred, mask_zero=self.mask_zero
        )

    def get_config(self):
        """Returns the constructor arguments."""
        return {**super().get_config(), "mask_zero": self.mask_zero}
