"""tf_keras: regularisers of the training loss refuse a model compiled without one."""

import pytest
import tf_keras

import keras_reg

NEED_A_LOSS = {
    "fgm": lambda: keras_reg.FGM("emb"),
    "pgd": lambda: keras_reg.PGD("emb"),
    "sam": lambda: keras_reg.SAM(),
    "gradient_penalty": lambda: keras_reg.GradientPenalty("emb"),
    "parameter_gradient_penalty": lambda: keras_reg.ParameterGradientPenalty(0.1),
}


def _model():
    inputs = tf_keras.Input((5,), dtype="int32")
    h = tf_keras.layers.Embedding(11, 4, name="emb")(inputs)
    h = tf_keras.layers.GlobalAveragePooling1D()(h)
    return tf_keras.Model(inputs, tf_keras.layers.Dense(3)(h))


@pytest.mark.parametrize("name", sorted(NEED_A_LOSS))
def test_a_model_compiled_without_a_loss_is_refused_at_install(name):
    model = _model()
    model.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="compiled without one. Compile with a loss"):
        keras_reg.install_regularizer(model, NEED_A_LOSS[name]())


@pytest.mark.parametrize("name", sorted(NEED_A_LOSS))
def test_a_model_compiled_with_a_loss_is_accepted(name):
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    keras_reg.install_regularizer(model, NEED_A_LOSS[name]())
