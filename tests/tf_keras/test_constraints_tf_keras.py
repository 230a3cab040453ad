"""SpectralNorm, SpectralNormRegularizer and WEISSI in tf_keras (Keras 2) models.

Runs in its own process with TF_KERAS=1 and TF_USE_LEGACY_KERAS=1. Constraints
and regularisers are plain callables on a weight, written with Keras 3
``keras.ops``, which on the TensorFlow backend accept tf_keras's variables. The
`layers.SpectralNormalization` wrapper is a Keras 3 layer: not for tf_keras.
"""

import os

import numpy as np
import pytest

if os.environ.get("TF_KERAS") != "1":
    pytest.skip("tf_keras tests run in their own process", allow_module_level=True)

import bert4keras.models  # noqa: E402, F401
import tf_keras  # noqa: E402

from keras_reg import constraints, regularizers  # noqa: E402

CUSTOM_OBJECTS = {
    "SpectralNorm": constraints.SpectralNorm,
    "SpectralNormRegularizer": regularizers.SpectralNormRegularizer,
    "WEISSI": regularizers.WEISSI,
}


def sigma_max(weight):
    weight = np.asarray(weight, np.float64)
    return np.linalg.svd(weight.reshape(-1, weight.shape[-1]), compute_uv=False)[0]


def cnn(max_value):
    return tf_keras.Sequential(
        [
            tf_keras.Input((8, 8, 1)),
            tf_keras.layers.Conv2D(
                6,
                3,
                activation="relu",
                kernel_constraint=constraints.SpectralNorm(max_value),
            ),
            tf_keras.layers.MaxPooling2D(2),
            tf_keras.layers.Flatten(),
            tf_keras.layers.Dense(
                10,
                kernel_constraint=constraints.SpectralNorm(max_value),
                kernel_regularizer=regularizers.WEISSI(1e-2, direction_l1=1e-3),
            ),
        ]
    )


def test_constraint_bounds_sigma_after_fit_and_the_model_reloads(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, size=64)
    model = cnn(0.25)
    model.compile(
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer=tf_keras.optimizers.Adam(0.05),
    )
    model.fit(x, y, batch_size=16, epochs=3, verbose=0)
    for layer in (model.layers[0], model.layers[-1]):
        sigma = sigma_max(layer.kernel.numpy())
        assert 0.25 * (1 - 1e-3) <= sigma <= 0.25 * (1 + 1e-3), sigma
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = tf_keras.models.load_model(path, custom_objects=CUSTOM_OBJECTS)
    assert loaded.layers[0].kernel_constraint.get_config() == {"max_value": 0.25}
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0)
    )
    loaded.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert sigma_max(loaded.layers[0].kernel.numpy()) <= 0.25 * (1 + 1e-3)


@pytest.mark.parametrize("name", ["spectral", "weissi"])
def test_regularizer_value_and_one_sgd_step(name):
    rng = np.random.default_rng(1)
    w = rng.normal(size=(5, 4))
    left, s, right = np.linalg.svd(w)
    norm = np.linalg.norm(w)
    if name == "spectral":
        regularizer = regularizers.SpectralNormRegularizer(0.5)
        value = 0.5 * s[0] ** 2
        gradient = 2 * 0.5 * s[0] * np.outer(left[:, 0], right[0])
    else:
        regularizer = regularizers.WEISSI(0.3, direction_l1=0.05)
        value = 0.3 * np.log(norm) + 0.05 * np.abs(w).sum() / norm
        gradient = 0.3 * w / norm**2 + 0.05 * (
            np.sign(w) / norm - np.abs(w).sum() * w / norm**3
        )
    dense = tf_keras.layers.Dense(4, use_bias=False, kernel_regularizer=regularizer)
    model = tf_keras.Sequential([tf_keras.Input((5,)), dense])
    model.compile(loss=lambda t, p: 0.0 * p, optimizer=tf_keras.optimizers.SGD(1.0))
    dense.kernel.assign(w.astype("float32"))
    np.testing.assert_allclose(float(sum(model.losses)), value, rtol=1e-5)
    model.train_on_batch(np.zeros((2, 5), "float32"), np.zeros((2, 4), "float32"))
    np.testing.assert_allclose(dense.kernel.numpy(), w - gradient, atol=2e-5)


def test_apply_weissi_explains_the_tf_keras_way():
    model = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="kernel_regularizer=keras_reg.regularizers"):
        regularizers.apply_weissi(model)
