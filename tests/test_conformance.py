"""Checks every TrainingRegularizer passes, the way optax runs one suite over all
its transforms. A new regulariser adds one entry to REGULARIZERS (and keeps its
own closed-form tests in its own file).

Each check runs on the backend the runner selects (TensorFlow, JAX, PyTorch);
tests/tf_keras/ repeats the framework-level ones for tf_keras.
"""

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras
from tests import models

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")

_UNLABELED = np.random.default_rng(7).integers(0, models.VOCAB, (32, models.LENGTH))

REGULARIZERS = {
    "fgm": lambda: keras_reg.FGM("emb", epsilon=0.7),
    "fgm-clean": lambda: keras_reg.FGM("emb", epsilon=0.7, add_clean_loss=True),
    "pgd": lambda: keras_reg.PGD("emb", epsilon=0.7, alpha=0.5, steps=3),
    "freelb": lambda: keras_reg.FreeLB(
        "emb", epsilon=0.5, alpha=0.3, steps=2, init_scale=0.1, seed=1
    ),
    "free-fgm": lambda: keras_reg.FreeFGM("emb", epsilon=0.7),
    "vat-output": lambda: keras_reg.VAT(
        "emb", epsilon=0.5, xi=1.0, perturb="output", unlabeled=_UNLABELED, seed=1
    ),
    "vat-matrix": lambda: keras_reg.VAT("emb", epsilon=0.5, xi=1.0, seed=1),
    "gp-occurrence": lambda: keras_reg.GradientPenalty("emb", epsilon=1.0),
    "gp-row": lambda: keras_reg.GradientPenalty("emb", epsilon=1.0, per="row"),
    "parameter-gp": lambda: keras_reg.ParameterGradientPenalty(0.1),
    "noise": lambda: keras_reg.NoiseTraining("emb", stddev=0.1, seed=2),
    "noise-integrated": lambda: keras_reg.NoiseTraining(
        "emb", stddev=0.1, integrated=True, seed=2
    ),
    # InputGradientPenalty needs float inputs: tests/test_noise.py covers it.
}
NAMES = sorted(REGULARIZERS)
# Regularisers that perturb weights or activations in an extra pass.
PERTURBING = [
    "fgm",
    "fgm-clean",
    "free-fgm",
    "freelb",
    "noise",
    "pgd",
    "vat-matrix",
    "vat-output",
]


def _model(lr, jit_compile=False, l2=0.0):
    model = models.build("functional", l2=l2)
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer=keras.optimizers.SGD(lr),
        jit_compile=jit_compile,
    )
    return model


def _snapshot(model):
    return [np.array(keras.ops.convert_to_numpy(v)) for v in model.weights]


def _arguments(config):
    """A config without the flag saying that data was left out (never saved)."""
    return {k: v for k, v in config.items() if k != "unlabeled_omitted"}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.filterwarnings("ignore:.*unlabeled.*")
def test_config_round_trip(name):
    regularizer = REGULARIZERS[name]()
    config = regularizer.get_config()
    restored = type(regularizer).from_config(config)
    assert _arguments(restored.get_config()) == _arguments(config)
    serialized = keras.saving.serialize_keras_object(regularizer)
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is type(regularizer)
    assert _arguments(restored.get_config()) == _arguments(config)


@pytest.mark.parametrize("name", NAMES)
def test_install_replace_remove(name, rng):
    model = _model(0.1)
    regularizer = REGULARIZERS[name]()
    assert keras_reg.install_regularizer(model, regularizer) is model
    assert keras_reg.installed_regularizer(model) is regularizer
    other = REGULARIZERS[name]()
    with pytest.warns(UserWarning, match="Replacing"):
        keras_reg.install_regularizer(model, other)
    assert keras_reg.installed_regularizer(model) is other
    keras_reg.remove_regularization(model)
    assert keras_reg.installed_regularizer(model) is None
    assert not {"train_step", "compute_loss", "get_metrics_result"} & set(
        model.__dict__
    )
    x, y, w = models.batch(rng)
    assert set(model.fit(x, y, verbose=0).history) == {"loss"}


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "jit"])
@pytest.mark.parametrize("name", NAMES)
def test_learning_rate_zero_keeps_every_weight_bit_identical(name, jit_compile, rng):
    if jit_compile and keras.backend.backend() == "torch":
        pytest.skip("jit_compile=True is torch.compile, refused on torch")
    for l2 in (0.0, 1e-3):  # lookup path, then the in-place/substitution path
        model = _model(0.0, jit_compile=jit_compile, l2=l2)
        keras_reg.install_regularizer(model, REGULARIZERS[name]())
        before = _snapshot(model)
        trainable = {id(v) for v in model.trainable_weights}
        x, y, w = models.batch(rng, size=12)
        model.fit(x, y, sample_weight=w, batch_size=4, epochs=2, verbose=0)
        for variable, old in zip(model.weights, before):
            if id(variable) in trainable:
                new = keras.ops.convert_to_numpy(variable)
                np.testing.assert_array_equal(new, old, err_msg=variable.path)


@pytest.mark.parametrize("name", PERTURBING)
def test_nan_batch_poisons_no_more_than_plain_keras(name, rng):
    """No perturbation from a non-finite direction: plain Keras's NaN pattern.

    (A gradient penalty's second-order gradient mixes every example of the
    batch, so a NaN loss reaches every weight the batch touches; for it the
    guarantee is the next test's.)
    """
    x, y, w = models.batch(rng)
    w[0] = np.nan
    results = []
    for regularizer in (None, REGULARIZERS[name]()):
        model = _model(0.0)
        models.set_weights(model, *models.initial_weights(np.random.default_rng(1)))
        if regularizer is not None:
            keras_reg.install_regularizer(model, regularizer)
        models.fit_one_batch(model, x, y, w)
        results.append(models.get_weights(model))
    for plain, regularized in zip(*results):
        np.testing.assert_array_equal(np.isnan(regularized), np.isnan(plain))


@pytest.mark.parametrize("name", NAMES)
def test_nan_batch_is_skipped_by_a_loss_scale_optimizer(name, rng):
    x, y, w = models.batch(rng)
    w[0] = np.nan
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1))
    model = models.build("functional")
    model.compile(loss="sparse_categorical_crossentropy", optimizer=optimizer)
    keras_reg.install_regularizer(model, REGULARIZERS[name]())
    before = models.get_weights(model)
    models.fit_one_batch(model, x, y, w)
    for got, want in zip(models.get_weights(model), before):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", NAMES)
def test_logged_terms_appear_in_fit_and_not_in_evaluate(name, rng):
    model = _model(0.1)
    regularizer = REGULARIZERS[name]()
    keras_reg.install_regularizer(model, regularizer)
    x, y, w = models.batch(rng)
    history = model.fit(x, y, batch_size=len(x), epochs=2, verbose=0).history
    for term in regularizer.logged_terms():
        assert np.all(np.isfinite(history[term])), term
    assert set(model.evaluate(x, y, verbose=0, return_dict=True)) == {"loss"}


@pytest.mark.parametrize("name", NAMES)
def test_scope_leaves_the_model_as_it_found_it(name, rng):
    model = _model(0.1)
    scope = keras_reg.callbacks.RegularizationScope(REGULARIZERS[name]())
    x, y, w = models.batch(rng)
    history = model.fit(x, y, verbose=0, callbacks=[scope]).history
    assert set(REGULARIZERS[name]().logged_terms()) <= set(history)
    assert keras_reg.installed_regularizer(model) is None
    assert set(model.fit(x, y, verbose=0).history) == {"loss"}
