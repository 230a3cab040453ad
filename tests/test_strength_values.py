"""Strengths at the edges: huge finite values, schedules that go wrong."""

import warnings

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras
from tests import models

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")
ops = keras.ops


def _fit(regularizer, rng, epochs=1, jit_compile=False):
    keras.utils.set_random_seed(7)
    model = models.build("functional")
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer=keras.optimizers.SGD(0.5),
        jit_compile=jit_compile and keras.backend.backend() != "torch",
    )
    models.set_weights(model, *models.initial_weights(np.random.default_rng(0)))
    if regularizer is not None:
        keras_reg.install_regularizer(model, regularizer)
    x, y, w = models.batch(np.random.default_rng(1))
    models.fit_one_batch(model, x, y, w, epochs=epochs)
    return models.get_weights(model)


def _distance(a, b):
    return max(np.abs(p - q).max() for p, q in zip(a, b))


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "jit"])
def test_a_huge_pgd_ascent_step_lands_on_the_ball_like_a_large_one(jit_compile, rng):
    def pgd(alpha):
        return keras_reg.PGD("emb", epsilon=1.0, alpha=alpha, steps=3)

    plain = _fit(None, rng, jit_compile=jit_compile)
    large = _fit(pgd(1e3), rng, jit_compile=jit_compile)
    huge = _fit(pgd(1e20), rng, jit_compile=jit_compile)
    assert np.isfinite(np.concatenate([h.ravel() for h in huge])).all()
    moved = _distance(large, plain)
    assert moved > 1e-3
    assert _distance(huge, large) < 1e-2 * moved


RADII = {
    "fgm": lambda value: keras_reg.FGM("emb", epsilon=value),
    "pgd": lambda value: keras_reg.PGD("emb", epsilon=value),
    "free_fgm": lambda value: keras_reg.FreeFGM("emb", epsilon=value),
    "freelb": lambda value: keras_reg.FreeLB("emb", epsilon=value),
    "sam": lambda value: keras_reg.SAM(rho=value),
}


@pytest.mark.parametrize("name", sorted(RADII))
def test_a_radius_whose_square_overflows_float32_is_refused(name):
    with pytest.raises(ValueError, match=r"its square must be a finite float32"):
        RADII[name](1e38)
    RADII[name](1e19)  # still squarable


SCHEDULED = {
    "fgm": lambda epsilon: keras_reg.FGM("emb", epsilon=epsilon),
    "pgd": lambda epsilon: keras_reg.PGD("emb", epsilon=epsilon, alpha=0.3),
    "free_fgm": lambda epsilon: keras_reg.FreeFGM("emb", epsilon=epsilon),
}


@pytest.mark.parametrize("name", sorted(SCHEDULED))
def test_a_schedule_class_is_refused_with_the_fix(name):
    schedule_class = keras.optimizers.schedules.PolynomialDecay
    with pytest.raises(TypeError, match="`epsilon` received the class PolynomialDecay"):
        SCHEDULED[name](schedule_class)


@pytest.mark.parametrize("name", sorted(SCHEDULED))
def test_a_callable_without_the_step_is_refused_with_the_fix(name):
    with pytest.raises(TypeError, match="taking the step count.*epsilon=lambda step"):
        SCHEDULED[name](lambda: 1.0)


@pytest.mark.parametrize("name", sorted(SCHEDULED))
def test_a_schedule_negative_at_the_first_step_is_refused(name):
    with pytest.raises(ValueError, match=r"epsilon\(0\)=-1.0 at step 0"):
        SCHEDULED[name](lambda step: -1.0 + 0.0 * step)


@pytest.mark.parametrize("later", [-0.5, float("nan")], ids=["negative", "nan"])
@pytest.mark.parametrize("name", sorted(SCHEDULED))
def test_a_schedule_going_negative_or_nan_later_perturbs_nothing(name, later, rng):
    def ramp(value):
        return lambda step: ops.where(step < 1, 1.0, value)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bad = _fit(SCHEDULED[name](ramp(later)), rng, epochs=3)
        told = _schedule_warnings(caught)
        zero = _fit(SCHEDULED[name](ramp(0.0)), rng, epochs=3)
    # Warned once, at the end of the first epoch, naming the value and step.
    assert len(told) == 1, told
    assert f"`epsilon` schedule returned {later!r} at step 1" in told[0]
    assert "used epsilon=0 instead" in told[0]
    assert len(_schedule_warnings(caught)) == 1  # a valid schedule: none
    assert np.isfinite(np.concatenate([b.ravel() for b in bad])).all()
    np.testing.assert_array_equal(np.concatenate([b.ravel() for b in bad]),
                                  np.concatenate([z.ravel() for z in zero]))


def _schedule_warnings(caught):
    return [str(w.message) for w in caught if "schedule returned" in str(w.message)]


def test_a_schedule_is_checked_from_the_step_it_was_installed_at(rng):
    model = models.build("functional")
    model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
    x, y, w = models.batch(np.random.default_rng(1))
    models.fit_one_batch(model, x, y, w, epochs=2)  # steps 0 and 1, plain
    keras_reg.install_regularizer(
        model, keras_reg.FGM("emb", epsilon=lambda step: 1.0 - ops.minimum(step, 1.0))
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        models.fit_one_batch(model, x, y, w, epochs=1)
    assert _schedule_warnings(caught) == []  # 0 at step 2: valid
    keras_reg.install_regularizer(
        model, keras_reg.FGM("emb", epsilon=lambda step: 3.0 - step)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        models.fit_one_batch(model, x, y, w, epochs=2)
    # Steps 3 and 4 ran with it: -0.0 is valid, -1.0 at step 4 is not.
    told = _schedule_warnings(caught)
    assert len(told) == 1 and "returned -1.0 at step 4" in told[0], told
