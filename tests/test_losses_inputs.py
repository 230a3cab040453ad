"""Invalid inputs to keras_reg.losses and keras_reg.metrics (issue 9).

Each test pins one rule: a wrong argument or label raises a ValueError that
names the value and the fix, the same on every backend; label values that can
only be seen inside a compiled step (TF graph or XLA, JAX jit) give the same
NaN loss on every backend that traces.
"""

import functools

import numpy as np
import pytest

from keras_reg import losses, metrics
from keras_reg._compat import keras

ops = keras.ops
BACKEND = keras.backend.backend()
SPARSE = losses.sparse_multilabel_categorical_crossentropy
DENSE = losses.multilabel_categorical_crossentropy

LOGITS = np.array(
    [
        [-2.0, 3.0, -1.0, 2.0, -4.0],
        [-9.0, -1.0, -3.0, -2.0, 1.0],
        [0.5, 1.5, -0.5, 2.5, -1.5],
        [1.0, -1.0, 2.0, -2.0, 0.0],
    ],
    "float32",
)
GOOD = np.array([[1, 3], [4, 0], [2, 1], [0, 0]], "int32")


def numpy(x):
    return ops.convert_to_numpy(x)


def traced(fn):
    """``fn`` compiled the way Keras compiles a train step on this backend."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    pytest.skip(
        f"Keras runs {BACKEND} steps eagerly: the eager ValueError applies "
        "(test_fit_with_bad_sparse_labels covers it)"
    )


# ------------------------------------------------------------ mask_zero
@pytest.mark.parametrize("bad", ["no", "False", "True", 0, 1, None, 1.0])
def test_mask_zero_must_be_a_bool(bad):
    with pytest.raises(ValueError, match=rf"mask_zero={bad!r} \(type"):
        SPARSE(GOOD, LOGITS, mask_zero=bad)
    with pytest.raises(ValueError, match=rf"mask_zero={bad!r} \(type"):
        losses.SparseMultilabelCategoricalCrossentropy(mask_zero=bad)


def test_mask_zero_accepts_numpy_bools():
    for flag in (True, False):
        expected = numpy(SPARSE(GOOD, LOGITS, mask_zero=flag))
        got = numpy(SPARSE(GOOD, LOGITS, mask_zero=np.bool_(flag)))
        np.testing.assert_array_equal(got, expected)
        loss = losses.SparseMultilabelCategoricalCrossentropy(mask_zero=np.bool_(flag))
        assert loss.get_config()["mask_zero"] is flag


# ------------------------------------------------------ label dtype/values
def test_fractional_float_labels_are_rejected_not_truncated():
    labels = GOOD.astype("float64")
    labels[2, 1] = 1.7
    with pytest.raises(ValueError, match=r"y_true\[2, 1\] = 1.7 \(dtype float64\)"):
        SPARSE(labels, LOGITS)
    with pytest.raises(ValueError, match="int32"):
        SPARSE(labels, LOGITS)
    # The class sees float32 labels (Keras casts them): the same check applies.
    with pytest.raises(ValueError, match=r"y_true\[2, 1\] = 1.7"):
        losses.SparseMultilabelCategoricalCrossentropy()(labels, LOGITS)
    with pytest.raises(ValueError, match="whole class indices"):
        SPARSE(np.full((4, 2), np.nan), LOGITS)


def test_whole_float_labels_equal_integer_labels():
    expected = numpy(SPARSE(GOOD, LOGITS, mask_zero=True))
    for dtype in ("float32", "float64", "int64", "uint8"):
        got = numpy(SPARSE(GOOD.astype(dtype), LOGITS, mask_zero=True))
        np.testing.assert_array_equal(got, expected)


def test_narrow_label_dtypes_with_many_classes():
    # Compared with 300 in uint8, the class count would wrap to 44.
    logits = np.random.default_rng(0).normal(size=(2, 300)).astype("float32")
    labels = np.array([[50, 250], [3, 0]])
    expected = numpy(SPARSE(labels.astype("int32"), logits))
    for dtype in ("uint8", "int16", "float16"):
        got = numpy(SPARSE(labels.astype(dtype), logits))
        np.testing.assert_array_equal(got, expected)
    if BACKEND != "torch":
        got = numpy(traced(SPARSE)(labels.astype("uint8"), logits))
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_boolean_labels_are_rejected():
    with pytest.raises(ValueError, match="dtype bool"):
        SPARSE(GOOD > 1, LOGITS)


@pytest.mark.parametrize("bad, shown", [(5, "5"), (7, "7"), (-1, "-1"), (5.0, "5")])
@pytest.mark.parametrize("mask_zero", [False, True])
def test_out_of_range_index_raises_the_same_error_everywhere(bad, shown, mask_zero):
    labels = GOOD.astype("float32" if isinstance(bad, float) else "int32")
    labels[1, 1] = bad
    message = rf"y_true\[1, 1\] = {shown} is not a valid class index .*\[0, 5\)"
    with pytest.raises(ValueError, match=message):
        SPARSE(labels, LOGITS, mask_zero=mask_zero)
    loss = losses.SparseMultilabelCategoricalCrossentropy(mask_zero=mask_zero)
    with pytest.raises(ValueError, match=message):
        loss(labels, LOGITS)
    with pytest.raises(ValueError, match=message):  # backend tensors too
        SPARSE(ops.convert_to_tensor(labels), ops.convert_to_tensor(LOGITS))


def test_labels_must_match_the_leading_shape_of_the_logits():
    with pytest.raises(
        ValueError, match=r"y_true.shape=\(1, 2\), y_pred.shape=\(4, 5\)"
    ):
        SPARSE(GOOD[:1], LOGITS)


# ---------------------------------------------- the traced rule: NaN rows
@pytest.mark.parametrize("mask_zero", [False, True])
def test_traced_bad_indices_give_nan_rows_and_no_gradient(mask_zero):
    bad = GOOD.copy()
    bad[1, 0], bad[3, 1] = 5, -1  # rows 1 and 3 invalid; rows 0 and 2 valid
    fn = traced(functools.partial(SPARSE, mask_zero=mask_zero))
    expected = numpy(SPARSE(GOOD, LOGITS, mask_zero=mask_zero))
    got = numpy(fn(bad, LOGITS))
    assert np.isnan(got[[1, 3]]).all()
    np.testing.assert_allclose(got[[0, 2]], expected[[0, 2]], rtol=1e-6)
    fractional = GOOD.astype("float32")
    fractional[2, 0] = 0.5
    got = numpy(fn(fractional, LOGITS))
    assert np.isnan(got[2]) and np.isfinite(got[[0, 1, 3]]).all()


def test_traced_valid_labels_match_eager_values():
    fn = traced(functools.partial(SPARSE, mask_zero=True))
    np.testing.assert_allclose(
        numpy(fn(GOOD, LOGITS)), numpy(SPARSE(GOOD, LOGITS, mask_zero=True)), rtol=1e-6
    )


def _fit_sparse(y, **compile_kwargs):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5)])
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=losses.SparseMultilabelCategoricalCrossentropy(),
        **compile_kwargs,
    )
    history = model.fit(
        np.eye(4, dtype="float32"),
        y,
        batch_size=4,
        epochs=3,
        verbose=0,
        callbacks=[keras.callbacks.TerminateOnNaN()],
    )
    return model, history


def test_fit_with_bad_sparse_labels():
    bad = GOOD.copy()
    bad[2, 0] = 9
    if BACKEND == "torch":  # Keras steps run eagerly on torch: the values are read
        with pytest.raises(ValueError, match=r"= 9 is not a valid class index"):
            _fit_sparse(bad)
        return
    model, history = _fit_sparse(bad)  # compiled step: NaN, training stops
    assert len(history.history["loss"]) == 1
    assert np.isnan(history.history["loss"][0])
    # The invalid example contributes no gradient: the weights stay finite.
    assert np.isfinite(numpy(model.layers[0].kernel)).all()


def test_fit_eagerly_with_bad_sparse_labels_raises():
    bad = GOOD.copy()
    bad[0, 1] = -3
    with pytest.raises(ValueError, match=r"= -3 is not a valid class index"):
        _fit_sparse(bad, run_eagerly=True)


def test_fit_with_good_sparse_labels_is_finite():
    _, history = _fit_sparse(GOOD)
    assert np.isfinite(history.history["loss"]).all()


# ------------------------------------------------------- dense shapes
SHAPE_MISMATCHES = [
    ((4, 1), (4, 5)),
    ((1, 5), (4, 5)),
    ((4,), (4, 1)),
    ((4, 5, 1), (4, 5)),
]


@pytest.mark.parametrize("true_shape, pred_shape", SHAPE_MISMATCHES)
def test_dense_loss_rejects_labels_of_another_shape(true_shape, pred_shape):
    y_true = np.ones(true_shape, "float32")
    y_pred = np.zeros(pred_shape, "float32")
    message = rf"y_true.shape={true_shape}, y_pred.shape={pred_shape}".replace(
        "(", r"\("
    ).replace(")", r"\)")
    with pytest.raises(ValueError, match=message):
        DENSE(y_true, y_pred)
    with pytest.raises(ValueError, match=message):
        losses.MultilabelCategoricalCrossentropy()(y_true, y_pred)
    with pytest.raises(ValueError, match=message):
        metrics.multilabel_exact_match(y_true, y_pred)
    with pytest.raises(ValueError, match=message):
        metrics.MultilabelExactMatch().update_state(y_true, y_pred)
    if len(pred_shape) == 2:  # F1 is defined on (batch, num_classes)
        with pytest.raises(ValueError, match=message):
            metrics.MultilabelF1().update_state(y_true, y_pred)


def test_dense_loss_names_the_sparse_loss_for_index_labels():
    with pytest.raises(ValueError, match="sparse_multilabel_categorical_crossentropy"):
        DENSE(GOOD, LOGITS)


def test_dense_mask_must_not_broadcast_the_logits():
    with pytest.raises(ValueError, match=r"mask.shape=\(2, 5\), y_pred.shape=\(1, 5\)"):
        DENSE(np.ones((1, 5)), np.zeros((1, 5)), mask=np.ones((2, 5), bool))
    with pytest.raises(ValueError, match=r"mask.shape=\(4,\)"):
        DENSE(np.ones((1, 5)), np.zeros((1, 5)), mask=np.ones(4, bool))
    keep = np.array([True, False, True, True, True])
    for mask in (keep, keep[None], np.tile(keep, (4, 1))):  # these broadcast
        got = numpy(DENSE(np.ones((4, 5)), LOGITS, mask=mask))
        assert got.shape == (4,)


def test_fit_with_dense_labels_of_another_shape_raises():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5)])
    model.compile(
        optimizer="sgd",
        loss=losses.MultilabelCategoricalCrossentropy(),
        metrics=[metrics.MultilabelExactMatch()],
    )
    with pytest.raises(ValueError, match=r"y_true.shape=\((None|4), 1\)"):
        model.fit(np.eye(4, dtype="float32"), np.ones((4, 1)), verbose=0)


# ------------------------------------------------------------- flooding
X = np.array([[1.0, 2.0], [0.5, -1.0], [-1.5, 0.5], [2.0, 1.0]], "float32")
Y = np.array([[1.0], [-2.0], [0.5], [3.0]], "float32")
W0 = np.array([[0.3], [-0.2]], "float32")


def _one_step(loss, **compile_kwargs):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    model.layers[0].kernel.assign(W0)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=1.0), loss=loss, **compile_kwargs
    )
    model.fit(X, Y, batch_size=4, epochs=1, verbose=0)
    return model, numpy(model.layers[0].kernel)


@pytest.mark.parametrize("jit_compile", [False, "auto"])
def test_flooding_accepts_a_lambda_in_a_compiled_step(jit_compile):
    residual = X.astype(np.float64) @ W0 - Y
    value, gradient = np.mean(residual**2), 2.0 * X.T @ residual / len(X)
    flood = losses.Flooding(
        lambda y_true, y_pred: ops.mean(ops.square(y_true - y_pred), axis=-1),
        level=2 * value,
    )
    _, kernel = _one_step(flood, jit_compile=jit_compile)
    np.testing.assert_allclose(kernel, W0 + gradient, rtol=1e-5)  # ascent


def test_flooding_names_other_callables_validly():
    def mse(y_true, y_pred):
        return ops.mean(ops.square(y_true - y_pred), axis=-1)

    partial = functools.partial(lambda y_true, y_pred, k: k * mse(y_true, y_pred), k=1)
    for fn in (partial, mse):
        _, kernel = _one_step(losses.Flooding(fn, 0.0))
        assert np.isfinite(kernel).all()


def test_flooding_with_a_lambda_saves_and_loads_with_unsafe_deserialization(
    tmp_path,
):
    # Keras stores a lambda as bytecode and restores it without its module's
    # globals: only a self-contained lambda (no `ops.`) can be loaded.
    flood = losses.Flooding(lambda y_true, y_pred: (y_true - y_pred) ** 2, 0.5)
    model, _ = _one_step(flood)
    path = str(tmp_path / "model.keras")
    model.save(path)
    with pytest.raises(ValueError, match="safe_mode=False"):  # Keras's own rule
        keras.saving.load_model(path)
    loaded = keras.saving.load_model(path, safe_mode=False)
    np.testing.assert_allclose(
        loaded.evaluate(X, Y, verbose=0), model.evaluate(X, Y, verbose=0), rtol=1e-6
    )


@pytest.mark.parametrize("loss", ["mse", "mae"])
def test_flooding_rank_one_labels_weight_each_example(loss):
    # (batch,) labels against (batch, 1) predictions: one loss per example (as
    # Keras computes it), so sample weights weight examples instead of
    # rescaling one batch value.
    prediction = X @ W0
    weights = np.array([1.0, 0.0, 2.0, 0.5], "float32")
    reference = {
        "mse": keras.losses.MeanSquaredError(),
        "mae": keras.losses.MeanAbsoluteError(),
    }[loss]
    expected = numpy(reference(Y, prediction, sample_weight=weights))
    got = losses.Flooding(loss, 0.0)(Y[:, 0], prediction, sample_weight=weights)
    np.testing.assert_allclose(numpy(got), expected, rtol=1e-6)
    fn = keras.losses.get(loss)
    got = losses.Flooding(fn, 0.0)(Y[:, 0], prediction, sample_weight=weights)
    np.testing.assert_allclose(numpy(got), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "level",
    [np.bool_(True), 10**400, np.float32("nan")],
    ids=["numpy_bool", "int_beyond_float", "float32_nan"],
)
def test_flooding_rejects_other_bad_levels(level):
    with pytest.raises(ValueError, match="level"):
        losses.Flooding("mse", level)
