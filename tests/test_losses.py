"""Tests for keras_reg.losses on the Keras 3 backend selected by KERAS_BACKEND.

The references are NumPy float64 transcriptions of the formulas in
https://kexue.fm/archives/7359, /9064 (soft labels) and /8888 (sparse), and of
flooding |L - b| + b (Ishida et al., 2020); gradients are checked against
central finite differences of those references.
"""

import numpy as np
import pytest

from keras_reg import losses
from keras_reg._compat import keras

ops = keras.ops
BACKEND = keras.backend.backend()


# ----------------------------------------------------------------- references
def reference_dense(y_true, y_pred):
    """log(1 + sum (1-t) e^s) + log(1 + sum t e^-s), row by row, in float64.

    Classes with a -inf logit are dropped. Each sum is evaluated as
    m + log(e^-m + sum w e^(x - m)) with m the largest exponent, so the
    reference is exact for logits of any size.
    """
    t = np.asarray(y_true, np.float64)
    s = np.asarray(y_pred, np.float64)
    out = np.zeros(s.shape[:-1])
    for index in np.ndindex(*s.shape[:-1]):
        keep = s[index] != -np.inf
        out[index] = _log1p_weighted(1.0 - t[index][keep], s[index][keep]) + (
            _log1p_weighted(t[index][keep], -s[index][keep])
        )
    return out


def _log1p_weighted(weights, exponents):
    """log(1 + sum weights * exp(exponents)) for weights >= 0."""
    used = weights > 0
    if not used.any():
        return 0.0
    m = max(0.0, float(exponents[used].max()))
    return m + np.log(np.exp(-m) + np.sum(weights[used] * np.exp(exponents[used] - m)))


def to_dense(indices, num_classes, mask_zero):
    indices = np.asarray(indices)
    dense = np.zeros(indices.shape[:-1] + (num_classes,))
    for index in np.ndindex(*indices.shape[:-1]):
        for k in indices[index]:
            if not (mask_zero and k == 0):
                dense[index + (k,)] = 1.0
    return dense


def random_labels(rng, shape, p=0.35):
    labels = (rng.random(shape) < p).astype("float32")
    labels[..., 0, :] = 0.0  # an empty label set
    labels[..., 1, :] = 1.0  # every class positive
    return labels


def numpy(x):
    return ops.convert_to_numpy(x)


def value_and_grad(fn, x):
    """Returns fn(x) and d fn / d x for a scalar-valued fn, on this backend."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        grad = tf.cast(tape.gradient(y, x), "float64")
        return float(y), grad.numpy()
    if BACKEND == "jax":
        import jax

        # One compiled function: op-by-op dispatch compiles every op on JAX.
        y, grad = jax.jit(jax.value_and_grad(fn))(jax.numpy.asarray(x))
        return float(y), np.asarray(grad.astype("float32"), np.float64)
    if BACKEND == "torch":
        x = ops.convert_to_tensor(x).detach().clone().requires_grad_(True)
        y = fn(x)
        y.backward()
        return float(y.detach()), x.grad.double().cpu().numpy()
    pytest.skip(f"no gradient helper for backend {BACKEND}")


def finite_difference(fn, x, eps=1e-6):
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        step = np.zeros_like(x)
        step[index] = eps
        grad[index] = (fn(x + step) - fn(x - step)) / (2 * eps)
    return grad


# ---------------------------------------------------------- dense multilabel
def test_dense_matches_reference_hard_labels_rank3():
    rng = np.random.default_rng(0)
    y_true = random_labels(rng, (3, 4, 6))
    y_pred = rng.normal(scale=3.0, size=(3, 4, 6)).astype("float32")
    got = numpy(losses.multilabel_categorical_crossentropy(y_true, y_pred))
    assert got.shape == (3, 4)
    np.testing.assert_allclose(got, reference_dense(y_true, y_pred), rtol=1e-5)


def test_dense_literal_formula_small_case():
    # Written out by hand: negatives {0}, positives {1, 2}.
    y_pred = np.array([[-3.0, 2.0, 5.0]], "float32")
    expected = np.log(1 + np.exp(-3.0)) + np.log(1 + np.exp(-2.0) + np.exp(-5.0))
    got = numpy(losses.multilabel_categorical_crossentropy([[0, 1, 1]], y_pred))
    np.testing.assert_allclose(got, [expected], rtol=1e-6)


def test_soft_labels_match_reference_and_reduce_to_hard():
    rng = np.random.default_rng(1)
    y_soft = rng.random((5, 7)).astype("float32")
    y_pred = rng.normal(scale=2.0, size=(5, 7)).astype("float32")
    got = numpy(losses.multilabel_categorical_crossentropy(y_soft, y_pred))
    np.testing.assert_allclose(got, reference_dense(y_soft, y_pred), rtol=1e-5)
    y_hard = (y_soft > 0.5).astype("float32")
    hard = numpy(losses.multilabel_categorical_crossentropy(y_hard, y_pred))
    s, t = y_pred.astype(np.float64), y_hard.astype(bool)
    by_sets = [
        np.log1p(np.exp(s[i][~t[i]]).sum()) + np.log1p(np.exp(-s[i][t[i]]).sum())
        for i in range(5)
    ]
    np.testing.assert_allclose(hard, by_sets, rtol=1e-5)


def test_soft_label_optimum_is_sigmoid_of_twice_the_logit():
    # d loss / d s vanishes at t = sigmoid(2 s) (kexue.fm/archives/9064).
    s = np.array([[-1.5, 0.0, 0.4, 2.0]])
    t = 1.0 / (1.0 + np.exp(-2.0 * s))
    grad = finite_difference(lambda v: reference_dense(t, v).sum(), s)
    np.testing.assert_allclose(grad, 0.0, atol=1e-8)
    _, got = value_and_grad(
        lambda v: ops.sum(losses.multilabel_categorical_crossentropy(t, v)),
        s.astype("float32"),
    )
    np.testing.assert_allclose(got, 0.0, atol=1e-6)


def test_minus_inf_logits_and_mask_leave_classes_out():
    rng = np.random.default_rng(2)
    y_true = random_labels(rng, (4, 5))
    y_pred = rng.normal(size=(4, 5)).astype("float32")
    keep = np.array([True, False, True, True, False])
    expected = reference_dense(y_true[:, keep], y_pred[:, keep])
    masked_logits = np.where(keep, y_pred, -np.inf).astype("float32")
    by_inf = numpy(losses.multilabel_categorical_crossentropy(y_true, masked_logits))
    by_mask = numpy(losses.multilabel_categorical_crossentropy(y_true, y_pred, keep))
    np.testing.assert_allclose(by_inf, expected, rtol=1e-5)
    np.testing.assert_allclose(by_mask, expected, rtol=1e-5)
    _, grad = value_and_grad(
        lambda v: ops.sum(losses.multilabel_categorical_crossentropy(y_true, v)),
        masked_logits,
    )
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[:, ~keep], 0.0)


def test_huge_finite_mask_value_with_label_zero_adds_nothing():
    # GlobalPointer-style masking with -1e12 instead of -inf: the positive sum
    # gets t * e^{-s} = 0 * e^{1e12}, which must be 0 (no clipping of log t).
    y_pred = np.array([[2.0, -1e12, -1.0]], "float32")
    got = numpy(losses.multilabel_categorical_crossentropy([[1, 0, 0]], y_pred))
    expected = np.log1p(np.exp(-1.0)) + np.log1p(np.exp(-2.0))
    np.testing.assert_allclose(got, [expected], rtol=1e-6)
    soft = numpy(losses.multilabel_categorical_crossentropy([[0.9, 0, 0.2]], y_pred))
    np.testing.assert_allclose(
        soft, reference_dense([[0.9, 0, 0.2]], y_pred), rtol=1e-6
    )


def test_dense_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    y_true = np.concatenate(
        [random_labels(rng, (4, 6)), rng.random((2, 6)).astype("float32")]
    )
    y_pred = rng.normal(scale=2.0, size=(6, 6)).astype("float32")
    expected = finite_difference(
        lambda v: reference_dense(y_true, v).sum(), y_pred.astype(np.float64)
    )
    _, got = value_and_grad(
        lambda v: ops.sum(losses.multilabel_categorical_crossentropy(y_true, v)),
        y_pred,
    )
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------- sparse multilabel
@pytest.mark.parametrize("mask_zero", [False, True])
def test_sparse_equals_dense_on_the_same_labels(mask_zero):
    rng = np.random.default_rng(4)
    num_classes, num_positive = 9, 4
    first = 1 if mask_zero else 0
    indices = np.zeros((2, 5, num_positive), "int32")
    for index in np.ndindex(2, 5):
        count = rng.integers(1 if not mask_zero else 0, num_positive + 1)
        chosen = rng.choice(np.arange(first, num_classes), count, replace=False)
        if mask_zero:  # pad with 0
            indices[index][:count] = chosen
        else:  # no padding: draw num_positive distinct classes
            indices[index] = rng.choice(num_classes, num_positive, replace=False)
    y_pred = rng.normal(scale=3.0, size=(2, 5, num_classes)).astype("float32")
    dense_labels = to_dense(indices, num_classes, mask_zero)
    dense_logits = y_pred.copy()
    if mask_zero:
        dense_logits[..., 0] = -np.inf  # class 0 is padding
    sparse = losses.sparse_multilabel_categorical_crossentropy(
        indices, y_pred, mask_zero=mask_zero
    )
    dense = losses.multilabel_categorical_crossentropy(dense_labels, dense_logits)
    np.testing.assert_allclose(numpy(sparse), numpy(dense), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        numpy(sparse), reference_dense(dense_labels, dense_logits), rtol=1e-5
    )
    _, g_sparse = value_and_grad(
        lambda v: ops.sum(
            losses.sparse_multilabel_categorical_crossentropy(indices, v, mask_zero)
        ),
        y_pred,
    )
    _, g_dense = value_and_grad(
        lambda v: ops.sum(
            losses.multilabel_categorical_crossentropy(
                dense_labels, v, mask=dense_logits != -np.inf
            )
        ),
        y_pred,
    )
    np.testing.assert_allclose(g_sparse, g_dense, rtol=1e-5, atol=1e-7)


def test_sparse_exact_when_positive_logits_dominate():
    # The reference implementation subtracts exp(positives) from the sum over
    # all classes; with positives at +30 that cancels to 0 and its clip adds a
    # spurious ~14 to the loss. Masking the positives keeps the exact value.
    y_pred = np.array([[30.0, -5.0, 28.0, -6.0]], "float32")
    indices = np.array([[0, 2]])
    got = numpy(losses.sparse_multilabel_categorical_crossentropy(indices, y_pred))
    expected = reference_dense([[1, 0, 1, 0]], y_pred)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert got[0] < 0.01


def test_sparse_rejects_labels_of_another_rank():
    with pytest.raises(ValueError, match=r"y_true.shape=\(3,\)"):
        losses.sparse_multilabel_categorical_crossentropy([1, 2, 0], np.zeros((3, 4)))


def test_sparse_gradient_matches_finite_differences():
    rng = np.random.default_rng(5)
    y_pred = rng.normal(scale=2.0, size=(3, 5)).astype("float32")
    indices = np.array([[1, 3], [0, 0], [4, 2]])
    dense_labels = to_dense(indices, 5, mask_zero=True)
    expected = finite_difference(
        lambda v: reference_dense(
            dense_labels, np.where(np.arange(5) == 0, -np.inf, v)
        ).sum(),
        y_pred.astype(np.float64),
    )
    _, got = value_and_grad(
        lambda v: ops.sum(
            losses.sparse_multilabel_categorical_crossentropy(indices, v, True)
        ),
        y_pred,
    )
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------ numerical stability
STRESS_LOGITS = np.array(
    [
        [1e4, -1e4, 3.0, -2.0],  # huge, both signs
        [-1e4, -1e4, -1e4, -1e4],  # all negative
        [1e4, 1e4, 1e4, 1e4],  # all positive
        [-1e4, 2.0, 1e4, -0.5],
    ],
    "float32",
)
STRESS_LABELS = np.array(
    [[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], "float32"
)
STRESS_INDICES = np.array([[1, 3], [0, 0], [1, 2], [1, 0]])  # mask_zero layout


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_dense_finite_for_huge_logits_and_low_precision(dtype):
    y_pred = ops.cast(STRESS_LOGITS, dtype)
    value, grad = value_and_grad(
        lambda v: ops.sum(losses.multilabel_categorical_crossentropy(STRESS_LABELS, v)),
        y_pred,
    )
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    got = numpy(losses.multilabel_categorical_crossentropy(STRESS_LABELS, y_pred))
    assert got.dtype == np.float32
    expected = reference_dense(STRESS_LABELS, numpy(ops.cast(y_pred, "float32")))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1:3], 0.0, atol=1e-6)  # rows solved at 1e4
    assert got[3] > 1.99e4  # wrong by ~1e4 on both sides


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_sparse_finite_for_huge_logits_and_low_precision(dtype):
    padded = np.concatenate([np.zeros_like(STRESS_LOGITS[:, :1]), STRESS_LOGITS], 1)
    y_pred = ops.cast(padded, dtype)
    value, grad = value_and_grad(
        lambda v: ops.sum(
            losses.sparse_multilabel_categorical_crossentropy(STRESS_INDICES, v, True)
        ),
        y_pred,
    )
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    got = numpy(
        losses.sparse_multilabel_categorical_crossentropy(STRESS_INDICES, y_pred, True)
    )
    dense_labels = to_dense(STRESS_INDICES, 5, mask_zero=True)[:, 1:]
    expected = reference_dense(dense_labels, numpy(ops.cast(y_pred, "float32"))[:, 1:])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
