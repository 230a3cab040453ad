"""Gradient penalties: full steps vs float64 finite differences of the penalised
loss (double backprop), mixed precision, errors."""

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras
from tests import gradient_penalty_reference as reference
from tests import models

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")
LR = 0.5
# Strengths at which the penalty's own gradient moves the step far beyond the
# tolerance (checked in each test): a detached penalty cannot pass.
CASES = {
    "occurrence": (lambda: keras_reg.GradientPenalty("emb", 40.0), 40.0),
    "row": (lambda: keras_reg.GradientPenalty("emb", 40.0, per="row"), 40.0),
    "parameter": (lambda: keras_reg.ParameterGradientPenalty(5.0), 5.0),
}


def _expected(kind, strength, E, W, b, x, y, w):
    expected = reference.sgd_step(kind, strength, E, W, b, x, y, w, LR)
    plain = reference.sgd_step("none", 0.0, E, W, b, x, y, w, LR)
    moved = max(np.abs(e - p).max() for e, p in zip(expected, plain))
    assert moved > 1e-2, f"the penalty barely moves the step ({moved})"
    return expected


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "jit"])
@pytest.mark.parametrize("kind", sorted(CASES))
def test_step_matches_finite_differences_of_the_penalised_loss(kind, jit_compile, rng):
    if jit_compile and keras.backend.backend() == "torch":
        pytest.skip("jit_compile=True is torch.compile, refused on torch")
    factory, strength = CASES[kind]
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    model = models.compiled(jit_compile=jit_compile)
    models.set_weights(model, E, W, b)
    keras_reg.install_regularizer(model, factory())
    history = model.fit(
        x, y, sample_weight=w, batch_size=len(x), shuffle=False, verbose=0
    ).history
    expected = _expected(kind, strength, E, W, b, x, y, w)
    for got, want in zip(models.get_weights(model), expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    penalty = reference.penalized_loss(kind, strength, E, W, b, x, y, w)
    clean = reference.penalized_loss("none", 0, E, W, b, x, y, w)
    assert history["gradient_penalty"][0] == pytest.approx(penalty - clean, rel=1e-4)
    assert history["loss"][0] == pytest.approx(penalty, rel=1e-4)


@pytest.mark.parametrize("kind", ["occurrence", "parameter"])
def test_mixed_precision_loss_scaling_unscales_before_squaring(kind, rng):
    factory, strength = CASES[kind]
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(LR), initial_scale=2.0**10
    )
    model = models.compiled(optimizer=optimizer)
    models.set_weights(model, E, W, b)
    keras_reg.install_regularizer(model, factory())
    models.fit_one_batch(model, x, y, w)
    expected = _expected(kind, strength, E, W, b, x, y, w)
    for got, want in zip(models.get_weights(model), expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_parameter_penalty_on_named_layers(rng):
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    model = models.compiled()
    models.set_weights(model, E, W, b)
    keras_reg.parameter_gradient_penalty(model, 5.0, layers=["out"])
    models.fit_one_batch(model, x, y, w)

    def objective(E_, W_, b_):
        gradients = reference.fgm_reference.loss_and_gradients
        loss, _, dW, db = gradients(E_, W_, b_, x, y, w)
        return loss + 5.0 * (np.sum(dW**2) + np.sum(db**2))

    gradients = reference.numeric_gradients(objective, (E, W, b))
    for got, p, g in zip(models.get_weights(model), (E, W, b), gradients):
        np.testing.assert_allclose(got, p - LR * g, rtol=1e-4, atol=1e-5)


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="'occurrence', 'row'; received per='token'"):
        keras_reg.GradientPenalty("emb", per="token")
    with pytest.raises(ValueError, match="weight=1.0"):
        keras_reg.GradientPenalty("emb", weight=-1)
    with pytest.raises(ValueError, match="layers=\\['dense'\\]"):
        keras_reg.ParameterGradientPenalty(0.1, layers="dense")
    model = models.compiled()
    with pytest.raises(ValueError, match="No layer named 'nope'"):
        keras_reg.parameter_gradient_penalty(model, 0.1, layers=["nope"])
    with pytest.raises(ValueError, match="No layer named 'embedding'"):
        keras_reg.gradient_penalty(model, "embedding")
