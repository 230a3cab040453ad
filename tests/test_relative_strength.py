"""Relative strengths (`keras_reg.relative`): radii that scale with what they perturb.

Closed forms: FGM with ``epsilon=relative(r)`` is the NumPy FGM step with
``epsilon = r * ||E_S||_F`` (E_S the rows of the batch's tokens, each once).
Every other method: one step with ``relative(r)`` equals one step with the
absolute value ``r x`` the scale its docstring names, computed here in NumPy.
"""

import pickle

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras
from tests import adversaries_reference, fgm_reference, models

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")
JIT_BACKENDS = pytest.mark.backends(
    "tensorflow", "jax", reason="jit_compile=True means torch.compile on torch"
)
LR, RATIO = 0.5, 0.3


def _sparse_batch(rng, size=6):
    """A batch using only the even token ids (the odd rows are never touched)."""
    x, y, w = models.batch(rng, size)
    return (x % 5) * 2, y, w


def touched_norm(E, x):
    """||E_S||_F over the distinct ids of ``x``."""
    return float(np.linalg.norm(E[np.unique(x)]))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"add_clean_loss": True},
        {"l2": 0.05},  # a dense gradient: the untouched rows' is 2 l2 E, not zero
        pytest.param({"jit_compile": True}, marks=JIT_BACKENDS),
        {"run_eagerly": True},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "default",
)
def test_fgm_relative_matches_numpy(options, rng):
    l2 = options.get("l2", 0.0)
    add_clean = options.get("add_clean_loss", False)
    compile_kwargs = {
        k: v for k, v in options.items() if k in ("jit_compile", "run_eagerly")
    }
    E, W, b = models.initial_weights(rng)
    x, y, w = _sparse_batch(rng)
    model = models.compiled("functional", l2=l2, **compile_kwargs)
    models.set_weights(model, E, W, b)
    keras_reg.fgm(
        model, "emb", epsilon=keras_reg.relative(RATIO), add_clean_loss=add_clean
    )
    models.fit_one_batch(model, x, y, w)
    # With an L2 term every row has a gradient: every row moves and counts.
    scale = float(np.linalg.norm(E)) if l2 else touched_norm(E, x)
    expected = fgm_reference.fgm_sgd_step(
        E, W, b, x, y, LR, RATIO * scale, w, l2=l2, add_clean=add_clean
    )
    models.assert_weights(model, expected)


def test_fgm_relative_perturbation_norm_is_ratio_times_rows_norm(rng):
    """delta = r ||E_S|| g / ||g||: its norm is r ||E_S||, and it lives on S."""
    E, W, b = models.initial_weights(rng)
    x, y, w = _sparse_batch(rng)
    _, g, _, _ = fgm_reference.loss_and_gradients(E, W, b, x, y, w)
    delta = RATIO * touched_norm(E, x) * g / np.linalg.norm(g)
    touched = np.unique(x)
    np.testing.assert_allclose(
        np.linalg.norm(delta), RATIO * np.linalg.norm(E[touched]), rtol=1e-12
    )
    assert not np.delete(delta, touched, axis=0).any()
    # The trained step is the one of this delta (the closed form above).
    model = models.compiled("functional")
    models.set_weights(model, E, W, b)
    keras_reg.fgm(model, "emb", epsilon=keras_reg.relative(RATIO))
    models.fit_one_batch(model, x, y, w)
    _, dE, dW, db = fgm_reference.loss_and_gradients(E + delta, W, b, x, y, w)
    models.assert_weights(model, (E - LR * dE, W - LR * dW, b - LR * db))


def _same_step(make, relative_kwargs, absolute_kwargs, build, data, epochs=1):
    """Fits two copies of one model: with the relative and the absolute values."""
    results = []
    for kwargs in (relative_kwargs, absolute_kwargs):
        keras.utils.set_random_seed(7)
        model = build()
        make(model, **kwargs)
        x, y, w = data
        model.fit(x, y, sample_weight=w, batch_size=len(x), epochs=epochs,
                  shuffle=False, verbose=0)
        results.append([models.numpy(v) for v in model.trainable_weights])
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def _bag(rng):
    E, W, b = models.initial_weights(rng)

    def build():
        model = models.compiled("functional")
        models.set_weights(model, E, W, b)
        return model

    return E, build


def test_pgd_relative_epsilon_and_alpha(rng):
    E, build = _bag(rng)
    data = _sparse_batch(rng)
    scale = touched_norm(E, data[0])
    _same_step(
        keras_reg.pgd,
        dict(embedding_name="emb", epsilon=keras_reg.relative(RATIO),
             alpha=keras_reg.relative(0.2), steps=3),
        dict(embedding_name="emb", epsilon=RATIO * scale, alpha=0.2 * scale, steps=3),
        build,
        data,
    )


def test_free_fgm_relative_uses_the_rows_of_its_gradient(rng):
    E, build = _bag(rng)
    data = _sparse_batch(rng)
    # Step 2 is perturbed by the direction of step 1, scaled at step 1's E.
    scale = touched_norm(E, data[0])
    _same_step(
        keras_reg.free_fgm,
        dict(embedding_name="emb", epsilon=keras_reg.relative(RATIO)),
        dict(embedding_name="emb", epsilon=RATIO * scale),
        build,
        data,
        epochs=2,
    )


def test_freelb_relative_bound_is_each_example_norm(rng):
    """Each example's bound and ascent step scale with its embedded sequence."""
    E, W, b = models.initial_weights(rng)
    x, y, w = _sparse_batch(rng)
    model = models.compiled("functional")
    models.set_weights(model, E, W, b)
    keras_reg.freelb(model, "emb", epsilon=keras_reg.relative(RATIO),
                     alpha=keras_reg.relative(0.2), steps=3)
    models.fit_one_batch(model, x, y, w)
    size = np.sqrt(np.square(E[x]).sum(axis=(1, 2)))[:, None, None]
    expected, active = adversaries_reference.freelb_sgd_step(
        E, W, b, x, y, LR, RATIO * size, 0.2 * size, 3, w
    )
    assert active  # the per-example projection took part
    models.assert_weights(model, expected)


def _float_model(rng):
    weights = [a.copy() for a in _float_weights(rng)]

    def build():
        model = models.float_inputs()
        model.compile(loss="sparse_categorical_crossentropy",
                      optimizer=keras.optimizers.SGD(LR))
        model.set_weights(weights)
        return model

    return build


def _float_weights(rng):
    model = models.float_inputs()
    return [rng.normal(size=v.shape).astype("float32") for v in model.weights]


@pytest.mark.parametrize("norm", ["batch", "example"])
def test_vat_relative_on_inputs(norm, rng):
    build = _float_model(rng)
    x, y, w = models.float_batch(rng, size=1 if norm == "example" else 6)
    scale = float(np.linalg.norm(x))
    _same_step(
        keras_reg.virtual_adversarial_training,
        dict(epsilon=keras_reg.relative(RATIO), xi=1.0, norm=norm, seed=3),
        dict(epsilon=RATIO * scale, xi=1.0, norm=norm, seed=3),
        build,
        (x, y, w),
    )


@pytest.mark.parametrize("perturb", ["matrix", "output"])
def test_vat_relative_on_an_embedding(perturb, rng):
    E, build = _bag(rng)
    x, y, w = _sparse_batch(rng)
    # The matrix site: the rows of the batch's tokens, each once; the output
    # site (norm="batch"): the whole embedded sequence.
    scale = touched_norm(E, x) if perturb == "matrix" else float(np.linalg.norm(E[x]))
    _same_step(
        keras_reg.virtual_adversarial_training,
        dict(embedding_name="emb", epsilon=keras_reg.relative(RATIO),
             perturb=perturb, seed=3),
        dict(embedding_name="emb", epsilon=RATIO * scale, perturb=perturb, seed=3),
        build,
        (x, y, w),
    )


@pytest.mark.parametrize("integrated", [False, True])
def test_noise_relative_stddev_is_ratio_times_rms(integrated, rng):
    build = _float_model(rng)
    x, y, w = models.float_batch(rng)
    rms = float(np.sqrt(np.mean(np.square(x))))
    _same_step(
        keras_reg.noise_training,
        dict(stddev=keras_reg.relative(RATIO), integrated=integrated, seed=5),
        dict(stddev=RATIO * rms, integrated=integrated, seed=5),
        build,
        (x, y, w),
    )


@pytest.mark.parametrize("integrated", [False, True])
def test_noise_relative_on_an_embedding(integrated, rng):
    E, build = _bag(rng)
    x, y, w = _sparse_batch(rng)
    rms = float(np.sqrt(np.mean(np.square(E[x]))))
    _same_step(
        keras_reg.noise_training,
        dict(embedding_name="emb", stddev=keras_reg.relative(RATIO),
             integrated=integrated, seed=5),
        dict(embedding_name="emb", stddev=RATIO * rms, integrated=integrated, seed=5),
        build,
        (x, y, w),
    )


def test_scheduled_ratio(rng):
    """relative(schedule): the ratio of the step times the scale."""
    E, W, b = models.initial_weights(rng)
    x, y, w = _sparse_batch(rng)
    ramp = keras.optimizers.schedules.PolynomialDecay(0.0, 2, end_learning_rate=0.4)
    model = models.compiled("functional")
    models.set_weights(model, E, W, b)
    keras_reg.fgm(model, "emb", epsilon=keras_reg.relative(ramp))
    models.fit_one_batch(model, x, y, w, epochs=2)
    expected = (E, W, b)
    for ratio in (0.0, 0.2):
        scale = touched_norm(expected[0], x)
        expected = fgm_reference.fgm_sgd_step(*expected, x, y, LR, ratio * scale, w)
    models.assert_weights(model, expected)


# ---- the object: configuration, pickling, refusals ---------------------------


def test_config_round_trip_and_pickling():
    ramp = keras.optimizers.schedules.PolynomialDecay(0.0, 10, end_learning_rate=0.1)
    for value in (0.1, ramp):
        fgm = keras_reg.FGM("emb", epsilon=keras_reg.relative(value))
        config = fgm.get_config()
        again = keras_reg.FGM.from_config(config)
        assert isinstance(again.epsilon, keras_reg.Relative)
        assert again.get_config() == config
        copied = pickle.loads(pickle.dumps(fgm))
        assert copied.get_config() == config
    strength = keras_reg.relative(0.1)
    assert repr(strength) == "relative(0.1)"
    assert keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(strength)
    ) == strength
    pgd = keras_reg.PGD("emb", epsilon=keras_reg.relative(0.1),
                        alpha=keras_reg.relative(0.05))
    assert keras_reg.PGD.from_config(pgd.get_config()).alpha == keras_reg.relative(0.05)


@pytest.mark.parametrize("value", [0, -0.1, float("nan"), float("inf"), "0.1", None])
def test_bad_ratio_is_refused_naming_it(value):
    with pytest.raises((ValueError, TypeError), match="relative"):
        keras_reg.relative(value)


def test_nested_relative_is_refused():
    with pytest.raises(TypeError, match=r"relative\(0.1\)"):
        keras_reg.relative(keras_reg.relative(0.1))


def test_strength_without_a_scale_refuses_relative():
    with pytest.raises(TypeError, match="rho"):
        keras_reg.SAM(rho=keras_reg.relative(0.1))
    with pytest.raises(TypeError, match="weight"):
        keras_reg.VAT(weight=keras_reg.relative(0.1))


def test_schedule_returning_negative_ratio_is_refused():
    with pytest.raises(ValueError, match="relative"):
        keras_reg.relative(lambda step: -1.0)
