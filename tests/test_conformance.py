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
from tests import fixed_noise, models, replica_check, sharded_embedding_check

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
    "gp-occurrence": lambda: keras_reg.GradientPenalty("emb", weight=1.0),
    "gp-row": lambda: keras_reg.GradientPenalty("emb", weight=1.0, per="row"),
    "parameter-gp": lambda: keras_reg.ParameterGradientPenalty(0.1),
    "noise": lambda: keras_reg.NoiseTraining("emb", stddev=0.1, seed=2),
    "noise-integrated": lambda: keras_reg.NoiseTraining(
        "emb", stddev=0.1, integrated=True, seed=2
    ),
    "sam": lambda: keras_reg.SAM(rho=0.5),
    "asam": lambda: keras_reg.SAM(adaptive=True),
    "awp": lambda: keras_reg.AWP(gamma=0.1, update_batch_norm=True),
    "rdrop": lambda: keras_reg.RDrop(weight=4.0),
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
    "sam",
    "awp",
    "rdrop",
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


# ---- several devices: 2 replicas train like one device ---------------------------
# One subprocess per backend (the devices must be set before the framework
# starts) trains every case of tests/replica_check.py -- each regulariser of
# REGULARIZERS plus flooding and loss balancing -- for 3 SGD steps on one
# device and on 2, on the same global batches of 8.
REPLICA_MODES = {"tensorflow": "mirrored", "jax": "data-parallel"}
REPLICA_CASES = sorted(set(NAMES) | set(replica_check.EXTRA_CASES))
REPLICA_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def replica_results():
    results, output = replica_check.run(REPLICA_MODES[keras.backend.backend()])
    assert results is not None, output
    return results


def _assert_replicas_agree(results, name):
    assert name in results, f"{name!r} did not run: {sorted(results)}"
    difference = results[name]
    assert isinstance(difference, float), difference  # else the error raised
    assert difference < REPLICA_TOLERANCE, (name, difference)


@pytest.mark.backends("tensorflow", "jax")
@pytest.mark.parametrize("name", REPLICA_CASES)
def test_two_replicas_train_like_one_device(name, replica_results):
    """TF: MirroredStrategy on 2 logical CPUs; JAX: DataParallel on 2 CPU devices."""
    _assert_replicas_agree(replica_results, name)


# Across processes: FGM, VAT and every gradient penalty (the list), and
# flooding. They exercise each mechanism of the Step API (the all-reduced loss
# gradient, the gathered sparse penalty gradient, the all-reduced weight
# gradients, the gathered VAT slots and the global per-example norm,
# flooding's global loss); the other regularisers make the same replica-context
# calls and are checked by MirroredStrategy above. Two workers cost about a
# minute of CPU each.
MULTIWORKER_CASES = [
    "plain",
    "fgm",
    "gp-occurrence",
    "gp-row",
    "parameter-gp",
    "noise-integrated",
    "vat-matrix",
    "vat-output",
    "flooding",
]


@pytest.mark.backends("tensorflow")
def test_two_workers_train_like_one_device():
    """MultiWorkerMirroredStrategy: 2 worker processes on 127.0.0.1."""
    results, outputs = replica_check.run_multiworker(MULTIWORKER_CASES, timeout=540)
    for worker, output in zip(results, outputs):
        assert worker is not None, output
    assert results[0] == results[1]  # both workers hold the same weights
    for name in MULTIWORKER_CASES:
        _assert_replicas_agree(results[0], name)


@pytest.mark.backends("jax")
def test_fgm_on_an_embedding_sharded_over_two_devices():
    """ModelParallel: the matrix's rows split over 2 devices; FGM's direction too."""
    result, output = sharded_embedding_check.run()
    assert result is not None, output
    assert result["difference"] < REPLICA_TOLERANCE  # equals the unsharded run
    vocabulary, dim = result["matrix_shape"]
    assert result["matrix_piece"] == [vocabulary // 2, dim]
    assert result["unsharded_perturbation_piece"] == [[vocabulary, dim]]
    # Traced in the sharded step: no device holds the whole direction.
    assert result["perturbation_pieces"]
    for piece, devices in zip(
        result["perturbation_pieces"], result["perturbation_devices"]
    ):
        assert devices == 2
        assert piece == [vocabulary // 2, dim]


# ---- mixed precision ------------------------------------------------------------
# Mixed precision computes the forward pass in float16/bfloat16 (float32
# variables, float32 regulariser maths). After 3 SGD steps the weights must
# have moved like float32's, to within 8 units of rounding of the compute
# dtype relative to the move: float16 keeps 11 significant bits (2^-11 =
# 4.9e-4), bfloat16 8 (2^-8 = 3.9e-3). Measured (every regulariser, TF, JAX
# and torch): at most 1.9e-3 (float16) and 1.1e-2 (bfloat16) of the move,
# i.e. 3.9 and 2.7 units. A penalty left at the loss scale (256, or 256^2
# once squared) misses by orders of magnitude.
MIXED_TOLERANCE = {"mixed_float16": 8 * 2.0**-11, "mixed_bfloat16": 8 * 2.0**-8}


_FLOAT32 = {}


def _float32_three_steps(name):
    if name not in _FLOAT32:
        _FLOAT32[name] = _three_steps(name, "float32")[1]
    return _FLOAT32[name]


def _three_steps(name, policy, jit_compile=False):
    keras.config.set_dtype_policy(policy)
    try:
        model = models.build("functional")
    finally:
        keras.config.set_dtype_policy("float32")
    models.set_weights(model, *models.initial_weights(np.random.default_rng(1)))
    optimizer = keras.optimizers.SGD(0.5)
    if policy == "mixed_float16":
        # Keras's default first scale, 2^15, overflows float16 in the
        # backward pass of an adversarial pass whose probabilities get small:
        # that step is skipped and the scale halved, as designed (the next
        # test). Starting at 2^8 compares steps that all apply.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=256)
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer=optimizer,
        jit_compile=jit_compile,
    )
    keras_reg.install_regularizer(model, REGULARIZERS[name]())
    x, y, w = models.batch(np.random.default_rng(3), size=24)
    keras.utils.set_random_seed(5)
    model.fit(x, y, sample_weight=w, batch_size=8, shuffle=False, verbose=0)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 3
    return model, models.get_weights(model)


@pytest.mark.parametrize("policy", sorted(MIXED_TOLERANCE))
@pytest.mark.parametrize("name", NAMES)
def test_mixed_precision_moves_the_weights_like_float32(name, policy):
    start = models.initial_weights(np.random.default_rng(1))
    reference = _float32_three_steps(name)
    model, mixed = _three_steps(name, policy)
    assert model.layers[-1].compute_dtype == policy.split("_")[1]
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    for got, want, initial in zip(mixed, reference, start):
        move = np.linalg.norm(want - initial)
        assert move > 0
        assert np.linalg.norm(got - want) <= MIXED_TOLERANCE[policy] * move


@pytest.mark.parametrize("name", NAMES)
def test_mixed_float16_skips_a_non_finite_step(name, rng):
    """mixed_float16: a NaN batch is skipped and leaves no perturbation behind."""
    x, y, w = models.batch(rng)
    w[0] = np.nan
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = models.build("functional", l2=1e-3)  # the in-place path too
    finally:
        keras.config.set_dtype_policy("float32")
    model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
    keras_reg.install_regularizer(model, REGULARIZERS[name]())
    before = _snapshot(model)
    models.fit_one_batch(model, x, y, w)
    for variable, old in zip(model.weights, before):
        if "iteration" in variable.path or "scale" in variable.path:
            continue  # the loss scale halves; the step counter moves
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(variable), old, err_msg=variable.path
        )


# ---- XLA -------------------------------------------------------------------------
def _fixed_randint(shape, minval, maxval, *args, **kwargs):
    """Deterministic stand-in for keras.random.randint (XLA draws differ on TF)."""
    del args, kwargs
    flat = keras.ops.arange(fixed_noise._size(shape)) * 7 + 3
    span = keras.ops.cast(maxval - minval, flat.dtype)
    return keras.ops.reshape(flat % span + minval, shape)


@pytest.mark.backends("tensorflow", "jax")
@pytest.mark.parametrize("name", NAMES)
def test_jit_compile_trains_like_the_graph(name, monkeypatch):
    # TensorFlow's random ops draw other numbers under XLA: fixed draws.
    fixed_noise.install(monkeypatch)
    monkeypatch.setattr(keras.random, "randint", _fixed_randint)
    _, graph = _three_steps(name, "float32", jit_compile=False)
    _, jitted = _three_steps(name, "float32", jit_compile=True)
    for got, want in zip(jitted, graph):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
