"""FreeVAT: two steps against the NumPy reference, the carried state, errors."""

import pickle

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras
from keras_reg.training.core.probability_check import is_record
from tests import fixed_noise, models, vat_reference

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")
LR, EPSILON, WEIGHT = 0.5, 0.8, 1.5


def _jit_options():
    return [False] if keras.backend.backend() == "torch" else [False, True]


def _float_classifier():
    model = models.float_inputs()
    model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
    return model


def _two_steps(model, x, y, w, draws, shift):
    fixed_noise.two_steps(
        model, lambda: models.fit_one_batch(model, x, y, w), draws, shift
    )


@pytest.mark.parametrize(
    "jit_compile", _jit_options(), ids=lambda j: "xla" if j else "graph"
)
def test_inputs_two_steps_match_reference(jit_compile, monkeypatch):
    """Step 2 reuses examples 0 and 1's directions (signs drawn); 4 starts afresh."""
    fixed_noise.install(monkeypatch)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 4)).astype("float32")
    y = rng.integers(0, 3, size=4).astype("int32")
    w = rng.uniform(0.5, 2, size=4).astype("float32")
    pool = rng.normal(size=(5, 4)).astype("float32")
    W = rng.normal(size=(4, 3)).astype("float32")
    b = rng.normal(size=3).astype("float32") * 0.1
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, "softmax")])
    model.layers[0].set_weights([W, b])
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer=keras.optimizers.SGD(LR),
        jit_compile=jit_compile,
    )
    draws = fixed_noise.ShiftedDraws(monkeypatch)
    keras_reg.free_virtual_adversarial_training(
        model, epsilon=EPSILON, weight=WEIGHT, unlabeled=pool, unlabeled_batch_size=3
    )
    _two_steps(model, x, y, w, draws, 4)

    fresh = vat_reference.fixed_direction((3, 4))
    params, carried = vat_reference.free_vat_sgd_step(
        [W, b], x, y, w, pool[:3], fresh, "input", LR, EPSILON, WEIGHT, "example"
    )
    # Examples 4, 0, 1: a fresh draw, then the carried rows with drawn signs.
    keep = np.where(vat_reference.fixed_uniform((3, 1)) < 0.5, 1.0, -1.0)
    d = np.concatenate([fresh[:1], carried[:2] * keep[1:]])
    expected, _ = vat_reference.free_vat_sgd_step(
        params, x, y, w, pool[[4, 0, 1]], d, "input", LR, EPSILON, WEIGHT, "example"
    )
    for got, want in zip(model.layers[0].get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "jit_compile", _jit_options(), ids=lambda j: "xla" if j else "graph"
)
def test_matrix_two_steps_match_reference(jit_compile, monkeypatch):
    """Step 2's shared tokens get step 1's rows (one drawn sign), its new ones none."""
    fixed_noise.install(monkeypatch)
    rng = np.random.default_rng(1)
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng, size=4)
    pool = np.array(
        [[0, 1, 2, 1, 3], [3, 4, 4, 0, 5], [6, 7, 1, 6, 8], [9, 10, 3, 9, 7]],
        "int32",
    )
    model = models.build("functional")
    models.set_weights(model, E, W, b)
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer=keras.optimizers.SGD(LR),
        jit_compile=jit_compile,
    )
    draws = fixed_noise.ShiftedDraws(monkeypatch)
    keras_reg.free_virtual_adversarial_training(
        model,
        "emb",
        epsilon=EPSILON,
        weight=WEIGHT,
        unlabeled=pool,
        unlabeled_batch_size=2,
    )
    _two_steps(model, x, y, w, draws, 2)

    expected = vat_reference.free_vat_matrix_two_steps(
        [E, W, b], x, y, w, pool[:2], pool[2:], LR, EPSILON, WEIGHT
    )
    for got, want in zip(models.get_weights(model), expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_matrix_state_holds_the_last_batch_rows_only():
    """The carried state is ``unlabelled batch x tokens`` rows, not the vocabulary."""
    rng = np.random.default_rng(2)
    pool = rng.integers(0, models.VOCAB, size=(20, models.LENGTH)).astype("int32")
    model = models.compiled()
    regularizer = keras_reg.FreeVAT("emb", unlabeled=pool, unlabeled_batch_size=3)
    carried = regularizer.carried_state(model)
    # Besides VAT's record of outputs that were not probabilities (a flag):
    assert {k: v for k, v in carried.items() if not is_record(k)} == {
        "free_vat_ids": (3 * models.LENGTH,),
        "free_vat_rows": (3 * models.LENGTH, models.DIM),
    }


def test_config_round_trip_and_pickle():
    pool = np.zeros((6, 4), "float32")
    regularizer = keras_reg.FreeVAT(epsilon=0.3, unlabeled=pool, seed=4)
    config = regularizer.get_config()
    assert "xi" not in config and "iters" not in config
    again = keras_reg.FreeVAT.from_config({**config, "unlabeled": pool})
    assert again.get_config() == config
    restored = pickle.loads(pickle.dumps(regularizer))
    assert restored.get_config() == config
    with pytest.warns(UserWarning, match="never serialised"):
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(again)
        )
    with pytest.raises(ValueError, match="needs `unlabeled` arrays"):
        keras_reg.install_regularizer(_float_classifier(), restored)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "needs `unlabeled` arrays"),
        (
            {"embedding_name": "emb", "unlabeled": np.zeros((4, 5), "int32")},
            "`unlabeled_batch_size`",
        ),
    ],
)
def test_install_refuses_what_cannot_be_carried(kwargs, message):
    model = models.compiled() if kwargs else _float_classifier()
    with pytest.raises(ValueError, match=message):
        keras_reg.install_regularizer(model, keras_reg.FreeVAT(**kwargs))


def test_refuses_a_per_position_direction():
    with pytest.raises(ValueError, match="perturb='output'"):
        keras_reg.FreeVAT(
            "emb",
            perturb="output",
            unlabeled=np.zeros((4, 5), "int32"),
            unlabeled_batch_size=2,
        )
