"""VAT's divergence: logits vs probabilities, regression and multi-output models,
mixed precision."""

import warnings

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras
from keras_reg.training.core import divergence
from tests import fixed_noise

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")
ops = keras.ops
LR = 0.5


def _dense(units, activation, name="out"):
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(units, activation, name=name)]
    )


def _step(model, loss, units, options, y=None):
    """Sets fixed weights, installs VAT, fits one SGD step; returns the weights."""
    rng = np.random.default_rng(0)
    W = rng.normal(size=(4, units)).astype("float32")
    b = rng.normal(size=(units,)).astype("float32") * 0.1
    model.layers[-1].set_weights([W, b])
    x = rng.normal(size=(5, 4)).astype("float32")
    if y is None:
        y = rng.integers(0, max(units, 2), size=(5,)).astype("int32")
    model.compile(loss=loss, optimizer=keras.optimizers.SGD(LR))
    keras_reg.virtual_adversarial_training(model, epsilon=0.8, xi=0.5, **options)
    model.fit(x, y, batch_size=5, shuffle=False, verbose=0)
    return [ops.convert_to_numpy(w) for w in model.layers[-1].weights]


def _plain_step(model, loss, units):
    """The same step without VAT."""
    rng = np.random.default_rng(0)
    W = rng.normal(size=(4, units)).astype("float32")
    b = rng.normal(size=(units,)).astype("float32") * 0.1
    model.layers[-1].set_weights([W, b])
    x = rng.normal(size=(5, 4)).astype("float32")
    y = rng.integers(0, max(units, 2), size=(5,)).astype("int32")
    model.compile(loss=loss, optimizer=keras.optimizers.SGD(LR))
    model.fit(x, y, batch_size=5, shuffle=False, verbose=0)
    return [ops.convert_to_numpy(w) for w in model.layers[-1].weights]


def _logits_loss(y_true, y_pred):
    """A loss VAT cannot read: the model must say its output is logits."""
    return keras.losses.sparse_categorical_crossentropy(
        y_true, y_pred, from_logits=True
    )


@pytest.mark.parametrize("how", ["inferred", "explicit"])
def test_vat_on_logits_equals_vat_on_the_softmax(how, monkeypatch):
    """A logits head (from_logits=True) steps exactly like the same head + softmax.

    On logits read as probabilities the KL of clipped values was ~0: the step
    was the plain step.
    """
    fixed_noise.install(monkeypatch)
    softmax = _step(_dense(3, "softmax"), "sparse_categorical_crossentropy", 3, {})
    if how == "inferred":
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        options = {}
    else:
        loss, options = _logits_loss, {"predictions": "logits"}
    logits = _step(_dense(3, None), loss, 3, options)
    plain = _plain_step(_dense(3, "softmax"), "sparse_categorical_crossentropy", 3)
    for a, b, c in zip(logits, softmax, plain):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert np.abs(b - c).max() > 1e-3  # VAT moved the step


def test_vat_on_one_sigmoid_logit_equals_vat_on_the_sigmoid(monkeypatch):
    fixed_noise.install(monkeypatch)
    y = np.array([0, 1, 1, 0, 1], "float32")[:, None]
    sigmoid = _step(_dense(1, "sigmoid"), "binary_crossentropy", 1, {}, y=y)
    logit = _step(
        _dense(1, None), keras.losses.BinaryCrossentropy(from_logits=True), 1, {}, y=y
    )
    for a, b in zip(logit, sigmoid):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_kl_on_logits_is_stable_and_matches_probabilities():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(4, 5)).astype("float32") * 3
    b = rng.normal(size=(4, 5)).astype("float32") * 3
    on_logits = divergence.kl_divergence(a, b, "logits")
    on_probs = divergence.kl_divergence(ops.softmax(a), ops.softmax(b))
    np.testing.assert_allclose(
        ops.convert_to_numpy(on_logits), ops.convert_to_numpy(on_probs), rtol=1e-5
    )
    huge = divergence.kl_divergence(a * 100, b * 100, "logits")
    assert np.isfinite(ops.convert_to_numpy(huge)) and float(huge) > 10
    one = divergence.kl_divergence(a[:, :1] * 100, b[:, :1] * 100, "logits")
    assert np.isfinite(ops.convert_to_numpy(one))


@pytest.mark.parametrize("loss", ["mse", keras.losses.Huber(), "mean_absolute_error"])
def test_regression_loss_is_refused_at_install(loss):
    model = _dense(1, None)
    model.compile(loss=loss, optimizer="sgd")
    with pytest.raises(ValueError, match="regression/score loss.*predictions="):
        keras_reg.virtual_adversarial_training(model)
    assert keras_reg.installed_regularizer(model) is None
    # Saying what the output is overrides the inference.
    keras_reg.virtual_adversarial_training(model, predictions="probabilities")


def test_unrecognised_loss_warns_and_assumes_probabilities():
    model = _dense(3, "softmax")
    model.compile(loss=lambda y, p: ops.mean(p), optimizer="sgd")
    with pytest.warns(UserWarning, match="cannot tell from the loss"):
        keras_reg.virtual_adversarial_training(model)
    keras_reg.remove_regularization(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        keras_reg.virtual_adversarial_training(model, predictions="probabilities")


def test_predictions_is_validated_and_serialised():
    with pytest.raises(ValueError, match="`predictions` must be one of"):
        keras_reg.VAT(predictions="logit")
    vat = keras_reg.VAT(predictions="logits")
    assert vat.get_config()["predictions"] == "logits"
    clone = keras_reg.VAT.from_config(vat.get_config())
    assert clone.predictions == "logits"


def _two_heads(activation, name="two_heads"):
    inputs = keras.Input((4,))
    h = keras.layers.Dense(3, activation, name="out")(inputs)
    first = keras.layers.Identity(name="first")(h)
    second = keras.layers.Identity(name="second")(h)
    return keras.Model(inputs, [first, second], name=name)


def test_multi_output_vat_is_the_sum_of_the_per_output_kls(monkeypatch):
    """Two copies of one head: loss and KL double, i.e. one head at twice the lr."""
    fixed_noise.install(monkeypatch)
    rng = np.random.default_rng(0)
    W = rng.normal(size=(4, 3)).astype("float32")
    b = rng.normal(size=(3,)).astype("float32") * 0.1
    x = rng.normal(size=(5, 4)).astype("float32")
    y = rng.integers(0, 3, size=(5,)).astype("int32")
    results = []
    for model, targets, lr in [
        (_two_heads("softmax"), [y, y], LR),
        (_dense(3, "softmax"), y, 2 * LR),
    ]:
        model.get_layer("out").set_weights([W, b])
        model.compile(
            loss="sparse_categorical_crossentropy",
            optimizer=keras.optimizers.SGD(lr),
        )
        keras_reg.virtual_adversarial_training(model, epsilon=0.8, xi=0.5)
        model.fit(x, targets, batch_size=5, shuffle=False, verbose=0)
        results.append(
            [ops.convert_to_numpy(w) for w in model.get_layer("out").weights]
        )
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_multi_output_mixing_logits_and_probabilities_is_refused():
    model = _two_heads(None)
    model.compile(
        loss=[
            "sparse_categorical_crossentropy",
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        ],
        optimizer="sgd",
    )
    with pytest.raises(ValueError, match="mix probabilities and logits"):
        keras_reg.virtual_adversarial_training(model)


@pytest.mark.backends("tensorflow", "jax", reason="float16 CPU kernels")
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("site", ["input", "output"])
def test_mixed_precision(policy, site):
    """A float16/bfloat16 output: the KL is taken in float32 and the step trains."""
    from tests import models

    rng = np.random.default_rng(0)
    keras.config.set_dtype_policy(policy)
    if site == "input":
        model = _dense(3, "softmax")
        x = rng.normal(size=(8, 4)).astype("float32")
        options = {}
    else:
        model = models.build("functional")
        x = models.batch(rng, size=8)[0]
        options = {"embedding_name": "emb", "perturb": "output"}
    assert model.outputs[0].dtype == policy.split("_")[1]
    y = rng.integers(0, 3, size=(8,)).astype("int32")
    model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
    before = [ops.convert_to_numpy(w) for w in model.trainable_weights]
    keras_reg.virtual_adversarial_training(model, epsilon=0.5, xi=0.1, **options)
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    after = [ops.convert_to_numpy(w) for w in model.trainable_weights]
    assert any(not np.array_equal(a, b) for a, b in zip(after, before))
