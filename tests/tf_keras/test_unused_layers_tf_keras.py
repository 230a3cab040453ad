"""tf_keras: a named layer the forward pass never calls is a clear error."""

import numpy as np
import pytest
import tf_keras

import keras_reg


class WithUnusedLayers(tf_keras.Model):
    def __init__(self):
        super().__init__()
        self.embedding = tf_keras.layers.Embedding(11, 4, name="emb")
        self.unused_embedding = tf_keras.layers.Embedding(11, 4, name="unused_emb")
        self.unused_dense = tf_keras.layers.Dense(3, name="unused_dense")
        self.pool = tf_keras.layers.GlobalAveragePooling1D()
        self.out = tf_keras.layers.Dense(3, activation="softmax", name="out")

    def call(self, x, training=False):
        return self.out(self.pool(self.embedding(x)))


def _model():
    model = WithUnusedLayers()
    model(np.zeros((1, 5), "int32"))
    model.unused_embedding.build((None, 5))
    model.unused_dense.build((None, 4))
    model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
    return model


CASES = {
    "fgm": (lambda: keras_reg.FGM("unused_emb"), "'unused_emb' did not look"),
    "pgd": (lambda: keras_reg.PGD("unused_emb"), "'unused_emb' did not look"),
    "gradient_penalty_row": (
        lambda: keras_reg.GradientPenalty("unused_emb", per="row"),
        "'unused_emb' did not look",
    ),
    "parameter_gradient_penalty": (
        lambda: keras_reg.ParameterGradientPenalty(1.0, layers=["unused_dense"]),
        "'unused_dense' was not called",
    ),
    "awp": (
        lambda: keras_reg.AWP(gamma=0.5, layers=["unused_dense"]),
        "'unused_dense' was not called",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_layer_the_forward_pass_never_calls_is_an_error(name):
    factory, message = CASES[name]
    model = _model()
    keras_reg.install_regularizer(model, factory())
    x = np.random.default_rng(0).integers(0, 11, size=(4, 5)).astype("int32")
    with pytest.raises(ValueError, match=message):
        model.fit(x, np.zeros((4,), "int32"), verbose=0)
