"""VAT's arguments: unlabelled data checked up front, integer options, from_config."""

import warnings

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras
from tests import models

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")


def _float_model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, "softmax")])
    model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
    return model


def _token_model():
    model = models.build("functional")
    model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
    return model


def _numbers_then_nan():
    x = np.ones((6, 4), "float32")
    x[3, 1] = np.nan
    x[5, 0] = np.inf
    return x


def _generator():
    return (np.ones((2, models.LENGTH), "int32") for _ in range(3))


@pytest.mark.parametrize(
    "model, options, message",
    [
        # Examples of the wrong shape (the model takes LENGTH=5 tokens).
        (
            _token_model,
            {"embedding_name": "emb", "unlabeled": np.zeros((8, 7), "int32")},
            r"array 0 has examples of shape \(7,\).*takes batches of shape "
            r"\(None, 5\)",
        ),
        (
            _float_model,
            {"unlabeled": np.zeros((8, 3), "float32")},
            r"examples of shape \(3,\)",
        ),
        # A Python list of numbers (a list is one array per model input).
        (
            _float_model,
            {"unlabeled": [0.1, 0.2, 0.3, 0.4]},
            r"Python list of numbers.*np\.asarray",
        ),
        (
            _token_model,
            {"embedding_name": "emb", "unlabeled": [[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]]},
            "Python list of numbers",
        ),
        # A generator cannot be read inside the compiled step.
        (
            _token_model,
            {"embedding_name": "emb", "unlabeled": _generator()},
            r"received a generator.*np\.concatenate",
        ),
        (
            _float_model,
            {"unlabeled": _numbers_then_nan()},
            r"2 NaN or infinite values, in 2 examples \(the first at index 3\)",
        ),
        (
            _token_model,
            {"embedding_name": "emb", "unlabeled": np.full((4, 5), 11, "int32")},
            r"token ids from 11 to 11.*'emb' has 11 rows",
        ),
        (
            _token_model,
            {"embedding_name": "emb", "unlabeled": np.full((4, 5), -1, "int32")},
            "token ids from -1 to -1",
        ),
        # Token ids with embedding_name=None: perturb the embedding instead.
        (_token_model, {}, r"int32.*embedding_name=<its layer name>.*'emb'"),
        (
            _float_model,
            {"unlabeled": np.zeros((5, 4), "int64")},
            "inputs of dtype int64.*embedding_name=",
        ),
        # Integer options: no bools, no floats.
        (_float_model, {"iters": True}, r"`iters` must be an integer >= 1.*True"),
        (_float_model, {"iters": 2.0}, r"`iters` must be an integer >= 1.*\(float\)"),
        (
            _float_model,
            {"unlabeled_batch_size": 4.0},
            r"`unlabeled_batch_size` must be an integer >= 1",
        ),
        (
            _float_model,
            {"unlabeled_batch_size": np.bool_(True)},
            "`unlabeled_batch_size` must be an integer",
        ),
    ],
)
def test_bad_unlabelled_data_and_options_are_named(model, options, message):
    model = model()
    with pytest.raises(ValueError, match=message):
        keras_reg.virtual_adversarial_training(model, **options)
    assert keras_reg.installed_regularizer(model) is None


def test_numpy_integers_are_accepted_for_integer_options():
    rng = np.random.default_rng(0)
    model = _float_model()
    x = rng.normal(size=(8, 4)).astype("float32")
    y = rng.integers(0, 3, size=8).astype("int32")
    keras_reg.virtual_adversarial_training(
        model,
        iters=np.int64(2),
        unlabeled=x,
        unlabeled_batch_size=np.int32(4),
    )
    vat = keras_reg.installed_regularizer(model)
    assert type(vat.iters) is int and type(vat.unlabeled_batch_size) is int
    history = model.fit(x, y, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_from_config_warns_that_unlabelled_data_is_not_restored():
    x_u = np.zeros((6, models.LENGTH), "int32")
    vat = keras_reg.VAT("emb", unlabeled=x_u, unlabeled_batch_size=3)
    config = vat.get_config()
    assert config["unlabeled_omitted"] is True
    with pytest.warns(UserWarning, match=r"never serialised.*\"unlabeled\": x_unl"):
        clone = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(vat)
        )
    assert clone.sampler.arrays is None
    # Passing the data again restores the VAT, without a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = keras_reg.VAT.from_config({**config, "unlabeled": x_u})
        keras_reg.VAT.from_config(keras_reg.VAT("emb").get_config())
    assert again.get_config() == config


def test_a_list_of_arrays_keeps_working_with_the_right_count():
    """One array per input: the single-input model refuses two arrays."""
    model = _token_model()
    x_u = np.zeros((6, models.LENGTH), "int32")
    with pytest.raises(ValueError, match=r"holds 2 array\(s\), but the model takes 1"):
        keras_reg.virtual_adversarial_training(model, "emb", unlabeled=[x_u, x_u])
    keras_reg.virtual_adversarial_training(model, "emb", unlabeled=[x_u])
