"""A BERT-shaped Keras 3 classifier for benchmarks (random weights, no download)."""

import numpy as np

from keras_reg._compat import keras


class PositionEmbedding(keras.layers.Layer):
    """Adds a learned (length, hidden) position embedding."""

    def build(self, input_shape):
        self.positions = self.add_weight(
            shape=tuple(input_shape[1:]), initializer="glorot_uniform", name="positions"
        )

    def call(self, h):
        return h + self.positions


def transformer_block(h, hidden, heads, name):
    attention = keras.layers.MultiHeadAttention(
        heads, hidden // heads, name=f"{name}-attention"
    )(h, h)
    h = keras.layers.LayerNormalization(name=f"{name}-norm1")(h + attention)
    ffn = keras.layers.Dense(4 * hidden, activation="gelu", name=f"{name}-ffn1")(h)
    ffn = keras.layers.Dense(hidden, name=f"{name}-ffn2")(ffn)
    return keras.layers.LayerNormalization(name=f"{name}-norm2")(h + ffn)


def build(vocab=21128, hidden=128, layers=2, heads=2, length=64, classes=2):
    """Returns an uncompiled BERT-shaped classifier with embedding 'Embedding-Token'."""
    tokens = keras.Input((length,), dtype="int32", name="Input-Token")
    h = keras.layers.Embedding(vocab, hidden, name="Embedding-Token")(tokens)
    h = PositionEmbedding(name="Embedding-Position")(h)
    h = keras.layers.LayerNormalization(name="Embedding-Norm")(h)
    for i in range(layers):
        h = transformer_block(h, hidden, heads, name=f"Transformer-{i}")
    pooled = keras.layers.GlobalAveragePooling1D()(h)
    outputs = keras.layers.Dense(classes, activation="softmax")(pooled)
    return keras.Model(tokens, outputs, name="bert_shaped")


def batch(vocab=21128, size=32, length=64, classes=2, seed=0):
    """Returns a random (tokens, labels) batch."""
    rng = np.random.default_rng(seed)
    x = rng.integers(1, vocab, size=(size, length)).astype("int32")
    y = rng.integers(0, classes, size=(size,)).astype("int32")
    return x, y


def compiled(jit_compile, regularizer=None):
    """Returns `build`'s model (seed 0) compiled with Adam, ``regularizer`` installed.

    Args:
        jit_compile: Compile the train step with XLA.
        regularizer: What `keras_reg.install_regularizer` takes, or None.
    """
    import keras_reg

    keras.utils.set_random_seed(0)
    model = build()
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer="adam",
        jit_compile=jit_compile,
    )
    if regularizer is not None:
        keras_reg.install_regularizer(model, regularizer)
    return model
