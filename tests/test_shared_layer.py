"""Loss balancing by gradients refuses a shared layer that a head does not read."""

import pytest

import keras_reg
from keras_reg._compat import keras

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")


def _model():
    inputs = keras.Input((4,))
    h = keras.layers.Dense(6, name="shared")(inputs)
    cls = keras.layers.Dense(3, activation="softmax", name="cls")(h)
    reg = keras.layers.Dense(1, name="reg")(h)
    model = keras.Model(inputs, [cls, reg])
    model.compile(optimizer="sgd", loss=["sparse_categorical_crossentropy", "mse"])
    return model


@pytest.mark.parametrize("method", ["gradient", "pareto"])
def test_a_head_as_shared_layer_is_refused_naming_the_fix(method):
    model = _model()
    with pytest.raises(ValueError, match=r"output\(s\) 'reg' do not read it.*'shared'"):
        keras_reg.balance_losses(model, method, shared_layer="cls")


@pytest.mark.parametrize("method", ["gradient", "pareto"])
def test_the_last_shared_layer_is_accepted(method):
    keras_reg.balance_losses(_model(), method, shared_layer="shared")
