"""Options that were silently ignored: each now applies or is refused clearly."""

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras
from tests import models

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")


def _dense_model(seed):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(5, activation="relu", name="hidden"),
            keras.layers.Dense(2, name="logits"),
        ]
    )
    model.compile(loss="mse", optimizer=keras.optimizers.SGD(0.1))
    return model


def _weights(model):
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


def test_weissi_applied_after_a_first_fit_is_trained_on():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4)).astype("float32")
    y = rng.normal(size=(8, 2)).astype("float32")
    late = _dense_model(1)
    late.fit(x, y, batch_size=8, verbose=0)
    after_first = _weights(late)
    keras_reg.regularizers.apply_weissi(late, weight=0.5)
    late.fit(x, y, batch_size=8, verbose=0)

    fresh = _dense_model(1)
    keras_reg.regularizers.apply_weissi(fresh, weight=0.5)
    fresh.compile(loss="mse", optimizer=keras.optimizers.SGD(0.1))
    fresh.set_weights(after_first)
    fresh.fit(x, y, batch_size=8, verbose=0)

    plain = _dense_model(1)
    plain.set_weights(after_first)
    plain.fit(x, y, batch_size=8, verbose=0)
    for got, want in zip(_weights(late), _weights(fresh)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert max(
        np.abs(g - p).max() for g, p in zip(_weights(late), _weights(plain))
    ) > 1e-4


@pytest.mark.parametrize("unlabeled", ["none", "dataset"])
def test_vat_unlabeled_batch_size_without_arrays_is_refused(unlabeled):
    if unlabeled == "dataset":
        if keras.backend.backend() != "tensorflow":
            pytest.skip("tf.data unlabelled data is TensorFlow only")
        import tensorflow as tf

        data = tf.data.Dataset.from_tensor_slices(np.zeros((8, 5), "int32")).batch(4)
    else:
        data = None
    with pytest.raises(ValueError, match="received unlabeled_batch_size=16 with"):
        keras_reg.VAT("emb", unlabeled=data, unlabeled_batch_size=16)


def test_vat_config_without_its_arrays_still_loads():
    x_u = np.zeros((8, models.LENGTH), "int32")
    config = keras_reg.VAT("emb", unlabeled=x_u, unlabeled_batch_size=4).get_config()
    with pytest.warns(UserWarning, match="never serialised"):
        keras_reg.VAT.from_config(config)
