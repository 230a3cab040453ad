"""R-Drop: the plain step without dropout, the KL term vs NumPy for fixed masks,
independent masks on every backend, errors."""

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras
from tests import fgm_reference, models

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")
LR, ALPHA = 0.5, 4.0


class FixedMasks(keras.layers.Layer):
    """Multiplies by ``masks[0]`` in odd-numbered training calls, ``masks[1]`` in
    even ones (a counter kept as layer state, so it works under jit)."""

    def __init__(self, masks, **kwargs):
        super().__init__(**kwargs)
        self.masks = np.asarray(masks, "float32")

    def build(self, input_shape):
        self.calls = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="calls"
        )

    def call(self, h, training=False):
        if not training:
            return h
        index = keras.ops.cast(keras.ops.mod(self.calls, 2.0), "int32")
        self.calls.assign(self.calls + 1.0)
        return h * keras.ops.take(keras.ops.convert_to_tensor(self.masks), index, 0)


def _model(middle, jit_compile=False, lr=LR):
    inputs = keras.Input((models.LENGTH,), dtype="int32")
    h = keras.layers.Embedding(models.VOCAB, models.DIM, name="emb")(inputs)
    h = middle(keras.layers.GlobalAveragePooling1D()(h))
    outputs = keras.layers.Dense(models.CLASSES, activation="softmax", name="out")(h)
    model = keras.Model(inputs, outputs)
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer=keras.optimizers.SGD(lr),
        jit_compile=jit_compile,
    )
    return model


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)


def _skip_torch_jit(jit_compile):
    if jit_compile and keras.backend.backend() == "torch":
        pytest.skip("jit_compile=True is torch.compile, refused on torch")


def _mlp(jit_compile):
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, activation="tanh")(inputs)
    h = keras.layers.Dropout(0.0)(h)
    outputs = keras.layers.Dense(3, activation="softmax")(h)
    model = keras.Model(inputs, outputs)
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer=keras.optimizers.SGD(LR),
        jit_compile=jit_compile,
    )
    return model


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "jit"])
def test_without_dropout_the_step_is_exactly_the_plain_step(jit_compile, rng):
    """Bit for bit without XLA, on float inputs. (With an embedding,
    TensorFlow's sparse gradient of two passes is summed in another order:
    equal to ~1 ulp.)"""
    _skip_torch_jit(jit_compile)
    x = rng.normal(size=(10, 6)).astype("float32")
    y = rng.integers(0, 3, size=(10,))
    w = rng.uniform(0.5, 2.0, size=(10,)).astype("float32")
    results, initial = [], None
    for rdrop in (False, True):
        model = _mlp(jit_compile)
        initial = initial or model.get_weights()
        model.set_weights(initial)
        if rdrop:
            keras_reg.r_drop(model, weight=ALPHA)
        history = model.fit(
            x, y, sample_weight=w, batch_size=5, epochs=3, shuffle=False, verbose=0
        ).history
        results.append(model.get_weights())
    assert history["rdrop_kl"] == [0.0, 0.0, 0.0]
    moved = max(np.abs(a - b).max() for a, b in zip(results[0], initial))
    assert moved > 1e-2
    for plain, rdrop in zip(*results):
        if jit_compile:
            # XLA may fuse the two passes' kernel gradients into one dot
            # (another summation order): equal to a few ulp.
            np.testing.assert_array_max_ulp(rdrop, plain, maxulp=4)
        else:
            np.testing.assert_array_equal(rdrop, plain)


def test_without_dropout_the_step_matches_numpy(rng):
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    model = _model(keras.layers.Dropout(0.0))
    models.set_weights(model, E, W, b)
    keras_reg.r_drop(model, weight=ALPHA)
    models.fit_one_batch(model, x, y, w)
    expected = fgm_reference.plain_sgd_step(E, W, b, x, y, LR, w)
    for got, want in zip(models.get_weights(model), expected):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "jit"])
def test_kl_term_and_loss_match_numpy_for_fixed_masks(jit_compile, rng):
    _skip_torch_jit(jit_compile)
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    masks = rng.integers(0, 2, size=(2, len(x), models.DIM)) * 2.0
    model = _model(FixedMasks(masks), jit_compile, lr=0.0)
    models.set_weights(model, E, W, b)
    keras_reg.r_drop(model, weight=ALPHA)
    history = models.fit_one_batch(model, x, y, w)
    history = model.history.history
    h = np.float64(E)[x].mean(axis=1)
    p1, p2 = (_softmax((h * m) @ W + b) for m in masks)
    kl = np.mean(np.sum(p1 * np.log(p1 / p2) + p2 * np.log(p2 / p1), axis=-1))
    assert kl > 0.05, "the masks barely change the prediction"
    assert history["rdrop_kl"][0] == pytest.approx(kl, rel=1e-4)
    picked = np.arange(len(x)), y
    losses = [np.sum(w * -np.log(p[picked])) / len(x) for p in (p1, p2)]
    total = np.mean(losses) + ALPHA / 4 * kl
    assert history["loss"][0] == pytest.approx(total, rel=1e-4)


class _Predictions(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.kl = []

    def on_train_batch_end(self, batch, logs=None):
        self.kl.append(float(logs["rdrop_kl"]))


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "jit"])
def test_two_passes_draw_independent_masks_and_seeds_advance(jit_compile, rng):
    """Dropout(0.5): the KL of each step is > 0 (the masks differ) and differs
    from step to step (the seed state advances, as in a plain step)."""
    _skip_torch_jit(jit_compile)
    model = _model(keras.layers.Dropout(0.5), jit_compile, lr=0.0)
    keras_reg.r_drop(model)
    x, y, w = models.batch(rng)
    probe = _Predictions()
    model.fit(x, y, batch_size=len(x), epochs=3, verbose=0, callbacks=[probe])
    # logs["rdrop_kl"] is the epoch's running mean: one batch per epoch here.
    assert all(kl > 1e-4 for kl in probe.kl), probe.kl
    assert len(set(probe.kl)) == 3, probe.kl


def test_logits_output_is_read_with_log_softmax(rng):
    model = _model(keras.layers.Dropout(0.5))
    model.layers[-1].activation = keras.activations.linear
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer="sgd",
    )
    regularizer = keras_reg.RDrop()
    keras_reg.install_regularizer(model, regularizer)
    x, y, w = models.batch(rng)
    history = model.fit(x, y, verbose=0).history
    assert np.isfinite(history["rdrop_kl"][0]) and history["rdrop_kl"][0] > 0


def test_regression_loss_is_refused_with_the_fix():
    model = _model(keras.layers.Dropout(0.1))
    model.compile(loss="mse", optimizer="sgd")
    with pytest.raises(ValueError, match="RDrop measures.*predictions="):
        keras_reg.r_drop(model)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: keras_reg.RDrop(weight=0), "weight=0"),
        (lambda: keras_reg.RDrop(predictions="probs"), "predictions='probs'"),
    ],
)
def test_bad_arguments_name_the_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_mixed_precision_without_dropout_is_the_plain_mixed_step(rng):
    x = rng.normal(size=(10, 6)).astype("float32")
    y = rng.integers(0, 3, size=(10,))
    keras.config.set_dtype_policy("mixed_float16")
    results, initial = [], None
    for rdrop in (False, True):
        model = _mlp(False)
        model.compile(
            loss="sparse_categorical_crossentropy",
            optimizer=keras.optimizers.LossScaleOptimizer(
                keras.optimizers.SGD(LR), initial_scale=2.0**10
            ),
        )
        initial = initial or model.get_weights()
        model.set_weights(initial)
        if rdrop:
            keras_reg.r_drop(model)
        model.fit(x, y, batch_size=5, epochs=2, shuffle=False, verbose=0)
        results.append(model.get_weights())
    moved = max(np.abs(a - b).max() for a, b in zip(results[0], initial))
    assert moved > 1e-2
    for plain, rdrop in zip(*results):
        np.testing.assert_allclose(rdrop, plain, rtol=1e-6, atol=1e-7)
