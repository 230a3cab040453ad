"""Noise training and input gradient penalties: closed forms, the +-1 estimate's
expectation, double backprop."""

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras
from tests import gradient_penalty_reference as reference
from tests import models

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")
LR = 0.3


# ---- a float-input regressor with one output: the penalties are deterministic ---
def _regressor(lr=LR, hidden=4):
    inputs = keras.Input((3,))
    h = keras.layers.Dense(hidden, activation="tanh", name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, name="out")(h))
    model.compile(loss="mse", optimizer=keras.optimizers.SGD(lr))
    return model


def _regression_data(rng, size=6):
    x = rng.normal(size=(size, 3)).astype("float32")
    y = rng.normal(size=(size, 1)).astype("float32")
    return x, y


def _params(model):
    return [keras.ops.convert_to_numpy(v).astype(np.float64) for v in model.weights]


def _input_gradients(W1, b1, W2, x):
    """d f(x_i) / d x_i for f = tanh(x W1 + b1) W2 + b2: (batch, 3)."""
    a = np.tanh(x @ W1 + b1)
    return ((1 - a**2) * W2[:, 0]) @ W1.T


def _objective(weight, target, x, y):
    def objective(W1, b1, W2, b2):
        f = np.tanh(x @ W1 + b1) @ W2 + b2
        mse = np.mean((f - y) ** 2)
        norms = np.sum(_input_gradients(W1, b1, W2, x) ** 2, axis=1)
        if target is not None:
            norms = (np.sqrt(norms) - target) ** 2
        return mse + weight * np.mean(norms)

    return objective


def _check_step(model, params, objective):
    gradients = reference.numeric_gradients(objective, params)
    plain = reference.numeric_gradients(_objective(0.0, None, *_DATA), params)
    moved = max(np.abs(g - p).max() for g, p in zip(gradients, plain))
    assert moved * LR > 1e-2, "the penalty barely moves the step"
    for got, p, g in zip(_params(model), params, gradients):
        np.testing.assert_allclose(got, p - LR * g, rtol=1e-4, atol=1e-5)


_DATA = _regression_data(np.random.default_rng(5))


@pytest.mark.parametrize("target", [None, 1.0], ids=["squared", "wgan-gp"])
def test_input_gradient_penalty_step_matches_finite_differences(target):
    x, y = _DATA
    model = _regressor()
    params = _params(model)
    keras_reg.input_gradient_penalty(model, weight=2.0, target=target)
    model.fit(x, y, batch_size=len(x), shuffle=False, verbose=0)
    _check_step(model, params, _objective(2.0, target, x, y))


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "jit"])
def test_integrated_noise_on_inputs_is_the_squared_error_penalty(jit_compile):
    """MSE, one output: (sigma^2 / 2) (2 / 1) mean ||grad_x f||^2, no sign noise."""
    if jit_compile and keras.backend.backend() == "torch":
        pytest.skip("jit_compile=True is torch.compile, refused on torch")
    x, y = _DATA
    model = _regressor()
    model.jit_compile = jit_compile
    params = _params(model)
    sigma = 1.2
    keras_reg.noise_training(model, None, stddev=sigma, integrated=True, seed=0)
    model.fit(x, y, batch_size=len(x), shuffle=False, verbose=0)
    _check_step(model, params, _objective(sigma**2, None, x, y))


def test_noisy_passes_average_to_the_expected_noisy_loss(rng):
    """A linear regressor: E (x + e) w = the clean loss + sigma^2 ||w||^2, exactly.

    A frozen noise draw (a seed that does not advance inside the step) would
    give one draw's loss at every step; the mean over 300 steps would miss.
    """
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(loss="mse", optimizer=keras.optimizers.SGD(0.0))
    W = keras.ops.convert_to_numpy(model.weights[0]).astype(np.float64)
    b = keras.ops.convert_to_numpy(model.weights[1]).astype(np.float64)
    x, y = _regression_data(rng, size=4)
    sigma, steps = 0.5, 300
    keras_reg.noise_training(model, None, stddev=sigma, seed=3)
    history = model.fit(
        np.tile(x, (steps, 1)), np.tile(y, (steps, 1)), batch_size=len(x),
        shuffle=False, verbose=0,
    ).history
    clean = np.mean((x @ W + b - y) ** 2)
    expected = clean + sigma**2 * np.sum(W**2)
    # Monte Carlo spread of one step's loss, then of the mean of `steps` of them.
    draws = np.random.default_rng(0).normal(0, sigma, size=(20000,) + x.shape)
    losses = np.mean(((x + draws) @ W + b - y) ** 2, axis=(1, 2))
    tolerance = 4 * losses.std() / np.sqrt(steps)
    assert abs(history["loss"][0] - expected) < tolerance


# ---- the embedding, softmax: the +-1 estimate is unbiased -----------------------
def test_integrated_noise_estimate_averages_to_the_fisher_trace(rng):
    E, W, b = models.initial_weights(rng)
    x, y, _ = models.batch(rng, size=4)
    model = models.build("functional")
    model.compile(
        loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.SGD(0.0)
    )
    models.set_weights(model, E, W, b)
    sigma, steps = 0.8, 300
    keras_reg.noise_training(model, "emb", stddev=sigma, integrated=True, seed=1)
    history = model.fit(
        np.tile(x, (steps, 1)), np.tile(y, steps), batch_size=len(x),
        shuffle=False, verbose=0,
    ).history

    # d log p_k / d e_ij = (W_k - sum_l p_l W_l) / L at each of the L positions.
    E, W, b = (a.astype(np.float64) for a in (E, W, b))
    length = x.shape[1]
    z = E[x].mean(axis=1) @ W + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    centred = W.T[None, :, :] - (p @ W.T)[:, None, :]  # (batch, classes, dim)
    exact = 0.5 * sigma**2 * np.mean(
        np.sum(p * np.sum(centred**2, axis=2), axis=1) / length
    )
    signs = np.random.default_rng(0).choice([-1.0, 1.0], size=(20000,) + p.shape)
    v = np.einsum("sbk,bkd->sbd", signs * np.sqrt(p), centred)
    estimates = 0.5 * sigma**2 * np.mean(np.sum(v**2, axis=2) / length, axis=1)
    assert np.mean(estimates) == pytest.approx(exact, rel=2e-2)  # the maths
    tolerance = 4 * estimates.std() / np.sqrt(steps)
    assert abs(history["noise_penalty"][0] - exact) < tolerance


def test_errors_name_the_fix(rng):
    model = models.build("functional")
    model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
    with pytest.raises(ValueError, match="Embedding-Token"):
        keras_reg.noise_training(model, None, stddev=0.1)
    with pytest.raises(ValueError, match="gradient_penalty"):
        keras_reg.input_gradient_penalty(model, weight=1.0)
    with pytest.raises(ValueError, match="stddev=0.1"):
        keras_reg.NoiseTraining("emb", stddev=0)
    with pytest.raises(ValueError, match="integrated=True or integrated=False"):
        keras_reg.NoiseTraining("emb", integrated="yes")
    hinge = models.build("functional")
    hinge.compile(loss="hinge", optimizer="sgd")
    with pytest.raises(ValueError, match="integrated=False"):
        keras_reg.noise_training(hinge, "emb", stddev=0.1, integrated=True)
    classifier = _regressor()
    keras_reg.input_gradient_penalty(classifier, weight=1.0, target=1.0)
    wide = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    wide.compile(loss="mse", optimizer="sgd")
    keras_reg.input_gradient_penalty(wide, weight=1.0, target=1.0)
    x, y = _regression_data(rng)
    with pytest.raises(ValueError, match="target=None"):
        wide.fit(x, np.concatenate([y, y], axis=1), verbose=0)
