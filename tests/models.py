"""Tiny test models and their data, on Keras 3 or tf_keras.

The bag-of-embeddings classifier in the three Keras model styles (token ids),
a float-input classifier and a two-head (classification + regression) model.
Every builder takes ``keras``: the Keras 3 package (the default) or tf_keras.
"""

import numpy as np
import pytest

from keras_reg._compat import keras as keras3

keras = keras3  # the subclassed model below is a Keras 3 model

VOCAB, DIM, CLASSES, LENGTH = 11, 4, 3, 5
# The adversaries' closed-form tests: SGD's rate, graph and jit-compiled steps.
ADVERSARY_LR = 0.5
JIT = pytest.mark.backends(
    "tensorflow", "jax", reason="jit_compile=True means torch.compile on torch"
)
MODES = [
    pytest.param({}, id="graph"),
    pytest.param({"jit_compile": True}, id="jit", marks=JIT),
]
FEATURES, HIDDEN = 5, 4


class BagOfEmbeddings(keras.Model):
    """The subclassed form of the model in fgm_reference.py."""

    def __init__(self, l2=0.0, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.embedding = keras.layers.Embedding(
            VOCAB, DIM, name="emb", embeddings_regularizer=_l2(l2)
        )
        self.pool = keras.layers.GlobalAveragePooling1D()
        self.dropout = keras.layers.Dropout(dropout)
        self.classifier = keras.layers.Dense(CLASSES, activation="softmax", name="out")

    def call(self, x, training=False):
        h = self.pool(self.embedding(x))
        return self.classifier(self.dropout(h, training=training))


def fit_one_batch(model, x, y, w, epochs=1, **kwargs):
    """Fits ``epochs`` steps, each on the whole batch (x, y, w), in order."""
    model.fit(
        x,
        y,
        sample_weight=w,
        batch_size=len(x),
        epochs=epochs,
        shuffle=False,
        verbose=0,
        **kwargs,
    )


def _l2(l2, framework=keras3):
    return framework.regularizers.L2(l2) if l2 else None


def build(style, l2=0.0, dropout=0.0, keras=keras3):
    """Returns a built model of ``style``: sequential, functional or subclassed.

    ``keras`` is the Keras 3 package or tf_keras (no subclassed style there).
    """
    if style == "subclassed":
        model = BagOfEmbeddings(l2=l2, dropout=dropout)
        model(np.zeros((1, LENGTH), "int32"))
        return model
    regularizer = _l2(l2, keras)
    layers = [
        keras.layers.Embedding(
            VOCAB, DIM, name="emb", embeddings_regularizer=regularizer
        ),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dropout(dropout),
        keras.layers.Dense(CLASSES, activation="softmax", name="out"),
    ]
    if style == "sequential":
        model = keras.Sequential([keras.Input((LENGTH,), dtype="int32"), *layers])
    else:
        inputs = keras.Input((LENGTH,), dtype="int32")
        h = inputs
        for layer in layers:
            h = layer(h)
        model = keras.Model(inputs, h)
    return model


def compiled(style="functional", lr=0.5, l2=0.0, dropout=0.0, optimizer=None,
             keras=keras3, **compile_kwargs):
    """Returns `build`'s model compiled with cross-entropy and SGD(``lr``)."""
    model = build(style, l2=l2, dropout=dropout, keras=keras)
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer=optimizer or keras.optimizers.SGD(lr),
        **compile_kwargs,
    )
    return model


def assert_weights(model, expected, rtol=2e-5, atol=2e-6):
    """Asserts the bag-of-embeddings weights (E, W, b) are close to ``expected``."""
    for got, want in zip(get_weights(model), expected):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def initial_weights(rng):
    """Returns NumPy (E, W, b) with a non-trivial scale."""
    E = rng.normal(size=(VOCAB, DIM)).astype("float32")
    W = rng.normal(size=(DIM, CLASSES)).astype("float32")
    b = rng.normal(size=(CLASSES,)).astype("float32") * 0.1
    return E, W, b


def set_weights(model, E, W, b):
    emb, out = _layers(model)
    emb.embeddings.assign(E)
    out.kernel.assign(W)
    out.bias.assign(b)


def get_weights(model):
    emb, out = _layers(model)
    return [numpy(v) for v in (emb.embeddings, out.kernel, out.bias)]


def numpy(value):
    """Returns a copy of a Keras 3 or tf_keras variable (or tensor) as NumPy."""
    return np.array(keras3.ops.convert_to_numpy(value))


def _layers(model):
    if isinstance(model, BagOfEmbeddings):
        return model.embedding, model.classifier
    return model.get_layer("emb"), model.get_layer("out")


def data(seed=0):
    """Returns ((E, W, b), (x, y, sample_weight)), both drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    return initial_weights(rng), batch(rng)


def batch(rng, size=6):
    """Returns (x, y, sample_weight) with repeated tokens in every row."""
    x = rng.integers(0, VOCAB - 2, size=(size, LENGTH)).astype("int32")
    x[:, 1] = x[:, 0]  # repeated tokens: the sparse path must sum them
    y = rng.integers(0, CLASSES, size=(size,)).astype("int32")
    w = rng.uniform(0.5, 2.0, size=(size,)).astype("float32")
    return x, y, w


# ---- float inputs: Dense(HIDDEN, tanh) -> Dense(CLASSES, softmax) ---------------
def float_inputs(l2=0.0, keras=keras3):
    """Returns a classifier of ``FEATURES`` float inputs (not compiled)."""
    inputs = keras.Input((FEATURES,))
    h = keras.layers.Dense(
        HIDDEN, activation="tanh", name="hidden", kernel_regularizer=_l2(l2, keras)
    )(inputs)
    outputs = keras.layers.Dense(CLASSES, activation="softmax", name="out")(h)
    return keras.Model(inputs, outputs)


def float_batch(rng, size=6):
    """Returns (x, y, sample_weight) for `float_inputs`."""
    x = rng.normal(size=(size, FEATURES)).astype("float32")
    y = rng.integers(0, CLASSES, size=(size,)).astype("int32")
    w = rng.uniform(0.5, 2.0, size=(size,)).astype("float32")
    return x, y, w


# ---- two heads on a shared layer: classification ("cls") and regression ("reg") --
def two_heads(l2=0.0, keras=keras3):
    """Returns a model of ``FEATURES`` floats with outputs [cls, reg] (not compiled)."""
    inputs = keras.Input((FEATURES,))
    h = keras.layers.Dense(HIDDEN, name="shared", kernel_regularizer=_l2(l2, keras))(
        inputs
    )
    cls = keras.layers.Dense(CLASSES, activation="softmax", name="cls")(h)
    reg = keras.layers.Dense(1, name="reg")(h)
    return keras.Model(inputs, [cls, reg])


TWO_HEADS_LOSSES = ["sparse_categorical_crossentropy", "mse"]


def two_heads_batch(rng, size=6):
    """Returns (x, [y_cls, y_reg], sample_weight) for `two_heads`."""
    x, y, w = float_batch(rng, size)
    y_reg = rng.normal(size=(size, 1)).astype("float32") * 3.0
    return x, [y, y_reg], w


def randomize(model, seed, scale=1.0):
    """Sets every weight of ``model`` to N(0, scale^2) draws of ``seed``."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(rng.normal(size=variable.shape).astype("float32") * scale)
