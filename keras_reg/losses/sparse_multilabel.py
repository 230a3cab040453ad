"""Multilabel "softmax + cross-entropy" with labels given as positive indices."""

from keras_reg._compat import keras
from keras_reg.losses._numerics import log1p_sum_exp, promote_logits

ops = keras.ops

_NEG_INF = -float("inf")


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

    Args:
        y_true: Integer (or integer-valued float) indices of the positive
            classes, shape ``(..., num_positive)`` with the same leading shape as
            ``y_pred``.
        y_pred: Logits, shape ``(..., num_classes)``.
        mask_zero: Whether index 0 is padding (and class 0 is left out).

    Returns:
        The loss per example, shape ``y_pred.shape[:-1]``.
    """
    y_pred = promote_logits(y_pred)
    indices = ops.cast(y_true, "int32")
    if len(indices.shape) != len(y_pred.shape):
        raise ValueError(
            "sparse_multilabel_categorical_crossentropy expects y_true of shape "
            "(..., num_positive) with the same rank as y_pred (..., num_classes). "
            f"Received: y_true.shape={tuple(indices.shape)}, "
            f"y_pred.shape={tuple(y_pred.shape)}. For one positive per example "
            "pass labels of shape (batch, 1)."
        )
    neg_inf = ops.full_like(y_pred, _NEG_INF)
    if mask_zero:
        is_class_zero = ops.equal(ops.arange(ops.shape(y_pred)[-1]), 0)
        y_pred = ops.where(is_class_zero, neg_inf, y_pred)
    if indices.shape[-1] == 0:
        return log1p_sum_exp(y_pred)
    positive = ops.take_along_axis(y_pred, indices, axis=-1)
    # -inf covers both logits that were -inf and (with mask_zero) padding.
    valid = ops.not_equal(positive, _NEG_INF)
    positive = ops.where(valid, -positive, ops.full_like(positive, _NEG_INF))
    negative = _without_positives(y_pred, indices)
    return log1p_sum_exp(negative) + log1p_sum_exp(positive)


@keras.saving.register_keras_serializable(package="keras_reg")
class SparseMultilabelCategoricalCrossentropy(keras.losses.Loss):
    """Loss class for `sparse_multilabel_categorical_crossentropy`.

    Keras casts labels to the loss dtype before ``call`` (as for its own sparse
    losses), so with the default float32 the indices are exact up to 2**24.

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
        mask_zero: Whether index 0 is padding (and class 0 is left out).
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
        if not isinstance(mask_zero, bool):
            raise ValueError(
                f"`mask_zero` must be True or False. Received: mask_zero={mask_zero!r}"
            )
        self.mask_zero = mask_zero

    def call(self, y_true, y_pred):
        """Returns the per-example loss; see the function of the same name."""
        return sparse_multilabel_categorical_crossentropy(
            y_true, y_pred, mask_zero=self.mask_zero
        )

    def get_config(self):
        """Returns the constructor arguments."""
        return {**super().get_config(), "mask_zero": self.mask_zero}
