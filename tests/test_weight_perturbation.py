"""SAM / ASAM and AWP: one SGD step vs NumPy, BatchNorm statistics, warm-up, errors."""

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras
from tests import fgm_reference, models
from tests import weight_perturbation_reference as reference

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")
LR = 0.5
# Sizes at which the perturbation moves the step far beyond the tolerance
# (checked): a step taken at w instead of w + e cannot pass.
CASES = {
    "sam": (lambda: keras_reg.SAM(rho=0.5), {"rho": 0.5}),
    "asam": (
        lambda: keras_reg.SAM(rho=1.0, adaptive=True, eta=0.05),
        {"rho": 1.0, "adaptive": True, "eta": 0.05},
    ),
    "awp": (lambda: keras_reg.AWP(gamma=0.2), {"gamma": 0.2}),
}


def _perturbation(kind, options, E, W, b, x, y, w):
    if kind == "awp":
        return reference.awp_perturbation(E, W, b, x, y, w, **options)
    return reference.sam_perturbation(E, W, b, x, y, w, **options)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "jit"])
@pytest.mark.parametrize("kind", sorted(CASES))
def test_one_step_matches_numpy(kind, jit_compile, rng):
    if jit_compile and keras.backend.backend() == "torch":
        pytest.skip("jit_compile=True is torch.compile, refused on torch")
    factory, options = CASES[kind]
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    model = models.compiled(jit_compile=jit_compile)
    models.set_weights(model, E, W, b)
    keras_reg.install_regularizer(model, factory())
    history = model.fit(
        x, y, sample_weight=w, batch_size=len(x), shuffle=False, verbose=0
    ).history
    e = _perturbation(kind, options, E, W, b, x, y, w)
    expected = reference.perturbed_sgd_step(E, W, b, x, y, w, LR, e)
    plain = fgm_reference.plain_sgd_step(E, W, b, x, y, LR, w)
    moved = max(np.abs(a - p).max() for a, p in zip(expected, plain))
    assert moved > 1e-2, f"the perturbation barely moves the step ({moved})"
    for got, want in zip(models.get_weights(model), expected):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    assert history["sharpness"][0] == pytest.approx(
        reference.sharpness(E, W, b, x, y, w, e), rel=1e-4, abs=1e-6
    )


@pytest.mark.parametrize("style", ["sequential", "subclassed"])
def test_sam_in_other_model_styles(style, rng):
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    model = models.build(style)
    model.compile(
        loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.SGD(LR)
    )
    models.set_weights(model, E, W, b)
    assert keras_reg.sharpness_aware_minimization(model, rho=0.5) is model
    models.fit_one_batch(model, x, y, w)
    e = reference.sam_perturbation(E, W, b, x, y, w, rho=0.5)
    expected = reference.perturbed_sgd_step(E, W, b, x, y, w, LR, e)
    for got, want in zip(models.get_weights(model), expected):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def test_awp_on_named_layers_perturbs_only_their_kernels(rng):
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    model = models.compiled()
    models.set_weights(model, E, W, b)
    keras_reg.awp(model, gamma=0.2, layers=["out"])
    models.fit_one_batch(model, x, y, w)
    e = reference.awp_perturbation(E, W, b, x, y, w, gamma=0.2)
    e[0] = np.zeros(E.shape)
    expected = reference.perturbed_sgd_step(E, W, b, x, y, w, LR, e)
    for got, want in zip(models.get_weights(model), expected):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def _scope_with_deprecated_start_epoch():
    with pytest.warns(DeprecationWarning, match="start_epoch"):
        awp = keras_reg.AWP(gamma=0.2, start_epoch=np.int64(1))
    return keras_reg.callbacks.RegularizationScope(awp)


@pytest.mark.parametrize(
    "make_scope",
    [
        lambda: keras_reg.callbacks.RegularizationScope(
            keras_reg.AWP(gamma=0.2), start_epoch=1
        ),
        _scope_with_deprecated_start_epoch,
    ],
    ids=["scope-start-epoch", "awp-start-epoch"],
)
@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "jit"])
def test_awp_warm_up_starts_at_start_epoch_in_a_scope(make_scope, jit_compile, rng):
    if jit_compile and keras.backend.backend() == "torch":
        pytest.skip("jit_compile=True is torch.compile, refused on torch")
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    model = models.compiled(jit_compile=jit_compile)
    models.set_weights(model, E, W, b)
    models.fit_one_batch(model, x, y, w, epochs=2, callbacks=[make_scope()])
    # One plain epoch, then one AWP epoch; not two plain epochs.
    E1, W1, b1 = fgm_reference.plain_sgd_step(E, W, b, x, y, LR, w)
    e = reference.awp_perturbation(E1, W1, b1, x, y, w, gamma=0.2)
    expected = reference.perturbed_sgd_step(E1, W1, b1, x, y, w, LR, e)
    for got, want in zip(models.get_weights(model), expected):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    plain = fgm_reference.plain_sgd_step(E1, W1, b1, x, y, LR, w)
    assert not all(
        np.allclose(got, want, rtol=2e-5, atol=2e-6)
        for got, want in zip(models.get_weights(model), plain)
    )


def test_awp_warm_up_without_a_scope_says_how(rng):
    model = models.compiled()
    with pytest.warns(DeprecationWarning):
        keras_reg.install_regularizer(model, keras_reg.AWP(start_epoch=2))
    x, y, w = models.batch(rng)
    with pytest.raises(ValueError, match="RegularizationScope"):
        models.fit_one_batch(model, x, y, w)


def _batch_norm_model():
    inputs = keras.Input((3,))
    h = keras.layers.Dense(4, name="hidden")(inputs)
    h = keras.layers.BatchNormalization(momentum=0.5, name="bn")(h)
    outputs = keras.layers.Dense(2, activation="softmax", name="out")(h)
    model = keras.Model(inputs, outputs)
    model.compile(
        loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.SGD(0.1)
    )
    return model


def _statistics(model):
    return [
        keras.ops.convert_to_numpy(v)
        for v in model.get_layer("bn").non_trainable_weights
    ]


@pytest.mark.parametrize("update", [False, True])
def test_batch_norm_statistics_come_from_the_clean_pass_unless_asked(update, rng):
    x = rng.normal(size=(8, 3)).astype("float32")
    y = rng.integers(0, 2, size=(8,))
    results = []
    initial = None
    for regularizer in (None, keras_reg.SAM(rho=2.0, update_batch_norm=update)):
        model = _batch_norm_model()
        if initial is None:
            initial = model.get_weights()
        model.set_weights(initial)
        if regularizer is not None:
            keras_reg.install_regularizer(model, regularizer)
        model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
        results.append(_statistics(model))
    plain, sam = results
    for a, b in zip(plain, sam):
        if update:
            assert not np.allclose(a, b)
        else:
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["asam", "awp"])
def test_mixed_precision_step_is_close_to_float32(kind, rng):
    """Loss scaling: the gradients are unscaled before the norms are taken.

    (The default initial scale, 2**15, overflows float16 here: Keras then skips
    the first step, SAM perturbing nothing, as a plain step would.)
    """
    factory, options = CASES[kind]
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    keras.config.set_dtype_policy("mixed_float16")
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(LR), initial_scale=2.0**10
    )
    model = models.compiled(optimizer=optimizer)
    models.set_weights(model, E, W, b)
    keras_reg.install_regularizer(model, factory())
    models.fit_one_batch(model, x, y, w)
    e = _perturbation(kind, options, E, W, b, x, y, w)
    expected = reference.perturbed_sgd_step(E, W, b, x, y, w, LR, e)
    for got, want in zip(models.get_weights(model), expected):
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: keras_reg.SAM(rho=-1.0), "rho=-1.0"),
        (lambda: keras_reg.SAM(adaptive="yes"), "adaptive"),
        (lambda: keras_reg.SAM(eta=-0.1), "eta"),
        (lambda: keras_reg.AWP(gamma=0), "gamma=0"),
        (lambda: keras_reg.AWP(layers="out"), "layers=\\['dense'\\]"),
        (lambda: keras_reg.AWP(start_epoch=1.5), "start_epoch=1.5"),
        (lambda: keras_reg.AWP(update_batch_norm=1), "update_batch_norm"),
    ],
)
def test_bad_arguments_name_the_value_and_the_fix(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_unknown_layer_and_option_are_named():
    model = models.compiled()
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        keras_reg.awp(model, layers=["nope"])
    with pytest.raises(ValueError, match="did you mean 'rho'"):
        keras_reg.sharpness_aware_minimization(model, roh=0.1)


def test_asam_default_radius_is_the_papers():
    assert keras_reg.SAM().rho == 0.05
    assert keras_reg.SAM(adaptive=True).rho == 0.5
