"""FreeFGM carrying its direction as the batch's rows (``batch_tokens``)."""

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras
from tests import adversaries_reference, models

LR, MODES = models.ADVERSARY_LR, models.MODES

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")


def _fit(regularizer, x, y, w, epochs, batch_size, style="functional", **kwargs):
    E, W, b = models.initial_weights(np.random.default_rng(0))
    model = models.compiled(style, **kwargs)
    models.set_weights(model, E, W, b)
    keras_reg.install_regularizer(model, regularizer)
    model.fit(
        x, y, sample_weight=w, batch_size=batch_size, epochs=epochs,
        shuffle=False, verbose=0,
    )  # fmt: skip
    return model, (E, W, b)


@pytest.mark.parametrize("style", ["sequential", "functional", "subclassed"])
@pytest.mark.parametrize("mode", MODES)
def test_rows_match_the_numpy_steps(mode, style, rng):
    x, y, w = models.batch(rng)
    regularizer = keras_reg.FreeFGM("emb", epsilon=0.7, batch_tokens=x.size)
    model, (E, W, b) = _fit(regularizer, x, y, w, 3, len(x), style, **mode)
    expected = adversaries_reference.free_fgm_sgd_steps(
        E, W, b, x, y, LR, 0.7, steps=3, w=w
    )
    models.assert_weights(model, expected)


@pytest.mark.parametrize(
    "epsilon", [0.7, keras_reg.relative(0.3)], ids=["absolute", "relative"]
)
@pytest.mark.parametrize("mode", MODES)
def test_rows_train_as_the_dense_delta_over_batches_of_varying_shape(mode, epsilon):
    """Consecutive batches share some tokens; the last batch is partial."""
    rng = np.random.default_rng(3)
    x, y, w = models.batch(rng, size=14)
    runs = [
        _fit(keras_reg.FreeFGM("emb", epsilon=epsilon, **extra), x, y, w, 2, 4, **mode)
        for extra in ({}, {"batch_tokens": 4 * models.LENGTH})
    ]
    dense, rows = (models.get_weights(model) for model, _ in runs)
    for got, want in zip(rows, dense):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # ...and the direction did act: not plain training.
    plain = models.compiled(**mode)
    models.set_weights(plain, *runs[0][1])
    plain.fit(x, y, sample_weight=w, batch_size=4, epochs=2, shuffle=False, verbose=0)
    assert np.abs(models.get_weights(plain)[1] - rows[1]).max() > 1e-4


def _carried_size(vocab, **options):
    inputs = keras.Input((models.LENGTH,), dtype="int32")
    h = keras.layers.Embedding(vocab, 16, name="emb")(inputs)
    h = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    model.compile(loss="mse", optimizer="sgd")
    before = sum(int(np.prod(v.shape)) for v in model.metrics_variables)
    keras_reg.install_regularizer(model, keras_reg.FreeFGM("emb", **options))
    return sum(int(np.prod(v.shape)) for v in model.metrics_variables) - before


def test_carried_rows_do_not_grow_with_the_vocabulary():
    small = _carried_size(1_000, batch_tokens=64)
    large = _carried_size(100_000, batch_tokens=64)
    # The row buffer (64 x 16 and 64 indices) and the logged term's mean.
    assert small == large < 64 * (16 + 1) + 8


def test_a_matrix_read_elsewhere_needs_the_dense_delta(rng):
    x, y, w = models.batch(rng)
    regularizer = keras_reg.FreeFGM("emb", epsilon=0.7, batch_tokens=x.size)
    with pytest.raises(ValueError, match="batch_tokens=None"):
        _fit(regularizer, x, y, w, 1, len(x), l2=0.05)


def test_a_batch_over_batch_tokens_is_refused(rng):
    x, y, w = models.batch(rng)
    regularizer = keras_reg.FreeFGM("emb", epsilon=0.7, batch_tokens=x.size - 1)
    with pytest.raises(Exception, match="batch_tokens|segment|out of range"):
        _fit(regularizer, x, y, w, 1, len(x))


@pytest.mark.parametrize("value", [0, 2.0, True, "64"])
def test_batch_tokens_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match=f"batch_tokens={value!r}"):
        keras_reg.FreeFGM("emb", batch_tokens=value)


def test_config_round_trip():
    regularizer = keras_reg.FreeFGM("emb", epsilon=0.3, batch_tokens=128)
    config = regularizer.get_config()
    assert config["batch_tokens"] == 128
    assert keras_reg.FreeFGM(**config).get_config() == config
    assert "batch_tokens" not in keras_reg.FreeFGM("emb").get_config()


@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize("mode", MODES)
def test_an_unknown_batch_over_batch_tokens_perturbs_nothing(mode, rng):
    """A tf.data batch of unknown size is not checked when traced: more distinct
    tokens than the buffer holds carry no direction (never a truncated one)."""
    import tensorflow as tf

    x, y, w = models.batch(rng)
    data = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(len(x))
    weights = []
    for regularizer in (keras_reg.FreeFGM("emb", batch_tokens=3), None):
        model = models.compiled(**mode)
        models.set_weights(model, *models.initial_weights(np.random.default_rng(1)))
        if regularizer is not None:
            keras_reg.install_regularizer(model, regularizer)
        model.fit(data, epochs=2, verbose=0)
        weights.append(models.get_weights(model))
    for got, want in zip(*weights):
        np.testing.assert_array_equal(got, want)
