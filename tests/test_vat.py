"""VAT: power iteration on a quadratic, one-step closed forms, set-ups, errors."""

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras
from keras_reg.training.adversarial import vat as virtual_adversarial
from tests import fixed_noise as fixed_noise_module
from tests import models, vat_reference

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")
ops = keras.ops
LR = 0.5


@pytest.fixture
def fixed_noise(monkeypatch):
    fixed_noise_module.install(monkeypatch)


def test_power_iteration_finds_top_hessian_eigenvector():
    """On f(d) = d'Hd/2 the gradient is Hd: iterating must reach H's top eigenvector."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    H = a @ a.T
    top = np.linalg.eigh(H)[1][:, -1]
    d = ops.convert_to_tensor(rng.normal(size=(6,)).astype("float32"))
    Hk = ops.convert_to_tensor(H.astype("float32"))
    for _ in range(200):
        d = ops.matmul(Hk, virtual_adversarial.normalize(d, "batch"))
    direction = ops.convert_to_numpy(virtual_adversarial.normalize(d, "batch"))
    assert abs(float(direction @ top)) == pytest.approx(1.0, abs=1e-5)


def test_power_iteration_of_vat_on_a_linear_model(fixed_noise):
    """Many iterations and a small xi: r aligns with the Fisher's top eigenvector."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 4)).astype("float32")
    W = rng.normal(size=(4, 3)).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, "softmax")])
    model.layers[0].set_weights([W, np.zeros(3, "float32")])
    model.compile(optimizer=keras.optimizers.SGD(0.0), run_eagerly=True)
    keras_reg.virtual_adversarial_training(model, epsilon=1.0, xi=1e-3, iters=30)
    captured = {}
    original = virtual_adversarial.normalize

    def spy(d, norm, step=None):  # the last call normalises the final direction
        captured["d"] = d
        return original(d, norm, step)

    virtual_adversarial.normalize = spy
    try:
        model.fit(x, epochs=1, verbose=0)
    finally:
        virtual_adversarial.normalize = original
    p = vat_reference.probabilities([W, np.zeros(3)], x.astype(np.float64), "input")[0]
    fisher = W @ (np.diag(p) - np.outer(p, p)) @ W.T
    top = np.linalg.eigh(fisher)[1][:, -1]
    r = ops.convert_to_numpy(captured["d"])[0]
    cosine = abs(r @ top) / np.linalg.norm(r)
    assert cosine == pytest.approx(1.0, abs=1e-3)


def _dense_classifier():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, "softmax")])
    return model


@pytest.mark.parametrize(
    "site, norm, iters, entropy_weight",
    [
        ("input", "batch", 1, 0.0),
        ("input", "example", 2, 0.0),
        ("input", "example", 1, 0.7),  # VAT + EntMin
        ("output", "batch", 1, 0.0),
        ("output", "example", 1, 0.0),
        ("output", "batch", 1, 0.7),
        ("matrix", "batch", 1, 0.0),
    ],
)
def test_one_step_matches_finite_differences(
    site, norm, iters, entropy_weight, fixed_noise
):
    rng = np.random.default_rng(0)
    epsilon, xi, weight = 0.8, 0.5, 1.5
    if site == "input":
        x = rng.normal(size=(5, 4)).astype("float32")
        y = rng.integers(0, 3, size=5).astype("int32")
        w = rng.uniform(0.5, 2, size=5).astype("float32")
        W = rng.normal(size=(4, 3)).astype("float32")
        b = rng.normal(size=3).astype("float32") * 0.1
        params = [W, b]
        model = _dense_classifier()
        model.layers[0].set_weights(params)
        options = {}
    else:
        E, W, b = models.initial_weights(rng)
        x, y, w = models.batch(rng, size=5)
        params = [E, W, b]
        model = models.build("functional")
        models.set_weights(model, E, W, b)
        options = {"embedding_name": "emb", "perturb": site}
    model.compile(
        loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.SGD(LR)
    )
    keras_reg.virtual_adversarial_training(
        model,
        epsilon=epsilon,
        xi=xi,
        iters=iters,
        weight=weight,
        norm=norm,
        entropy_weight=entropy_weight,
        **options,
    )
    models.fit_one_batch(model, x, y, w)

    d0 = vat_reference.initial_direction(site, x, models.VOCAB, models.DIM)
    expected = vat_reference.vat_sgd_step(
        params,
        x,
        y,
        w,
        d0,
        site,
        LR,
        epsilon,
        xi,
        iters,
        weight,
        norm,
        entropy_weight=entropy_weight,
    )
    got = (
        [v.numpy() for v in model.layers[0].weights]
        if site == "input"
        else models.get_weights(model)
    )
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


def test_source_setup_unlabelled_only(fixed_noise):
    """Compiled without a loss and fitted on x alone: the VAT loss is the loss."""
    rng = np.random.default_rng(1)
    E, W, b = models.initial_weights(rng)
    x, _, _ = models.batch(rng, size=5)
    model = models.build("functional")
    models.set_weights(model, E, W, b)
    model.compile(optimizer=keras.optimizers.SGD(LR))
    keras_reg.virtual_adversarial_training(model, "emb", epsilon=0.8, xi=0.5)
    model.fit(x, batch_size=len(x), shuffle=False, verbose=0)
    d0 = vat_reference.initial_direction("matrix", x, models.VOCAB, models.DIM)
    expected = vat_reference.vat_sgd_step(
        [E, W, b],
        x,
        None,
        None,
        d0,
        "matrix",
        LR,
        0.8,
        0.5,
        1,
        1.0,
        "batch",
        supervised=False,
    )
    for g, e in zip(models.get_weights(model), expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


def _jit_options():
    """``jit_compile`` values to test: torch.compile is not supported."""
    if keras.backend.backend() == "torch":
        return [False]
    return [False, True]


def _compiled_with_dropout(jit_compile):
    model = models.build("functional", dropout=0.2)
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer="adam",
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    return model


@pytest.mark.parametrize("perturb", ["output", "matrix"])
@pytest.mark.parametrize(
    "jit_compile", _jit_options(), ids=lambda j: "xla" if j else "graph"
)
def test_unlabelled_arrays_train(perturb, jit_compile):
    rng = np.random.default_rng(2)
    x, y, _ = models.batch(rng, size=16)
    x_u = rng.integers(0, models.VOCAB, size=(40, models.LENGTH)).astype("int32")
    model = _compiled_with_dropout(jit_compile)
    keras_reg.virtual_adversarial_training(
        model, "emb", unlabeled=x_u, unlabeled_batch_size=12, perturb=perturb
    )
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert set(history.history) == {"loss", "accuracy", "vat_loss"}


@pytest.mark.backends("tensorflow", reason="tf.data datasets are TensorFlow-only")
@pytest.mark.parametrize("perturb", ["output", "matrix"])
@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_unlabelled_dataset_trains_on_tensorflow(perturb, jit_compile):
    import tensorflow as tf

    rng = np.random.default_rng(2)
    x, y, _ = models.batch(rng, size=16)
    x_u = rng.integers(0, models.VOCAB, size=(40, models.LENGTH)).astype("int32")
    dataset = tf.data.Dataset.from_tensor_slices(x_u).batch(8)
    model = _compiled_with_dropout(jit_compile)
    if jit_compile:
        with pytest.raises(ValueError, match="cannot be read inside an XLA"):
            keras_reg.virtual_adversarial_training(
                model, "emb", unlabeled=dataset, perturb=perturb
            )
        return
    keras_reg.virtual_adversarial_training(
        model, "emb", unlabeled=dataset, perturb=perturb
    )
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert set(history.history) == {"loss", "accuracy", "vat_loss"}


@pytest.mark.backends("jax", "torch", reason="the error raised outside TensorFlow")
def test_unlabelled_dataset_is_refused_outside_tensorflow():
    tf = pytest.importorskip("tensorflow")
    dataset = tf.data.Dataset.from_tensor_slices(np.zeros((4, models.LENGTH))).batch(2)
    model = models.build("functional")
    model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
    with pytest.raises(ValueError, match="only be read inside a TensorFlow.*arrays"):
        keras_reg.virtual_adversarial_training(model, "emb", unlabeled=dataset)
    assert keras_reg.installed_regularizer(model) is None


@pytest.mark.parametrize(
    "options",
    [
        {"perturb": "output"},  # d ~ N(0, I) must change every step
        {"perturb": "matrix", "unlabeled": "arrays"},  # and the unlabelled draw
    ],
    ids=["noise", "unlabelled"],
)
def test_random_draws_change_every_step(options):
    """Same weights (lr 0) and batch every step: only VAT's draws vary the loss.

    On JAX the regulariser's seed generators are not part of the step's state;
    frozen draws would repeat one loss.
    """
    rng = np.random.default_rng(5)
    x, _, _ = models.batch(rng, size=4)
    if options.get("unlabeled") == "arrays":
        x_u = rng.integers(0, models.VOCAB, size=(40, models.LENGTH)).astype("int32")
        options = dict(options, unlabeled=x_u, unlabeled_batch_size=4)
    model = models.build("functional")
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    variables = len(model.variables)
    keras_reg.virtual_adversarial_training(model, "emb", xi=1e-3, seed=3, **options)
    history = model.fit(x, batch_size=len(x), epochs=4, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert len(set(np.round(losses, 7))) == 4, losses
    assert len(model.variables) == variables


def test_vat_never_writes_the_weights():
    rng = np.random.default_rng(4)
    x, y, _ = models.batch(rng, size=8)
    model = models.build("functional")
    model.compile(
        loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.SGD(0.0)
    )
    before = models.get_weights(model)
    keras_reg.virtual_adversarial_training(model, "emb", epsilon=5.0)
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    for a, b in zip(models.get_weights(model), before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"iters": 0}, "`iters` must be an integer >= 1, received iters=0"),
        ({"xi": -1}, "`xi` must be a positive number"),
        ({"perturb": "rows"}, "`perturb` must be one of 'matrix', 'output'"),
        ({"norm": "example"}, "norm='example' is not defined for perturb='matrix'"),
        ({"unlabeled": np.zeros((0, 5))}, "at least one example"),
        ({"unlabeled": [np.zeros((3, 5)), np.zeros((4, 5))]}, r"lengths \[3, 4\]"),
        ({"unlabeled_batch_size": 0}, "`unlabeled_batch_size` must be an integer >= 1"),
        ({"weigth": 1.0}, "unknown option 'weigth'.*did you mean 'weight'"),
        ({"entropy_weight": -0.5}, "`entropy_weight` must be a number >= 0"),
    ],
)
def test_errors_name_the_value(options, message):
    model = models.build("functional")
    model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
    with pytest.raises(ValueError, match=message):
        keras_reg.virtual_adversarial_training(model, "emb", **options)
    assert keras_reg.installed_regularizer(model) is None


def test_default_norm_follows_the_paper_for_inputs_and_the_source_for_embeddings():
    assert keras_reg.VAT().norm == "example"
    assert keras_reg.VAT("Embedding-Token").norm == "batch"
    assert keras_reg.VAT(norm="batch").norm == "batch"


def test_vat_config_round_trip():
    vat = keras_reg.VAT(
        "Embedding-Token",
        epsilon=2.0,
        perturb="output",
        norm="example",
        seed=3,
        entropy_weight=0.5,
    )
    clone = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(vat)
    )
    assert isinstance(clone, keras_reg.VAT)
    assert clone.get_config() == vat.get_config()
