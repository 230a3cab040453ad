"""Logits or regression outputs that a divergence would read as probabilities."""

import copy
import warnings

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")


def _model(activation, loss=None):
    inputs = keras.Input((4,))
    h = keras.layers.Dense(8, activation="relu")(inputs)
    head = keras.layers.Dense(3, activation=activation, name="head")
    model = keras.Model(inputs, head(h))
    model.compile(optimizer="sgd", loss=loss)
    return model


VAT_WITHOUT_LOSS = {
    "vat": lambda **kw: keras_reg.VAT(None, epsilon=0.5, **kw),
}


@pytest.mark.parametrize("name", sorted(VAT_WITHOUT_LOSS))
def test_logits_without_a_loss_or_predictions_are_refused(name):
    with pytest.raises(ValueError, match=r"'head' have a linear.*predictions='logits'"):
        keras_reg.install_regularizer(_model(None), VAT_WITHOUT_LOSS[name]())


@pytest.mark.parametrize("name", sorted(VAT_WITHOUT_LOSS))
def test_logits_declared_or_probabilities_are_accepted(name, recwarn):
    keras_reg.install_regularizer(
        _model(None), VAT_WITHOUT_LOSS[name](predictions="logits")
    )
    model = _model("softmax")
    keras_reg.install_regularizer(model, VAT_WITHOUT_LOSS[name]())
    model.fit(np.random.default_rng(0).normal(size=(8, 4)).astype("float32"), verbose=0)


PROBABILITY_LOSS = {
    "r_drop": lambda: keras_reg.RDrop(),
    "vat": lambda: keras_reg.VAT(None, epsilon=0.5),
}


@pytest.mark.parametrize("name", sorted(PROBABILITY_LOSS))
def test_a_probability_loss_on_logits_warns_at_install(name):
    model = _model(None, loss="sparse_categorical_crossentropy")
    match = r"'head' have a linear activation.*from_logits=True"
    with pytest.warns(UserWarning, match=match):
        keras_reg.install_regularizer(model, PROBABILITY_LOSS[name]())


@pytest.mark.parametrize("name", sorted(PROBABILITY_LOSS))
def test_a_matching_loss_installs_quietly(name):
    for activation, loss in [
        ("softmax", "sparse_categorical_crossentropy"),
        (None, keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
    ]:
        model = _model(activation, loss=loss)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            keras_reg.install_regularizer(model, PROBABILITY_LOSS[name]())


class SubclassedHead(keras.Model):
    """A model whose output layer cannot be read at install time."""

    def __init__(self, activation):
        super().__init__()
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.head = keras.layers.Dense(3, activation=activation)

    def call(self, x):
        return self.head(self.hidden(x))


_X = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
_Y = np.random.default_rng(1).integers(0, 3, 16)

BATCH_CHECKED = {
    "vat": lambda **kw: keras_reg.VAT(None, epsilon=0.5, unlabeled=_X, seed=1, **kw),
    "rdrop": lambda **kw: keras_reg.RDrop(**kw),
}


def _fit_subclassed(activation, regularizer, epochs=2):
    model = SubclassedHead(activation)
    model(_X[:2])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    keras_reg.install_regularizer(model, regularizer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(_X, _Y, batch_size=8, epochs=epochs, verbose=0)
    messages = [str(w.message) for w in caught]
    return [m for m in messages if "were not probabilities" in m]


@pytest.mark.parametrize("name", sorted(BATCH_CHECKED))
def test_logits_of_a_subclassed_model_read_as_probabilities_warn_once(name):
    told = _fit_subclassed(None, BATCH_CHECKED[name]())
    assert len(told) == 1, told  # two epochs, one warning
    assert "pass predictions='logits'" in told[0]


@pytest.mark.parametrize("name", sorted(BATCH_CHECKED))
def test_probabilities_or_declared_logits_of_a_subclassed_model_are_quiet(name):
    assert _fit_subclassed("softmax", BATCH_CHECKED[name]()) == []
    assert _fit_subclassed(None, BATCH_CHECKED[name](predictions="logits")) == []


@pytest.mark.parametrize("name", sorted(BATCH_CHECKED))
def test_the_warning_is_once_per_installation_not_once_per_regularizer(name):
    # The memory of having warned belongs to the installation: the same
    # regulariser (or a copy of it) on a new model warns again.
    regularizer = BATCH_CHECKED[name]()
    assert len(_fit_subclassed(None, regularizer)) == 1
    assert len(_fit_subclassed(None, regularizer)) == 1
    assert len(_fit_subclassed(None, copy.deepcopy(regularizer))) == 1
    assert not hasattr(regularizer, "_warned_not_probabilities")
