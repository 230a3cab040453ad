"""keras_reg.losses inside tf_keras models (run with TF_USE_LEGACY_KERAS=1 TF_KERAS=1).

The losses are written with Keras 3 ``keras.ops``; with Keras 3 on its
TensorFlow backend those ops accept the TF tensors a tf_keras model produces,
so the function forms plug into ``tf_keras.Model.compile`` directly.
"""

import os

import numpy as np
import pytest

tf_keras = pytest.importorskip("tf_keras")

from keras_reg import losses, metrics  # noqa: E402
from keras_reg._compat import keras  # noqa: E402

if keras.backend.backend() != "tensorflow":
    pytest.skip(
        "tf_keras models need Keras 3 on the TensorFlow backend "
        f"(KERAS_BACKEND={os.environ.get('KERAS_BACKEND')!r})",
        allow_module_level=True,
    )

CUSTOM_OBJECTS = {
    "multilabel_categorical_crossentropy": losses.multilabel_categorical_crossentropy,
    "sparse_multilabel_categorical_crossentropy": (
        losses.sparse_multilabel_categorical_crossentropy
    ),
    "MultilabelCategoricalCrossentropy": losses.MultilabelCategoricalCrossentropy,
    "Flooding": losses.Flooding,
    "multilabel_exact_match": metrics.multilabel_exact_match,
}


def reference_dense(y_true, y_pred):
    """log(1 + sum_neg e^s) + log(1 + sum_pos e^-s) per row, float64 (small s)."""
    t = np.asarray(y_true, np.float64)
    s = np.asarray(y_pred, np.float64)
    return np.log1p(np.sum((1 - t) * np.exp(s), -1)) + np.log1p(
        np.sum(t * np.exp(-s), -1)
    )


def logit_model(logits):
    """A tf_keras model whose output on the identity matrix is ``logits``."""
    n, c = logits.shape
    model = tf_keras.Sequential(
        [tf_keras.layers.Dense(c, use_bias=False, input_shape=(n,))]
    )
    model.layers[0].kernel.assign(logits)
    return model, np.eye(n, dtype="float32")


rng = np.random.default_rng(0)
LOGITS = rng.normal(scale=2.0, size=(6, 5)).astype("float32")
LABELS = (rng.random((6, 5)) < 0.4).astype("float32")
LABELS[0] = 0.0
LABELS[1] = 1.0


def test_function_loss_value_and_sample_weights():
    model, x = logit_model(LOGITS)
    model.compile(loss=losses.multilabel_categorical_crossentropy)
    expected = reference_dense(LABELS, LOGITS)
    got = model.evaluate(x, LABELS, verbose=0, batch_size=6)
    np.testing.assert_allclose(got, expected.mean(), rtol=1e-5)
    weights = np.array([1.0, 0.0, 2.0, 0.5, 1.0, 3.0], "float32")
    got = model.evaluate(x, LABELS, sample_weight=weights, verbose=0, batch_size=6)
    np.testing.assert_allclose(got, np.sum(weights * expected) / 6, rtol=1e-5)
    # tf_keras calls a Keras 3 Loss as a plain function and weights what it
    # returns: the per-example values with reduction=None.
    model.compile(loss=losses.MultilabelCategoricalCrossentropy(reduction=None))
    got = model.evaluate(x, LABELS, sample_weight=weights, verbose=0, batch_size=6)
    np.testing.assert_allclose(got, np.sum(weights * expected) / 6, rtol=1e-5)


def test_one_sgd_step_follows_the_reference_gradient():
    model, x = logit_model(LOGITS)
    model.compile(
        optimizer=tf_keras.optimizers.SGD(learning_rate=1.0),
        loss=losses.multilabel_categorical_crossentropy,
    )
    model.train_on_batch(x, LABELS)
    eps = 1e-6
    base = LOGITS.astype(np.float64)
    gradient = np.zeros_like(base)
    for index in np.ndindex(*base.shape):
        step = np.zeros_like(base)
        step[index] = eps
        gradient[index] = (
            reference_dense(LABELS, base + step).mean()
            - reference_dense(LABELS, base - step).mean()
        ) / (2 * eps)
    np.testing.assert_allclose(
        model.layers[0].kernel.numpy(), LOGITS - gradient, rtol=1e-4, atol=1e-6
    )


def test_sparse_function_equals_dense():
    indices = np.array([[0, 0], [1, 3], [2, 0], [4, 0], [1, 2], [3, 4]], "int32")
    dense = np.zeros((6, 5), "float32")
    for row, positives in enumerate(indices):
        dense[row, positives[positives > 0]] = 1.0
    logits = LOGITS.copy()
    logits[:, 0] = -np.inf  # class 0 is padding for the dense reference
    model, x = logit_model(LOGITS)
    model.compile(
        loss=lambda y, p: losses.sparse_multilabel_categorical_crossentropy(
            y, p, mask_zero=True
        )
    )
    got = model.evaluate(x, indices, verbose=0, batch_size=6)
    expected = losses.multilabel_categorical_crossentropy(dense, logits)
    np.testing.assert_allclose(got, np.mean(expected), rtol=1e-5)


def test_flooding_gradient_flips_sign_below_the_level():
    value = reference_dense(LABELS, LOGITS).mean()

    def step(level):
        model, x = logit_model(LOGITS)
        model.compile(
            optimizer=tf_keras.optimizers.SGD(learning_rate=1.0),
            loss=losses.Flooding(losses.multilabel_categorical_crossentropy, level),
        )
        model.train_on_batch(x, LABELS)
        return model.layers[0].kernel.numpy() - LOGITS

    descent, ascent = step(value / 2), step(value * 2)
    assert np.abs(descent).max() > 1e-3
    np.testing.assert_allclose(ascent, -descent, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
@pytest.mark.parametrize(
    "make_loss",
    [
        lambda: losses.multilabel_categorical_crossentropy,
        lambda: losses.MultilabelCategoricalCrossentropy(),
        lambda: losses.Flooding(losses.multilabel_categorical_crossentropy, 3.0),
    ],
)
def test_save_and_load_with_custom_objects(make_loss, suffix, tmp_path):
    model = tf_keras.Sequential([tf_keras.layers.Dense(5, input_shape=(3,))])
    model.compile(
        optimizer="sgd", loss=make_loss(), metrics=[metrics.multilabel_exact_match]
    )
    x = rng.normal(size=(6, 3)).astype("float32")
    model.fit(x, LABELS, verbose=0)
    path = str(tmp_path / ("model" + suffix))
    model.save(path)
    loaded = tf_keras.models.load_model(path, custom_objects=CUSTOM_OBJECTS)
    np.testing.assert_allclose(
        loaded.evaluate(x, LABELS, verbose=0), model.evaluate(x, LABELS, verbose=0)
    )


def test_matches_bert4keras_on_moderate_logits():
    backend = pytest.importorskip("bert4keras.backend")
    import tensorflow as tf

    logits = tf.constant(LOGITS)
    soft = rng.random((6, 5)).astype("float32")
    for labels in (LABELS, soft):
        ours = losses.multilabel_categorical_crossentropy(labels, logits)
        theirs = backend.multilabel_categorical_crossentropy(
            tf.constant(labels), logits
        )
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-5)
    indices = tf.constant([[1, 3], [2, 0], [4, 1], [0, 0], [1, 2], [3, 4]])
    ours = losses.sparse_multilabel_categorical_crossentropy(indices, logits, True)
    theirs = backend.sparse_multilabel_categorical_crossentropy(indices, logits, True)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-5)


# ---------------------------------------------------- invalid inputs (issue 9)
def _sparse_fit(indices, **compile_kwargs):
    model, x = logit_model(LOGITS)
    model.compile(
        optimizer=tf_keras.optimizers.SGD(learning_rate=0.1),
        loss=losses.sparse_multilabel_categorical_crossentropy,
        **compile_kwargs,
    )
    history = model.fit(
        x,
        indices,
        batch_size=6,
        epochs=3,
        verbose=0,
        callbacks=[tf_keras.callbacks.TerminateOnNaN()],
    )
    return model, history


BAD_INDICES = np.array([[0, 1], [1, 3], [9, 0], [4, 0], [1, 2], [3, 4]], "int32")


def test_bad_sparse_index_gives_nan_in_graph_mode():
    model, history = _sparse_fit(BAD_INDICES)
    assert len(history.history["loss"]) == 1 and np.isnan(history.history["loss"][0])
    assert np.isfinite(model.layers[0].kernel.numpy()).all()


def test_bad_sparse_index_raises_when_run_eagerly():
    with pytest.raises(ValueError, match=r"= 9 is not a valid class index"):
        _sparse_fit(BAD_INDICES, run_eagerly=True)


def test_dense_labels_of_another_shape_raise():
    model, x = logit_model(LOGITS)
    model.compile(loss=losses.multilabel_categorical_crossentropy)
    with pytest.raises(ValueError, match=r"y_true.shape=\((None|6), 1\)"):
        model.evaluate(x, LABELS[:, :1], verbose=0, batch_size=6)


def test_flooding_accepts_a_lambda():
    model, x = logit_model(LOGITS)
    model.compile(
        optimizer=tf_keras.optimizers.SGD(learning_rate=1.0),
        loss=losses.Flooding(
            lambda y, p: losses.multilabel_categorical_crossentropy(y, p), 0.0
        ),
    )
    model.train_on_batch(x, LABELS)
    reference, _ = logit_model(LOGITS)
    reference.compile(
        optimizer=tf_keras.optimizers.SGD(learning_rate=1.0),
        loss=losses.multilabel_categorical_crossentropy,
    )
    reference.train_on_batch(x, LABELS)
    np.testing.assert_allclose(
        model.layers[0].kernel.numpy(), reference.layers[0].kernel.numpy(), rtol=1e-6
    )
