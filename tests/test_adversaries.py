"""PGD, FreeLB and FreeFGM: closed-form steps, FGM equivalence, state, schedules."""

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras
from tests import adversaries_reference, fgm_reference, models

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")
JIT, LR, MODES = models.JIT, models.ADVERSARY_LR, models.MODES


def _trained(regularizer, rng, epochs=1, l2=0.0, style="functional", **kwargs):
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    model = models.compiled(style, l2=l2, **kwargs)
    models.set_weights(model, E, W, b)
    if regularizer is not None:
        keras_reg.install_regularizer(model, regularizer)
    models.fit_one_batch(model, x, y, w, epochs=epochs)
    return model, (E, W, b, x, y, w)


# ---- PGD ------------------------------------------------------------------


@pytest.mark.parametrize("l2", [0.0, 0.05], ids=["lookup", "in-place"])
@pytest.mark.parametrize("mode", MODES)
def test_pgd_one_step_is_fgm_exactly(mode, l2):
    results = []
    for regularizer in (
        keras_reg.FGM("emb", epsilon=0.7, add_clean_loss=True),
        keras_reg.PGD("emb", epsilon=0.7, alpha=0.7, steps=1),
    ):
        model, _ = _trained(regularizer, np.random.default_rng(0), l2=l2, **mode)
        results.append(models.get_weights(model))
    for fgm, pgd in zip(*results):
        np.testing.assert_array_equal(pgd, fgm)


@pytest.mark.parametrize(
    "steps, epsilon, alpha, l2, projected",
    [
        (2, 2.0, 0.4, 0.0, False),
        (3, 0.7, 0.5, 0.0, True),
        (3, 0.7, 0.5, 0.05, True),
    ],
    ids=["2-steps", "3-steps-projected", "3-steps-projected-in-place"],
)
@pytest.mark.parametrize("mode", MODES)
def test_pgd_step_matches_numpy(steps, epsilon, alpha, l2, projected, mode, rng):
    regularizer = keras_reg.PGD("emb", epsilon=epsilon, alpha=alpha, steps=steps)
    model, (E, W, b, x, y, w) = _trained(regularizer, rng, l2=l2, **mode)
    expected, active = adversaries_reference.pgd_sgd_step(
        E, W, b, x, y, LR, epsilon, alpha, steps, w, l2=l2
    )
    assert active == projected
    models.assert_weights(model, expected)


def test_pgd_without_clean_loss_over_two_steps(rng):
    regularizer = keras_reg.PGD("emb", 0.7, alpha=0.5, steps=3, add_clean_loss=False)
    model, (E, W, b, x, y, w) = _trained(regularizer, rng, epochs=2)
    for _ in range(2):
        (E, W, b), _ = adversaries_reference.pgd_sgd_step(
            E, W, b, x, y, LR, 0.7, 0.5, 3, w, add_clean=False
        )
    models.assert_weights(model, (E, W, b))


# ---- FreeLB ---------------------------------------------------------------


@pytest.mark.parametrize("style", ["functional", "subclassed"])
@pytest.mark.parametrize("mode", MODES)
def test_freelb_step_matches_numpy(style, mode, rng):
    regularizer = keras_reg.FreeLB("emb", epsilon=0.05, alpha=0.04, steps=3)
    model, (E, W, b, x, y, w) = _trained(regularizer, rng, style=style, **mode)
    expected, active = adversaries_reference.freelb_sgd_step(
        E, W, b, x, y, LR, 0.05, 0.04, 3, w
    )
    assert active  # the per-example projection acted
    models.assert_weights(model, expected)


def test_freelb_one_pass_is_plain_training(rng):
    model, (E, W, b, x, y, w) = _trained(keras_reg.FreeLB("emb", steps=1), rng)
    models.assert_weights(model, fgm_reference.plain_sgd_step(E, W, b, x, y, LR, w))


def test_freelb_random_start_moves_the_step(rng):
    plain, _ = _trained(keras_reg.FreeLB("emb", steps=1), np.random.default_rng(0))
    started, _ = _trained(
        keras_reg.FreeLB("emb", steps=1, init_scale=1.0, seed=3),
        np.random.default_rng(0),
    )
    kernel = [models.get_weights(m)[1] for m in (plain, started)]
    assert np.abs(kernel[0] - kernel[1]).max() > 1e-4


# ---- FreeFGM --------------------------------------------------------------


@pytest.mark.parametrize("l2", [0.0, 0.05], ids=["lookup", "in-place"])
@pytest.mark.parametrize("mode", MODES)
def test_free_fgm_second_step_uses_the_first_steps_gradient(mode, l2, rng):
    model, (E, W, b, x, y, w) = _trained(
        keras_reg.FreeFGM("emb", epsilon=0.7), rng, epochs=2, l2=l2, **mode
    )
    expected = adversaries_reference.free_fgm_sgd_steps(
        E, W, b, x, y, LR, 0.7, steps=2, w=w, l2=l2
    )
    models.assert_weights(model, expected)
    # ...and not plain training, nor FGM's own direction.
    plain = fgm_reference.plain_sgd_step(
        *fgm_reference.plain_sgd_step(E, W, b, x, y, LR, w, l2), x, y, LR, w, l2
    )
    assert np.abs(models.get_weights(model)[1] - plain[1]).max() > 1e-4


def test_free_fgm_first_step_is_plain_and_state_is_not_a_weight(rng, tmp_path):
    regularizer = keras_reg.FreeFGM("emb", epsilon=0.7)
    model, (E, W, b, x, y, w) = _trained(regularizer, rng)
    models.assert_weights(model, fgm_reference.plain_sgd_step(E, W, b, x, y, LR, w))
    plain = models.compiled()
    assert len(model.weights) == len(plain.weights)
    assert len(model.get_weights()) == len(plain.get_weights())
    path = str(tmp_path / "model.weights.h5")
    model.save_weights(path)
    plain.load_weights(path)
    for got, want in zip(models.get_weights(plain), models.get_weights(model)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("again", ["fit-again", "install-again"])
def test_free_fgm_state_outlives_fit_but_not_installation(again, rng):
    """fit resets metrics every epoch: the carried gradient stays; a new install
    starts from zero."""
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    model = models.compiled()
    models.set_weights(model, E, W, b)
    keras_reg.install_regularizer(model, keras_reg.FreeFGM("emb", epsilon=0.7))
    models.fit_one_batch(model, x, y, w)
    if again == "install-again":
        E, W, b = models.get_weights(model)
        keras_reg.remove_regularization(model)
        keras_reg.install_regularizer(model, keras_reg.FreeFGM("emb", epsilon=0.7))
        expected = fgm_reference.plain_sgd_step(E, W, b, x, y, LR, w)
    else:
        expected = adversaries_reference.free_fgm_sgd_steps(
            E, W, b, x, y, LR, 0.7, steps=2, w=w
        )
    models.fit_one_batch(model, x, y, w)
    models.assert_weights(model, expected)


# ---- schedules, start_epoch, the one-line form -----------------------------


def test_scheduled_epsilon_ramps_up_per_step(rng):
    ramp = keras.optimizers.schedules.PolynomialDecay(
        0.2, decay_steps=1, end_learning_rate=0.9
    )
    model, (E, W, b, x, y, w) = _trained(keras_reg.FGM("emb", ramp), rng, epochs=2)
    for epsilon in (0.2, 0.9):
        E, W, b = fgm_reference.fgm_sgd_step(E, W, b, x, y, LR, epsilon, w)
    models.assert_weights(model, (E, W, b))


@pytest.mark.parametrize("cls", [keras_reg.FGM, keras_reg.PGD, keras_reg.FreeLB])
def test_scheduled_config_round_trip(cls):
    ramp = keras.optimizers.schedules.PolynomialDecay(0.0, 100, end_learning_rate=1.0)
    regularizer = cls("emb", epsilon=ramp)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(regularizer)
    )
    assert type(restored) is cls
    assert restored.get_config() == regularizer.get_config()
    assert float(restored.epsilon(100)) == pytest.approx(1.0)


def test_scope_starts_at_start_epoch(rng):
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    model = models.compiled()
    models.set_weights(model, E, W, b)
    scope = keras_reg.callbacks.RegularizationScope(
        keras_reg.FGM("emb", 0.7), start_epoch=1
    )
    history = model.fit(
        x,
        y,
        sample_weight=w,
        batch_size=len(x),
        epochs=3,
        shuffle=False,
        verbose=0,
        callbacks=[scope],
    ).history
    E, W, b = fgm_reference.plain_sgd_step(E, W, b, x, y, LR, w)
    for _ in range(2):
        E, W, b = fgm_reference.fgm_sgd_step(E, W, b, x, y, LR, 0.7, w)
    models.assert_weights(model, (E, W, b))
    assert len(history["adversarial_loss"]) == 2
    assert keras_reg.installed_regularizer(model) is None


def test_one_line_form_builds_each_method():
    for method, cls in [
        ("fgm", keras_reg.FGM),
        ("pgd", keras_reg.PGD),
        ("freelb", keras_reg.FreeLB),
        ("free_fgm", keras_reg.FreeFGM),
    ]:
        model = models.compiled()
        keras_reg.adversarial_training(model, "emb", epsilon=0.5, method=method)
        assert type(keras_reg.installed_regularizer(model)) is cls
    model = models.compiled()
    keras_reg.adversarial_training(model, "emb", method="pgd", alpha=0.1, steps=2)
    assert keras_reg.installed_regularizer(model).get_config()["steps"] == 2


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda m: keras_reg.adversarial_training(m, "emb", method="PGD3"),
            r"`method` must be one of 'fgm', 'pgd'.*received method='PGD3'",
        ),
        (
            lambda m: keras_reg.adversarial_training(m, "emb", method="fgm", steps=3),
            r"method='fgm'\) does not take `steps`.*add_clean_loss",
        ),
        (
            lambda m: keras_reg.PGD("emb", steps=0),
            r"`steps` must be an integer >= 1, received steps=0",
        ),
        (
            lambda m: keras_reg.PGD("emb", alpha=-1),
            r"`alpha` must be a positive number, received alpha=-1, or a schedule",
        ),
        (
            lambda m: keras_reg.FreeLB("emb", epsilon="big"),
            r"received epsilon='big'.*PolynomialDecay",
        ),
        (
            lambda m: keras_reg.FreeLB("emb", init_scale=-0.1),
            r"`init_scale` must be a number >= 0",
        ),
        (
            lambda m: keras_reg.callbacks.RegularizationScope(
                keras_reg.FGM("emb"), start_epoch=-1
            ),
            r"`start_epoch` must be an integer >= 0, received start_epoch=-1",
        ),
    ],
    ids=["method", "option", "steps", "alpha", "epsilon", "init", "start"],
)
def test_errors_name_the_value_and_the_fix(call, message):
    with pytest.raises(ValueError, match=message):
        call(models.compiled())
