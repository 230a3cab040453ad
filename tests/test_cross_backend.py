"""The same numbers on TensorFlow, JAX and PyTorch.

Each backend runs this file in its own process (KERAS_BACKEND, see
scripts/run_tests.sh). Every case starts the same tiny model from the same
NumPy weights, trains three SGD steps on the same batch (dropout off, VAT's
noise injected by tests/fixed_noise.py) and compares the weights with a
float64 NumPy closed form (tests/fgm_reference.py, tests/vat_reference.py) to
1e-5 relative: each backend equal to the reference to 1e-5 makes the backends
equal to each other to 2e-5, without a golden file to regenerate.

The remaining tests pin down what a closed form cannot see: which dropout mask
the FGM gradient uses, and what happens to BatchNormalization statistics.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras
from keras_reg.training import TrainingRegularizer
from tests import fgm_reference, models, vat_reference
from tests import fixed_noise as fixed_noise_module

LR, EPSILON, STEPS = 0.5, 0.7, 3
RTOL = 1e-5


def assert_close(got, want):
    """Each tensor within 1e-5 of the reference: in norm, and elementwise.

    Elementwise, an absolute 1e-6 covers entries near zero (float32 rounding
    of the larger entries of the same tensor).
    """
    for g, w in zip(got, want):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        assert np.linalg.norm(g - w) <= RTOL * np.linalg.norm(w)
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=1e-6)


def _bag_model(l2=0.0):
    rng = np.random.default_rng(0)
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    model = models.compiled(l2=l2, lr=LR)
    models.set_weights(model, E, W, b)
    return model, (E, W, b), (x, y, w)


def test_plain_training():
    model, params, (x, y, w) = _bag_model()
    models.fit_one_batch(model, x, y, w, epochs=STEPS)
    for _ in range(STEPS):
        params = fgm_reference.plain_sgd_step(*params, x, y, LR, w)
    assert_close(models.get_weights(model), params)


@pytest.mark.parametrize(
    "l2, add_clean",
    [(0.0, False), (0.0, True), (0.05, False), (0.05, True)],
    # An embeddings regulariser reads E, so FGM perturbs E itself (in place on
    # TensorFlow, substituted on JAX and torch) instead of the lookup's output.
    ids=["lookup", "lookup-add-clean", "matrix", "matrix-add-clean"],
)
def test_fgm(l2, add_clean):
    model, params, (x, y, w) = _bag_model(l2=l2)
    keras_reg.adversarial_training(
        model, "emb", epsilon=EPSILON, add_clean_loss=add_clean
    )
    models.fit_one_batch(model, x, y, w, epochs=STEPS)
    for _ in range(STEPS):
        params = fgm_reference.fgm_sgd_step(
            *params, x, y, LR, EPSILON, w, l2=l2, add_clean=add_clean
        )
    assert_close(models.get_weights(model), params)


@pytest.mark.parametrize(
    "site, norm",
    [
        ("input", "batch"),
        ("input", "example"),
        ("output", "batch"),
        ("matrix", "batch"),
    ],
)
def test_vat(site, norm, monkeypatch):
    fixed_noise_module.install(monkeypatch)
    epsilon, xi, weight = 0.8, 0.5, 1.5
    if site == "input":
        rng = np.random.default_rng(0)
        x = rng.normal(size=(5, 4)).astype("float32")
        y = rng.integers(0, 3, size=5).astype("int32")
        w = rng.uniform(0.5, 2, size=5).astype("float32")
        params = [
            rng.normal(size=(4, 3)).astype("float32"),
            (rng.normal(size=3) * 0.1).astype("float32"),
        ]
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, "softmax")])
        model.layers[0].set_weights(params)
        model.compile(
            loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.SGD(LR)
        )
        options = {}
    else:
        model, params, (x, y, w) = _bag_model()
        options = {"embedding_name": "emb", "perturb": site}
    keras_reg.virtual_adversarial_training(
        model, epsilon=epsilon, xi=xi, weight=weight, norm=norm, **options
    )
    models.fit_one_batch(model, x, y, w, epochs=STEPS)
    d0 = vat_reference.initial_direction(site, x, models.VOCAB, models.DIM)
    for _ in range(STEPS):
        params = vat_reference.vat_sgd_step(
            params, x, y, w, d0, site, LR, epsilon, xi, 1, weight, norm
        )
    got = (
        [keras.ops.convert_to_numpy(v) for v in model.layers[0].weights]
        if site == "input"
        else models.get_weights(model)
    )
    assert_close(got, params)


class _CleanGradientProbe(TrainingRegularizer):
    """Adds <stop_gradient(g), E> with g = step.loss_gradient(E): dE doubles.

    SGD then moves E by exactly twice the plain step's move if, and only if,
    g is the gradient of the trainer's own clean forward pass (same dropout
    mask); W and b move as in the plain step.
    """

    def watched_variables(self, model):
        return [model.get_layer("emb").embeddings]

    def regularized_loss(self, step):
        matrix = step.model.get_layer("emb").embeddings
        g = keras.ops.convert_to_tensor(step.loss_gradient(matrix))  # TF: sparse
        g = keras.ops.stop_gradient(g)
        return step.loss + keras.ops.sum(g * matrix)


def test_clean_gradient_is_the_trainers_own_forward_pass():
    """With dropout on, the FGM direction comes from the trainer's dropout mask.

    JAX recomputes the clean pass, so it must start from the state before the
    trainer's forward pass; TF and torch read the recorded pass.
    """
    rng = np.random.default_rng(0)
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng, size=16)
    moved = []
    for probe in (False, True):
        keras.utils.set_random_seed(7)  # the same dropout seed in both models
        model = models.build("functional", dropout=0.5)
        model.compile(
            loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.SGD(LR)
        )
        models.set_weights(model, E, W, b)
        if probe:
            keras_reg.install_regularizer(model, _CleanGradientProbe())
        models.fit_one_batch(model, x, y, w)
        moved.append([a - b for a, b in zip(models.get_weights(model), (E, W, b))])
    plain, probed = moved
    assert np.abs(plain[0]).max() > 1e-3
    np.testing.assert_allclose(probed[0], 2 * plain[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(probed[1], plain[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("l2", [0.0, 1e-3], ids=["lookup", "matrix"])
def test_fgm_perturbed_pass_updates_batchnorm_once_more(l2):
    """The perturbed pass is an ordinary training pass on every backend.

    With a vanishing epsilon both passes see the same batch statistics, so one
    FGM step applies BatchNormalization's momentum update twice (the clean pass,
    then the perturbed one) and the clean-gradient pass of JAX none.
    """
    rng = np.random.default_rng(1)
    E = rng.normal(size=(models.VOCAB, models.DIM)).astype("float32")
    x, y, _ = models.batch(rng, size=8)
    regularizer = keras.regularizers.L2(l2) if l2 else None
    inputs = keras.Input((models.LENGTH,), dtype="int32")
    h = keras.layers.Embedding(
        models.VOCAB, models.DIM, name="emb", embeddings_regularizer=regularizer
    )(inputs)
    h = keras.layers.GlobalAveragePooling1D()(h)
    norm = keras.layers.BatchNormalization(momentum=0.9, name="bn")
    outputs = keras.layers.Dense(models.CLASSES, activation="softmax")(norm(h))
    model = keras.Model(inputs, outputs)
    model.compile(
        loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.SGD(0.0)
    )
    model.get_layer("emb").embeddings.assign(E)
    keras_reg.adversarial_training(model, "emb", epsilon=1e-9)
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    batch_mean = E[x].mean(axis=1).mean(axis=0)
    expected = (1 - 0.9**2) * batch_mean  # moving mean starts at 0
    got = keras.ops.convert_to_numpy(model.get_layer("bn").moving_mean)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_fgm_reported_losses_of_a_two_output_model():
    """``fit``'s logs: ``loss`` is the optimized (perturbed) loss, each output's
    loss is that of the clean pass (comparable with ``val_*_loss``), and
    ``adversarial_loss`` is the perturbed pass's total."""
    rng = np.random.default_rng(0)
    E, W, b = models.initial_weights(rng)
    W2 = W[:, ::-1].copy()
    x, y, _ = models.batch(rng, size=8)
    inputs = keras.Input((models.LENGTH,), dtype="int32")
    h = keras.layers.Embedding(models.VOCAB, models.DIM, name="emb")(inputs)
    h = keras.layers.GlobalAveragePooling1D()(h)
    heads = [
        keras.layers.Dense(models.CLASSES, activation="softmax", name=name)(h)
        for name in ("o1", "o2")
    ]
    model = keras.Model(inputs, heads)
    model.compile(
        loss=["sparse_categorical_crossentropy"] * 2,
        optimizer=keras.optimizers.SGD(0.0),
    )
    model.get_layer("emb").embeddings.assign(E)
    model.get_layer("o1").set_weights([W, b])
    model.get_layer("o2").set_weights([W2, b])
    keras_reg.adversarial_training(model, "emb", epsilon=EPSILON)
    logs = model.fit(x, [y, y], batch_size=len(x), verbose=0).history

    def head(E_, W_):
        return fgm_reference.loss_and_gradients(E_, W_, b, x, y)

    g = head(E, W)[1] + head(E, W2)[1]
    delta = EPSILON * g / np.linalg.norm(g)
    clean = [head(E, W)[0], head(E, W2)[0]]
    perturbed = [head(E + delta, W)[0], head(E + delta, W2)[0]]
    assert logs["loss"][0] == pytest.approx(sum(perturbed), rel=1e-5)
    assert logs["adversarial_loss"][0] == pytest.approx(sum(perturbed), rel=1e-5)
    for name, c in zip(("o1_loss", "o2_loss"), clean):
        assert logs[name][0] == pytest.approx(c, rel=1e-5)


_DATA_PARALLEL_CHILD = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["KERAS_BACKEND"] = "jax"
    import jax
    import numpy as np
    import keras_reg
    from keras_reg._compat import keras
    from tests import fgm_reference, models

    assert len(jax.devices()) == 2
    keras.distribution.set_distribution(keras.distribution.DataParallel())
    rng = np.random.default_rng(0)
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng, size=8)
    model = models.build("functional")
    model.compile(
        loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.SGD(0.5)
    )
    models.set_weights(model, E, W, b)
    keras_reg.adversarial_training(model, "emb", epsilon=0.7)
    model.fit(x, y, sample_weight=w, batch_size=8, epochs=2, shuffle=False, verbose=0)
    expected = (E, W, b)
    for _ in range(2):
        expected = fgm_reference.fgm_sgd_step(*expected, x, y, 0.5, 0.7, w)
    for got, want in zip(models.get_weights(model), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    """
)


@pytest.mark.backends("jax", reason="JAX's data parallelism on host devices")
def test_fgm_on_two_jax_devices_is_the_single_device_maths():
    """Data-parallel over 2 CPU devices: the direction is normalised over the
    whole batch (jit sees the global batch), not per device."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-c", _DATA_PARALLEL_CHILD],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
