"""Multilabel "softmax + cross-entropy" (ZLPR) loss on dense 0/1 or soft labels."""

from keras_reg._compat import keras
from keras_reg.losses._numerics import (
    concrete,
    log1p_sum_exp,
    promote_logits,
    safe_log,
)
from keras_reg.validation import same_shape, shapes_match, static_shape

ops = keras.ops

_NEG_INF = -float("inf")
_NAME = "multilabel_categorical_crossentropy"
_DENSE_HINT = (
    "y_true holds one 0/1 (or soft) label per class; if your labels are the "
    "indices of the positive classes, use sparse_multilabel_categorical_crossentropy."
)


def _check_mask(mask, y_pred):
    """Rejects a mask that would broadcast ``y_pred`` to a larger shape."""
    mask_shape, pred_shape = static_shape(mask), static_shape(y_pred)
    if mask_shape is None or pred_shape is None:
        return
    aligned = pred_shape[len(pred_shape) - len(mask_shape) :]
    fits = len(mask_shape) <= len(pred_shape) and all(
        m == 1 or shapes_match((m,), (p,)) for m, p in zip(mask_shape, aligned)
    )
    if not fits:
        raise ValueError(
            f"{_NAME}: `mask` must broadcast to y_pred's shape without changing "
            f"it. Received: mask.shape={mask_shape}, y_pred.shape={pred_shape}. "
            "Pass a mask of shape (num_classes,) for the same classes in every "
            "example, or y_pred's shape for a mask per example."
        )


def _check_label_range(values):
    """Rejects labels outside [0, 1] when their values are known (eager)."""
    if values is None:
        return
    outside = (values < 0) | (values > 1)
    if outside.any():
        raise ValueError(
            f"{_NAME} expects labels in [0, 1] (0/1, or soft labels); y_true "
            f"holds {int(outside.sum())} value(s) outside it, e.g. "
            f"{values[outside].ravel()[0]!r}. A label of 2 or -1 gives a finite "
            "but meaningless loss. " + _DENSE_HINT
        )


@keras.saving.register_keras_serializable(package="keras_reg")
def multilabel_categorical_crossentropy(y_true, y_pred, mask=None):
    r"""Multilabel cross-entropy of logits against 0/1 or soft labels.

    For logits ``s`` and labels ``t`` in ``[0, 1]`` (last axis = classes):

        loss = log(1 + sum_i (1 - t_i) exp(s_i)) + log(1 + sum_i t_i exp(-s_i))

    With 0/1 labels this is ``log(1 + sum_{neg} e^{s}) + log(1 + sum_{pos} e^{-s})``:
    a softmax cross-entropy generalised to any number of target classes, with 0
    as the threshold between them. Unlike per-class sigmoid + binary
    cross-entropy it keeps the two sums comparable when negatives vastly
    outnumber positives. The optimum of the soft-label form is
    ``t_i = sigmoid(2 s_i)``, so ``sigmoid(2 * logits)`` (not ``sigmoid(logits)``)
    estimates class probabilities, and a class is predicted when its logit is
    > 0 (see `keras_reg.metrics.multilabel_predictions`).

    Classes whose logit is ``-inf``, or where ``mask`` is False, take no part:
    they add nothing to either sum and receive a zero gradient, whatever their
    label. Labels of exactly 0 or 1 are handled as ``log 0 = -inf`` without
    clipping, so a masked class with a finite but huge negative logit (e.g.
    -1e12) and label 0 still contributes exactly nothing (the pitfall discussed
    in kexue.fm/archives/9064). Empty label sets (all zeros) and all-positive
    rows are valid. Half-precision logits are computed in float32 and the loss
    is float32.

    Example:
    ```python
    y_true = [[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]  # second row: empty label set
    y_pred = [[-3.0, 2.0, 5.0], [-1.0, -2.0, float("-inf")]]  # -inf: left out
    loss = multilabel_categorical_crossentropy(y_true, y_pred)  # shape (2,)
    model.compile(optimizer="adam", loss=multilabel_categorical_crossentropy)
    ```

    References:
        Su Jianlin, "将'Softmax+交叉熵'推广到多标签分类问题" (Generalising
        softmax + cross-entropy to multilabel classification, 2020),
        https://kexue.fm/archives/7359 ; "多标签'Softmax+交叉熵'的软标签版本" (its
        soft-label version, 2022), https://kexue.fm/archives/9064 ; written up as
        "ZLPR: A Novel Loss for Multi-label Classification", arXiv:2208.02955.

    Args:
        y_true: Labels in ``[0, 1]``, same shape as ``y_pred``; 0/1 for hard
            labels. Any numeric dtype.
        y_pred: Logits (no sigmoid/softmax), shape ``(..., num_classes)``.
        mask: Optional boolean tensor broadcastable to ``y_pred``; False marks
            classes to leave out (same effect as a ``-inf`` logit).

    Returns:
        The loss per example, shape ``y_pred.shape[:-1]``.

    Raises:
        ValueError: ``y_true`` and ``y_pred`` have different static shapes
            (they would broadcast silently), ``mask`` would broadcast
            ``y_pred`` to a larger shape, or (values known: eager TensorFlow
            or JAX, PyTorch) a label is outside ``[0, 1]``. Inside a compiled
            function, where label values cannot be read, such a label gives
            a finite but meaningless loss instead of this error.
    """
    y_pred = promote_logits(y_pred)
    _check_label_range(concrete(y_true))
    y_true = ops.cast(y_true, y_pred.dtype)
    same_shape(_NAME, y_true, y_pred, hint=_DENSE_HINT)
    valid = ops.not_equal(y_pred, _NEG_INF)
    if mask is not None:
        mask = ops.cast(mask, "bool")
        _check_mask(mask, y_pred)
        valid = ops.logical_and(valid, mask)
    neg_inf = ops.full_like(y_pred, _NEG_INF)
    # A label of 1 makes log(1 - t) = -inf, which drops the class from the
    # negative sum; a label of 0 drops it from the positive sum.
    negative = ops.where(valid, y_pred, neg_inf) + safe_log(1.0 - y_true)
    positive = ops.where(valid, -y_pred, neg_inf) + safe_log(y_true)
    return log1p_sum_exp(negative) + log1p_sum_exp(positive)


@keras.saving.register_keras_serializable(package="keras_reg")
class MultilabelCategoricalCrossentropy(keras.losses.Loss):
    """Loss class for `multilabel_categorical_crossentropy`.

    Takes logits and 0/1 or soft labels of the same shape; classes with a
    ``-inf`` logit are left out. See `multilabel_categorical_crossentropy` for the
    formula and its numerical guarantees.

    Example:
    ```python
    model.compile(
        optimizer="adam",
        loss=keras_reg.losses.MultilabelCategoricalCrossentropy(),
        metrics=[keras_reg.metrics.MultilabelF1()],
    )
    predicted = keras_reg.metrics.multilabel_predictions(model.predict(x))
    ```

    References:
        https://kexue.fm/archives/7359 and https://kexue.fm/archives/9064

    Args:
        reduction: Keras reduction of the per-example losses; defaults to
            ``"sum_over_batch_size"``.
        name: Name of the loss instance.
        dtype: Dtype the inputs are cast to before the loss is computed;
            defaults to ``keras.backend.floatx()``.
    """

    def __init__(
        self,
        reduction="sum_over_batch_size",
        name="multilabel_categorical_crossentropy",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        """Returns the per-example loss; see the function of the same name."""
        return multilabel_categorical_crossentropy(y_true, y_pred)
