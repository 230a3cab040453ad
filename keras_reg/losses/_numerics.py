"""Numerically careful building blocks shared by the multilabel losses.

Everything here is written with ``keras.ops`` only, so it runs unchanged on the
TensorFlow, JAX and torch backends of Keras 3 and on TensorFlow tensors coming
from a tf_keras model.
"""

from keras_reg._compat import keras

ops = keras.ops

_HALF_DTYPES = ("float16", "bfloat16")


def promote_logits(y_pred):
    """Converts logits to a tensor computed in at least float32.

    float16 and bfloat16 have 10 and 7 mantissa bits: a log-sum-exp over many
    classes loses most of its digits there. Half-precision logits are therefore
    cast to float32 (the cast is differentiable, so gradients still reach the
    half-precision graph); float32 and float64 are kept.

    Args:
        y_pred: Logits, any floating dtype.

    Returns:
        The logits as a float32 or float64 tensor.
    """
    y_pred = ops.convert_to_tensor(y_pred)
    if not hasattr(y_pred, "ndim"):
        # A raw tf.Variable passes through convert_to_tensor unchanged and
        # lacks the `ndim` some keras.ops (take_along_axis) rely on.
        y_pred = ops.copy(y_pred)
    dtype = keras.backend.standardize_dtype(y_pred.dtype)
    if dtype in _HALF_DTYPES or not dtype.startswith("float"):
        return ops.cast(y_pred, "float32")
    return y_pred


def safe_log(x):
    """Returns ``log(x)`` with ``log(0) = -inf`` and a zero gradient at 0.

    ``log`` has an infinite derivative at 0. Computing it only where ``x > 0``
    (the "double where" pattern) keeps ``0 * inf = nan`` out of the gradient
    when labels are themselves differentiable (e.g. soft targets from a
    teacher).

    Args:
        x: A non-negative floating tensor.

    Returns:
        A tensor of the same shape and dtype.
    """
    positive = ops.greater(x, 0)
    inner = ops.log(ops.where(positive, x, ops.ones_like(x)))
    return ops.where(positive, inner, ops.full_like(x, -float("inf")))


def log1p_sum_exp(x):
    """Computes ``log(1 + sum(exp(x), axis=-1))`` stably.

    Implemented as a log-sum-exp over ``x`` with one zero appended to the last
    axis (the "1"), so it is finite for logits of any magnitude, equals 0 when
    every entry is ``-inf`` and its gradient is a softmax that ignores ``-inf``
    entries.

    Args:
        x: A floating tensor; ``-inf`` entries contribute nothing.

    Returns:
        ``x`` reduced over its last axis.
    """
    zeros = ops.zeros_like(x[..., :1])
    return ops.logsumexp(ops.concatenate([x, zeros], axis=-1), axis=-1)


def concrete(x):
    """Returns ``x`` as a NumPy array when its values are known now, else None.

    Inside a traced function (TF graph or XLA, JAX jit) the labels are symbolic
    and reading them raises; Keras on torch and eager TF/JAX give values.
    """
    try:
        return ops.convert_to_numpy(x)
    except (TypeError, NotImplementedError):  # JAX tracer, symbolic TF tensor
        return None
