"""Prediction rule and metrics for the multilabel softmax cross-entropy.

A model trained with `keras_reg.losses.multilabel_categorical_crossentropy`
outputs logits whose decision threshold is 0: a class is predicted when its
logit is > 0. The helpers and metrics here apply that rule, so they take the
model's raw logits (no sigmoid).
"""

import numpy as np

from keras_reg._compat import keras
from keras_reg.validation import same_shape

ops = keras.ops

_DENSE_HINT = "y_true holds one 0/1 (or soft) label per class, the shape of the logits."


def _logits(function, logits):
    """Returns ``logits`` after checking it is a real-valued array of rank >= 1."""
    received = logits
    if logits is None or isinstance(logits, (str, bytes)):
        dtype = None
    elif hasattr(logits, "dtype") and hasattr(logits, "shape"):
        dtype = keras.backend.standardize_dtype(logits.dtype)
    else:
        try:
            logits = np.asarray(logits)
        except (TypeError, ValueError):  # ragged nesting
            dtype = None
        else:
            dtype = logits.dtype.name if logits.dtype.kind in "fiu" else None
    if dtype is None or not (
        keras.backend.is_float_dtype(dtype) or keras.backend.is_int_dtype(dtype)
    ):
        raise TypeError(
            f"{function}() expects `logits`: a real-valued array or tensor of "
            "shape (..., num_classes) (the model's raw outputs); received "
            f"logits={received!r} ({type(received).__name__})."
        )
    if len(logits.shape) == 0:
        raise ValueError(
            f"{function}() expects `logits` of shape (..., num_classes), with a "
            f"class axis; received a scalar, logits={logits!r}."
        )
    return logits


def multilabel_predictions(logits):
    """Returns the predicted label sets as a 0/1 ``int32`` tensor.

    A class is predicted when its logit is strictly greater than 0; ``-inf``
    (masked) logits are never predicted.

    Example:
    ```python
    multilabel_predictions([[2.0, -1.0, 0.0, 0.3]])  # [[1, 0, 0, 1]]
    ```

    References:
        https://kexue.fm/archives/7359 (the threshold 0 is built into the loss).

    Args:
        logits: Logits of shape ``(..., num_classes)``.

    Returns:
        An ``int32`` tensor of the same shape.

    Raises:
        TypeError: ``logits`` is not a real-valued array or tensor.
        ValueError: ``logits`` is a scalar (no class axis).
    """
    logits = _logits("multilabel_predictions", logits)
    return ops.cast(ops.greater(logits, 0), "int32")


def multilabel_probabilities(logits):
    """Returns ``sigmoid(2 * logits)``, the class probabilities the loss targets.

    For soft labels ``t`` the loss is minimised at ``t_i = sigmoid(2 s_i)``, so
    this, not ``sigmoid(s_i)``, is the probability estimate; 0.5 corresponds to
    the logit threshold 0.

    Example:
    ```python
    multilabel_probabilities([[0.0, 1.0]])  # [[0.5, 0.881]]
    ```

    References:
        https://kexue.fm/archives/9064

    Args:
        logits: Logits of shape ``(..., num_classes)``.

    Returns:
        A floating tensor of the same shape with values in ``[0, 1]``.

    Raises:
        TypeError: ``logits`` is not a real-valued array or tensor.
        ValueError: ``logits`` is a scalar (no class axis).
    """
    logits = _logits("multilabel_probabilities", logits)
    if not keras.backend.is_float_dtype(logits.dtype):
        logits = ops.cast(logits, keras.backend.floatx())
    return ops.sigmoid(2.0 * ops.convert_to_tensor(logits))


@keras.saving.register_keras_serializable(package="keras_reg")
def multilabel_exact_match(y_true, y_pred):
    """Returns 1.0 for each example whose predicted label set is exactly right.

    Args:
        y_true: 0/1 (or soft, thresholded at 0.5) labels ``(..., num_classes)``.
        y_pred: Logits of the same shape; a class is predicted when > 0.

    Returns:
        A float tensor of shape ``y_pred.shape[:-1]``.

    Raises:
        ValueError: ``y_true`` and ``y_pred`` have different static shapes.
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(y_true, y_pred.dtype)
    same_shape("multilabel_exact_match", y_true, y_pred, hint=_DENSE_HINT)
    predicted = ops.greater(y_pred, 0)
    actual = ops.greater(y_true, 0.5)
    return ops.cast(ops.all(ops.equal(predicted, actual), axis=-1), "float32")


@keras.saving.register_keras_serializable(package="keras_reg")
class MultilabelExactMatch(keras.metrics.MeanMetricWrapper):
    """Fraction of examples whose predicted label set equals the true one.

    Also called subset accuracy. Takes logits (predicted: logit > 0). For the
    per-class ("Hamming") accuracy on logits use
    ``keras.metrics.BinaryAccuracy(threshold=0.0)``.

    Example:
    ```python
    model.compile(..., metrics=[keras_reg.metrics.MultilabelExactMatch()])
    ```

    Args:
        name: Name of the metric.
        dtype: Dtype of the metric's state.
    """

    def __init__(self, name="exact_match", dtype=None):
        super().__init__(fn=multilabel_exact_match, name=name, dtype=dtype)

    def get_config(self):
        """Returns the constructor arguments."""
        return {"name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="keras_reg")
class MultilabelF1(keras.metrics.F1Score):
    """F1 score of the label sets predicted by the logit > 0 rule.

    `keras.metrics.F1Score` expects probabilities (its threshold lies in
    ``(0, 1]``); this metric takes logits and thresholds them at 0. Soft labels
    are thresholded at 0.5. Inputs are 2D: ``(batch, num_classes)``.

    Example:
    ```python
    model.compile(..., metrics=[keras_reg.metrics.MultilabelF1(average="micro")])
    ```

    Args:
        average: ``"micro"`` (default: pool every decision), ``"macro"`` (mean of
            per-class F1), ``"weighted"`` (per-class F1 weighted by support) or
            ``None`` (per-class F1 scores).
        name: Name of the metric.
        dtype: Dtype of the metric's state.
    """

    def __init__(self, average="micro", name="multilabel_f1", dtype=None):
        super().__init__(average=average, threshold=0.5, name=name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Accumulates counts for the predictions ``y_pred > 0``.

        Raises:
            ValueError: ``y_true`` and ``y_pred`` have different static shapes.
        """
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(y_true, self.dtype)
        same_shape("MultilabelF1", y_true, y_pred, hint=_DENSE_HINT)
        predicted = ops.cast(ops.greater(y_pred, 0), self.dtype)
        actual = ops.cast(ops.greater(y_true, 0.5), self.dtype)
        super().update_state(actual, predicted, sample_weight=sample_weight)

    def get_config(self):
        """Returns the constructor arguments."""
        return {"average": self.average, "name": self.name, "dtype": self.dtype}
