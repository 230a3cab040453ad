"""Regularisers of the training loss refuse a model compiled without one."""

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras
from tests import models

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")

NEED_A_LOSS = {
    "fgm": lambda: keras_reg.FGM("emb"),
    "pgd": lambda: keras_reg.PGD("emb"),
    "sam": lambda: keras_reg.SAM(),
    "r_drop": lambda: keras_reg.RDrop(),
    "gradient_penalty": lambda: keras_reg.GradientPenalty("emb"),
    "gradient_penalty_row": lambda: keras_reg.GradientPenalty("emb", per="row"),
    "parameter_gradient_penalty": lambda: keras_reg.ParameterGradientPenalty(0.1),
}


@pytest.mark.parametrize("name", sorted(NEED_A_LOSS))
def test_a_model_compiled_without_a_loss_is_refused_at_install(name):
    model = models.build("functional")
    model.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="compiled without one. Compile with a loss"):
        keras_reg.install_regularizer(model, NEED_A_LOSS[name]())
    assert keras_reg.installed_regularizer(model) is None


def test_input_gradient_penalty_without_a_loss_is_refused_at_install():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="InputGradientPenalty needs the model's"):
        keras_reg.input_gradient_penalty(model, weight=1.0)
    model.compile(optimizer="sgd", loss="mse")
    keras_reg.input_gradient_penalty(model, weight=1.0)
    model.fit(np.ones((4, 3), "float32"), np.ones((4, 1)), verbose=0)
