"""Spectral norms: the shared maths, the constraint and the regulariser.

Runs once per Keras 3 backend; every number is compared with NumPy's SVD or a
closed form. The wrapper is in test_spectral_normalization.py.
"""

import numpy as np
import pytest

from keras_reg import constraints, regularizers, spectral
from keras_reg._compat import keras
from tests.spectral_helpers import numpy, sigma_max

ops = keras.ops


def random_matrix(rng, shape, singular_values=None):
    if singular_values is None:
        return rng.normal(size=shape).astype("float32")
    m, n = shape
    left, _ = np.linalg.qr(rng.normal(size=(m, m)))
    right, _ = np.linalg.qr(rng.normal(size=(n, n)))
    k = len(singular_values)
    return ((left[:, :k] * singular_values) @ right[:, :k].T).astype("float32")


# ---------------------------------------------------------------- shared maths


def test_power_iteration_follows_numpy_and_converges_to_the_svd(rng):
    w = random_matrix(rng, (12, 7), singular_values=[3.0, 2.7, 1.0, 0.5, 0.1])
    true_sigma = np.linalg.svd(w, compute_uv=False)[0]
    u_ref = spectral.initial_vector(7).astype(np.float64)
    previous = 0.0
    for k in (1, 2, 5, 20, 80):
        u, v = spectral.power_iteration(w, spectral.initial_vector(7), k)
        got = float(numpy(spectral.sigma_from_vectors(w, u, v)))
        u_np = u_ref
        for _ in range(k):
            v_np = w @ u_np
            v_np /= np.linalg.norm(v_np)
            u_np = w.T @ v_np
            u_np /= np.linalg.norm(u_np)
        np.testing.assert_allclose(numpy(u), u_np, atol=1e-5)
        np.testing.assert_allclose(got, v_np @ w @ u_np, rtol=1e-5)
        assert previous - 1e-5 <= got <= true_sigma * (1 + 1e-6)  # lower bounds
        previous = got
    assert got == pytest.approx(true_sigma, rel=1e-5)
    u1, v1 = spectral.power_iteration(w, spectral.initial_vector(7), 1)
    one_step = float(numpy(spectral.sigma_from_vectors(w, u1, v1)))
    assert one_step < true_sigma * 0.999  # one step from a fixed start is low


@pytest.mark.parametrize(
    "case", ["dense", "wide", "conv", "orthogonal", "close_top_pair", "zero"]
)
def test_bounds_bracket_the_svd(case, rng):
    shapes = {"dense": (40, 9), "wide": (5, 30), "conv": (3, 3, 4, 6)}
    if case in shapes:
        w = random_matrix(rng, shapes[case])
    elif case == "orthogonal":  # every singular value equal: no gap at all
        w = random_matrix(rng, (24, 24), singular_values=np.ones(24))
    elif case == "close_top_pair":
        w = random_matrix(rng, (30, 20), singular_values=[2.0, 1.9999, 1.999, 0.3])
    else:
        w = np.zeros((4, 3), "float32")
    lower, upper = (float(numpy(b)) for b in spectral.spectral_norm_bounds(w))
    true_sigma = sigma_max(w)
    assert lower <= true_sigma * (1 + 1e-6) + 1e-12
    assert upper >= true_sigma * (1 - 1e-6)
    assert upper <= true_sigma * (1 + 1e-3 + 1e-6) + 1e-12
    assert lower >= true_sigma * (1 - 1e-4)


# ------------------------------------------------------------------ constraint


def constrained_cnn(constraint):
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(6, 3, activation="relu", kernel_constraint=constraint),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(10, kernel_constraint=constraint),
        ]
    )


@pytest.mark.parametrize("max_value", [0.25, 0.6])
def test_constraint_bounds_sigma_after_fit(max_value, rng):
    x = rng.normal(size=(64, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, size=64)
    model = constrained_cnn(constraints.SpectralNorm(max_value))
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer=keras.optimizers.Adam(0.05),
    )
    model.fit(x, y, batch_size=16, epochs=3, verbose=0)
    for weight in (model.layers[0].kernel, model.layers[-1].kernel):
        sigma = sigma_max(weight)
        # At the bound (training pushes sigma up, the constraint holds it), and
        # never above it by more than 1e-3 relative.
        assert max_value * (1 - 1e-3) <= sigma <= max_value * (1 + 1e-3), sigma


def test_constraint_on_embeddings_and_leaves_small_weights_alone():
    table = np.arange(12, dtype="float32").reshape(4, 3) / 10.0
    bounded = numpy(constraints.SpectralNorm(1.0)(table))
    np.testing.assert_allclose(sigma_max(bounded), 1.0, rtol=2e-4)
    np.testing.assert_allclose(bounded, table / sigma_max(table), rtol=2e-4)  # rescaled
    small = table / 100.0
    np.testing.assert_array_equal(numpy(constraints.SpectralNorm(1.0)(small)), small)
    layer = keras.layers.Embedding(
        50, 4, embeddings_constraint=constraints.SpectralNorm(0.1)
    )
    model = keras.Sequential([keras.Input((3,), dtype="int32"), layer])
    model.compile(loss="mse", optimizer=keras.optimizers.SGD(1.0))
    ids = np.arange(30).reshape(10, 3) % 50
    model.fit(ids, np.ones((10, 3, 4)), epochs=2, verbose=0)
    assert sigma_max(layer.embeddings) <= 0.1 * (1 + 1e-3)


def test_constraint_lookup_and_validation():
    assert isinstance(constraints.get("spectral_norm"), constraints.SpectralNorm)
    config = {"class_name": "keras_reg>SpectralNorm", "config": {"max_value": 3.0}}
    assert keras.constraints.get(config).max_value == 3.0
    assert constraints.get("max_norm").__class__ is keras.constraints.MaxNorm
    with pytest.raises(ValueError, match="max_value=-1"):
        constraints.SpectralNorm(-1)


# ----------------------------------------------------------------- regulariser


def test_spectral_norm_regularizer_value_and_gradient(rng):
    w = rng.normal(size=(5, 4)).astype("float32")
    regularizer = regularizers.SpectralNormRegularizer(0.5)
    left, s, right = np.linalg.svd(w.astype(np.float64))
    np.testing.assert_allclose(numpy(regularizer(w)), 0.5 * s[0] ** 2, rtol=1e-5)
    # One SGD step (lr 1) on the penalty alone moves W by its gradient,
    # 2 * weight * sigma * v u^T (Yoshida & Miyato).
    dense = keras.layers.Dense(4, use_bias=False, kernel_regularizer=regularizer)
    model = keras.Sequential([keras.Input((5,)), dense])
    model.compile(
        loss=lambda t, p: 0.0 * ops.sum(p), optimizer=keras.optimizers.SGD(1.0)
    )
    dense.kernel.assign(w)
    model.train_on_batch(np.zeros((2, 5), "float32"), np.zeros((2, 4), "float32"))
    expected = w - 2 * 0.5 * s[0] * np.outer(left[:, 0], right[0])
    np.testing.assert_allclose(numpy(dense.kernel), expected, atol=2e-5)


def test_regularizer_lookup_and_validation():
    assert isinstance(
        regularizers.get("spectral_norm"), regularizers.SpectralNormRegularizer
    )
    config = {"class_name": "keras_reg>WEISSI", "config": {"weight": 0.5}}
    assert keras.regularizers.get(config).weight == 0.5
    assert isinstance(regularizers.get("weissi"), regularizers.WEISSI)
    assert regularizers.get("l2").__class__ is keras.regularizers.L2
    with pytest.raises(ValueError, match="weight='big'"):
        regularizers.SpectralNormRegularizer("big")


def test_regularizer_trains_a_tiny_model_to_a_smaller_sigma(rng):
    x = rng.normal(size=(64, 6)).astype("float32")
    y = x @ rng.normal(scale=2.0, size=(6, 3)).astype("float32")
    sigmas = {}
    for name, regularizer in (
        ("plain", None),
        ("penalised", regularizers.SpectralNormRegularizer(1.0)),
    ):
        keras.utils.set_random_seed(0)
        dense = keras.layers.Dense(3, kernel_regularizer=regularizer)
        model = keras.Sequential([keras.Input((6,)), dense])
        model.compile(loss="mse", optimizer=keras.optimizers.Adam(0.05))
        model.fit(x, y, batch_size=32, epochs=20, verbose=0)
        sigmas[name] = sigma_max(dense.kernel)
    assert sigmas["penalised"] < 0.8 * sigmas["plain"], sigmas
