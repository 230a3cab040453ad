"""A named layer the forward pass never calls is a clear error, not a no-op."""

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras
from tests import models

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")


class WithUnusedLayers(keras.Model):
    """The bag-of-embeddings classifier, owning layers its ``call`` never calls."""

    def __init__(self):
        super().__init__()
        self.embedding = keras.layers.Embedding(models.VOCAB, models.DIM, name="emb")
        self.unused_embedding = keras.layers.Embedding(
            models.VOCAB, models.DIM, name="unused_emb"
        )
        self.unused_dense = keras.layers.Dense(models.CLASSES, name="unused_dense")
        self.pool = keras.layers.GlobalAveragePooling1D()
        self.out = keras.layers.Dense(models.CLASSES, activation="softmax", name="out")

    def build(self, input_shape):
        self.unused_embedding.build(input_shape)
        self.unused_dense.build((None, models.DIM))
        super().build(input_shape)

    def call(self, x, training=False):
        return self.out(self.pool(self.embedding(x)))


UNUSED_EMBEDDING = {
    "gradient_penalty_row": lambda: keras_reg.GradientPenalty("unused_emb", per="row"),
    "gradient_penalty_occurrence": lambda: keras_reg.GradientPenalty("unused_emb"),
    "fgm": lambda: keras_reg.FGM("unused_emb"),
    "pgd": lambda: keras_reg.PGD("unused_emb"),
    "free_fgm": lambda: keras_reg.FreeFGM("unused_emb"),
    "freelb": lambda: keras_reg.FreeLB("unused_emb"),
    "noise": lambda: keras_reg.NoiseTraining("unused_emb", stddev=0.5),
    "noise_integrated": lambda: keras_reg.NoiseTraining(
        "unused_emb", stddev=0.5, integrated=True
    ),
}
UNUSED_LAYER = {
    "parameter_gradient_penalty": lambda: keras_reg.ParameterGradientPenalty(
        1.0, layers=["unused_dense"]
    ),
    "awp": lambda: keras_reg.AWP(gamma=0.5, layers=["unused_dense"]),
}


def _model():
    model = WithUnusedLayers()
    model(np.zeros((1, models.LENGTH), "int32"))
    model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
    return model


CASES = {
    **{
        name: (factory, "'unused_emb' did not look anything up")
        for name, factory in UNUSED_EMBEDDING.items()
    },
    **{
        name: (factory, "'unused_dense' was not called")
        for name, factory in UNUSED_LAYER.items()
    },
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_layer_the_forward_pass_never_calls_is_an_error(name, rng):
    factory, message = CASES[name]
    model = _model()
    keras_reg.install_regularizer(model, factory())
    x, y, _ = models.batch(rng)
    with pytest.raises(ValueError, match=message):
        model.fit(x, y, batch_size=len(x), verbose=0)


@pytest.mark.parametrize("name", ["parameter_gradient_penalty", "awp"])
def test_a_layer_the_forward_pass_calls_trains(name, rng):
    factories = {
        "parameter_gradient_penalty": lambda: keras_reg.ParameterGradientPenalty(
            1.0, layers=["out"]
        ),
        "awp": lambda: keras_reg.AWP(gamma=0.5, layers=["out"]),
    }
    model = _model()
    keras_reg.install_regularizer(model, factories[name]())
    x, y, _ = models.batch(rng)
    model.fit(x, y, batch_size=len(x), verbose=0)
