"""Every strength of every regulariser may be a schedule of the training step.

A schedule that always returns the constant trains bit for bit like the
constant; a ramp changes the steps after the first.
"""

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras
from tests import models

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")

_UNLABELED = np.random.default_rng(7).integers(0, models.VOCAB, (32, models.LENGTH))

# name: (regulariser from a strength, the constant strength, model kind)
STRENGTHS = {
    "fgm-epsilon": (lambda s: keras_reg.FGM("emb", epsilon=s), 0.7, "tokens"),
    "pgd-alpha": (lambda s: keras_reg.PGD("emb", alpha=s, steps=2), 0.3, "tokens"),
    "gp-weight": (lambda s: keras_reg.GradientPenalty("emb", weight=s), 4.0, "tokens"),
    "gp-row-weight": (
        lambda s: keras_reg.GradientPenalty("emb", weight=s, per="row"),
        4.0,
        "tokens",
    ),
    "parameter-gp-weight": (
        lambda s: keras_reg.ParameterGradientPenalty(s),
        0.5,
        "tokens",
    ),
    "input-gp-weight": (
        lambda s: keras_reg.InputGradientPenalty(s, seed=3),
        0.5,
        "floats",
    ),
    "noise-stddev": (
        lambda s: keras_reg.NoiseTraining("emb", stddev=s, seed=2),
        0.3,
        "tokens",
    ),
    "noise-integrated-stddev": (
        lambda s: keras_reg.NoiseTraining("emb", stddev=s, integrated=True, seed=2),
        0.3,
        "tokens",
    ),
    "sam-rho": (lambda s: keras_reg.SAM(rho=s), 0.5, "tokens"),
    "awp-gamma": (lambda s: keras_reg.AWP(gamma=s), 0.2, "tokens"),
    "rdrop-weight": (lambda s: keras_reg.RDrop(weight=s), 4.0, "dropout"),
    "vat-epsilon": (
        lambda s: keras_reg.VAT(
            "emb", epsilon=s, xi=1.0, perturb="output", unlabeled=_UNLABELED, seed=1
        ),
        0.5,
        "tokens",
    ),
    "vat-weight": (
        lambda s: keras_reg.VAT(
            "emb", weight=s, xi=1.0, perturb="output", unlabeled=_UNLABELED, seed=1
        ),
        2.0,
        "tokens",
    ),
    "vat-entropy-weight": (
        lambda s: keras_reg.VAT(
            "emb",
            entropy_weight=s,
            xi=1.0,
            perturb="output",
            unlabeled=_UNLABELED,
            seed=1,
        ),
        1.0,
        "tokens",
    ),
}


def _model(kind):
    keras.utils.set_random_seed(0)
    if kind == "floats":
        inputs = keras.Input((3,))
        hidden = keras.layers.Dense(4, activation="tanh")(inputs)
        model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(hidden))
    else:
        model = models.build("functional", dropout=0.3 if kind == "dropout" else 0.0)
    model.compile(
        loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.SGD(0.5)
    )
    return model


def _trained(name, strength):
    factory, _, kind = STRENGTHS[name]
    model = _model(kind)
    keras_reg.install_regularizer(model, factory(strength))
    rng = np.random.default_rng(5)
    x, y, _ = models.batch(rng, size=8)
    if kind == "floats":
        x = rng.normal(size=(8, 3)).astype("float32")
        y = np.asarray(y) % 2
    keras.utils.set_random_seed(1)
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    return [keras.ops.convert_to_numpy(v) for v in model.trainable_weights]


@pytest.mark.parametrize("name", sorted(STRENGTHS))
def test_constant_schedule_trains_bit_for_bit_like_the_constant(name):
    value = STRENGTHS[name][1]
    constant = _trained(name, value)
    scheduled = _trained(name, lambda step: value)
    for got, want in zip(scheduled, constant):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", sorted(STRENGTHS))
def test_a_ramp_changes_the_second_step(name):
    value = STRENGTHS[name][1]
    constant = _trained(name, value)
    ramp = _trained(
        name, lambda step: value * (1.0 + 2.0 * keras.ops.cast(step, "float32"))
    )
    # Far apart, not only by rounding: the second step is 3x as strong.
    assert any(
        not np.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(ramp, constant)
    )


@pytest.mark.parametrize("name", sorted(STRENGTHS))
def test_a_serialisable_schedule_round_trips(name):
    factory = STRENGTHS[name][0]
    ramp = keras.optimizers.schedules.PolynomialDecay(0.1, 10, end_learning_rate=1.0)
    regularizer = factory(ramp)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(regularizer)
    )
    assert type(restored) is type(regularizer)
    config, expected = restored.get_config(), regularizer.get_config()
    expected.pop("unlabeled_omitted", None)
    assert config == expected
