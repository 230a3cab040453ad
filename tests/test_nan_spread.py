"""A NaN label spreads no further with a regulariser than in plain Keras."""

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")
VOCAB, DIM, CLASSES, LENGTH = 50, 4, 3, 5


def _model(constraint=None):
    inputs = keras.Input((LENGTH,), dtype="int32")
    h = keras.layers.Embedding(
        VOCAB, DIM, name="emb", embeddings_constraint=constraint
    )(inputs)
    h = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(inputs, keras.layers.Dense(CLASSES, name="out")(h))
    model.compile(loss="mse", optimizer=keras.optimizers.SGD(0.1))
    return model


def _batch():
    rng = np.random.default_rng(3)
    x = rng.permutation(VOCAB)[: 6 * LENGTH].reshape(6, LENGTH).astype("int32")
    y = np.eye(CLASSES, dtype="float32")[rng.integers(0, CLASSES, 6)]
    y[0, 0] = np.nan  # one NaN label: its example's 5 tokens
    return x, y


def _nan_rows(model, x, y):
    keras.utils.set_random_seed(1)
    table = model.get_layer("emb").embeddings
    table.assign(np.random.default_rng(0).normal(size=(VOCAB, DIM)) * 0.01)
    model.fit(x, y, batch_size=len(x), verbose=0)
    values = keras.ops.convert_to_numpy(table)
    return set(np.flatnonzero(np.isnan(values).any(axis=1)))


CASES = {
    "spectral_norm_constraint": (
        lambda: _model(keras_reg.constraints.SpectralNorm(1.0)),
        None,
    ),
    "parameter_gradient_penalty": (
        _model,
        lambda: keras_reg.ParameterGradientPenalty(0.1),
    ),
    "parameter_gradient_penalty_layers": (
        _model,
        lambda: keras_reg.ParameterGradientPenalty(0.1, layers=["emb", "out"]),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_nan_label_spreads_no_further_than_in_plain_keras(name):
    build, regularizer = CASES[name]
    x, y = _batch()
    plain = _nan_rows(_model(), x, y)
    assert len(plain) == LENGTH  # the NaN example's own tokens
    model = build()
    if regularizer is not None:
        keras_reg.install_regularizer(model, regularizer())
    assert _nan_rows(model, x, y) <= plain
