"""Tiny bag-of-embeddings classifiers in the three Keras model styles."""

import numpy as np

from keras_reg._compat import keras

VOCAB, DIM, CLASSES, LENGTH = 11, 4, 3, 5


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


def _l2(l2):
    return keras.regularizers.L2(l2) if l2 else None


def build(style, l2=0.0, dropout=0.0):
    """Returns a built model of ``style``: sequential, functional or subclassed."""
    if style == "subclassed":
        model = BagOfEmbeddings(l2=l2, dropout=dropout)
        model(np.zeros((1, LENGTH), "int32"))
        return model
    layers = [
        keras.layers.Embedding(VOCAB, DIM, name="emb", embeddings_regularizer=_l2(l2)),
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
    return [
        keras.ops.convert_to_numpy(v) for v in (emb.embeddings, out.kernel, out.bias)
    ]


def _layers(model):
    if isinstance(model, BagOfEmbeddings):
        return model.embedding, model.classifier
    return model.get_layer("emb"), model.get_layer("out")


def batch(rng, size=6):
    """Returns (x, y, sample_weight) with repeated tokens in every row."""
    x = rng.integers(0, VOCAB - 2, size=(size, LENGTH)).astype("int32")
    x[:, 1] = x[:, 0]  # repeated tokens: the sparse path must sum them
    y = rng.integers(0, CLASSES, size=(size,)).astype("int32")
    w = rng.uniform(0.5, 2.0, size=(size,)).astype("float32")
    return x, y, w
