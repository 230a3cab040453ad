"""callbacks.GradientNorms: the logged norms against float64 NumPy closed forms."""

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras
from tests import fgm_reference, models
from tests import gradient_penalty_reference as reference

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")
KEYS = ("grad_norm_inputs", "grad_norm_weights")


def _bag_norms(E, W, b, x, y, w, l2):
    """||dL/d looked-up vectors|| and ||dL/d(E, W, b)|| of the bag model."""
    w = np.ones(len(x)) if w is None else np.asarray(w, np.float64)
    _, dE, dW, db = fgm_reference.loss_and_gradients(E, W, b, x, y, w, l2)
    occurrences = reference._occurrence_gradients(
        *(np.asarray(a, np.float64) for a in (E, W, b)), x, y, w
    )
    weights = np.sqrt(np.sum(dE**2) + np.sum(dW**2) + np.sum(db**2))
    return np.sqrt(np.sum(occurrences**2)), weights


@pytest.mark.parametrize("style", ["sequential", "functional", "subclassed"])
def test_embedding_norms_match_numpy_at_each_epochs_end(style, rng):
    # Dropout 0.5: the probe must run in inference mode to match the dropout-free
    # maths; an L2 embeddings regulariser: model.losses are part of L.
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    x_probe, y_probe, w_probe = models.batch(rng, size=4)
    model = models.compiled(style, l2=0.05, dropout=0.5)
    models.set_weights(model, E, W, b)
    norms = keras_reg.callbacks.GradientNorms(
        x_probe, y_probe, embedding_name="emb", sample_weight=w_probe
    )
    seen = []

    class Weights(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(models.get_weights(self.model))

    history = model.fit(
        x,
        y,
        sample_weight=w,
        batch_size=3,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[norms, Weights()],
    ).history
    for key in KEYS:
        assert len(history[key]) == 2, history
    for epoch, weights in enumerate(seen):
        want = _bag_norms(*weights, x_probe, y_probe, w_probe, l2=0.05)
        got = [history[key][epoch] for key in KEYS]
        np.testing.assert_allclose(got, want, rtol=1e-4)
    # The weights moved between the epochs, and so did the norms.
    assert history["grad_norm_weights"][0] != pytest.approx(
        history["grad_norm_weights"][1], rel=1e-3
    )


def test_float_input_norms_match_numpy(rng):
    # logits = x @ W + b, L = mean CE + l2 * ||W||^2: dL/dx = dlogits W^T.
    l2, batch = 0.1, 5
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(
        3, activation="softmax", kernel_regularizer=keras.regularizers.L2(l2)
    )
    model = keras.Model(inputs, dense(inputs))
    model.compile(
        loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.SGD(0.0)
    )
    W = rng.normal(size=(4, 3)).astype("float32")
    b = rng.normal(size=(3,)).astype("float32")
    dense.kernel.assign(W)
    dense.bias.assign(b)
    x = rng.normal(size=(batch, 4))  # float64: converted to float32 as fit does
    y = rng.integers(0, 3, size=(batch,))
    history = model.fit(
        x,
        y,
        epochs=1,
        verbose=0,
        callbacks=[keras_reg.callbacks.GradientNorms(x, y)],
    ).history

    x32 = x.astype("float32").astype(np.float64)
    z = x32 @ W + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dlogits = (p - np.eye(3)[y]) / batch
    dx = dlogits @ W.T.astype(np.float64)
    dW = x32.T @ dlogits + 2 * l2 * W
    db = dlogits.sum(0)
    want = [np.sqrt(np.sum(dx**2)), np.sqrt(np.sum(dW**2) + np.sum(db**2))]
    got = [history[key][0] for key in KEYS]
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_logs_reach_later_callbacks_and_leave_the_loss_alone(rng):
    x, y, w = models.batch(rng)
    received = {}

    class Later(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            received.update(logs)

    losses = []
    for callbacks in ([], [keras_reg.callbacks.GradientNorms(x, y, "emb"), Later()]):
        keras.utils.set_random_seed(0)
        model = models.compiled("functional")
        history = model.fit(
            x, y, batch_size=3, epochs=2, verbose=0, callbacks=callbacks
        )
        losses.append(history.history["loss"])
    assert set(KEYS) <= set(received)
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)


def test_with_a_regularizer_installed(rng):
    # The probe runs the model's own loss, not the regulariser's step.
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    model = models.compiled("functional", lr=0.0)
    models.set_weights(model, E, W, b)
    keras_reg.gradient_penalty(model, "emb", weight=1.0)
    norms = keras_reg.callbacks.GradientNorms(x, y, "emb")
    history = model.fit(x, y, batch_size=6, epochs=1, verbose=0, callbacks=[norms])
    want = _bag_norms(E, W, b, x, y, None, l2=0.0)
    got = [history.history[key][0] for key in KEYS]
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_token_ids_without_embedding_name_are_refused(rng):
    x, y, _ = models.batch(rng)
    with pytest.raises(ValueError, match="embedding_name='Embedding-Token'"):
        keras_reg.callbacks.GradientNorms(x, y)


@pytest.mark.parametrize(
    "probe, named",
    [
        (lambda x, y, w: (x, y[:-1], None), "y: 5"),
        (lambda x, y, w: (x[:-2], y, None), "x: 4"),
        (lambda x, y, w: (x, y, w[:3]), "sample_weight: 3"),
    ],
)
def test_probe_arrays_of_different_lengths_are_refused_at_once(rng, probe, named):
    x, y, w = models.batch(rng)
    x, y, w = probe(x, y, w)
    with pytest.raises(ValueError, match="same number of examples") as caught:
        keras_reg.callbacks.GradientNorms(x, y, embedding_name="emb", sample_weight=w)
    assert "GradientNorms" in str(caught.value) and named in str(caught.value)


def test_probe_without_targets_is_refused_at_once(rng):
    x, _, _ = models.batch(rng)
    with pytest.raises(ValueError, match="GradientNorms needs .* received y=None"):
        keras_reg.callbacks.GradientNorms(x, None, embedding_name="emb")


def test_unknown_embedding_name_fails_when_fit_begins(rng):
    x, y, _ = models.batch(rng)
    model = models.compiled("functional")
    norms = keras_reg.callbacks.GradientNorms(x, y, embedding_name="nope")
    with pytest.raises(ValueError, match="No layer named 'nope'"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[norms])


@pytest.mark.backends("tensorflow")
def test_tf_keras_model_outside_a_bert4keras_process(rng):
    import tf_keras

    inputs = tf_keras.Input((models.LENGTH,), dtype="int32")
    h = tf_keras.layers.Embedding(models.VOCAB, models.DIM, name="emb")(inputs)
    h = tf_keras.layers.GlobalAveragePooling1D()(h)
    dense = tf_keras.layers.Dense(models.CLASSES, activation="softmax")
    model = tf_keras.Model(inputs, dense(h))
    model.compile(
        loss="sparse_categorical_crossentropy", optimizer=tf_keras.optimizers.SGD(0.0)
    )
    E, W, b = models.initial_weights(rng)
    model.get_layer("emb").set_weights([E])
    dense.set_weights([W, b])
    x, y, w = models.batch(rng)
    keras3_callback = keras_reg.callbacks.GradientNorms(x, y, "emb")
    with pytest.raises(TypeError, match="tf_keras_gradient_norms"):
        model.fit(x, y, verbose=0, callbacks=[keras3_callback])
    norms = keras_reg.callbacks.tf_keras_gradient_norms(x, y, "emb", sample_weight=w)
    history = model.fit(x, y, verbose=0, callbacks=[norms]).history
    got = [history[key][0] for key in KEYS]
    np.testing.assert_allclose(got, _bag_norms(E, W, b, x, y, w, 0.0), rtol=1e-4)
