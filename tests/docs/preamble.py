# What every code example in these pages may assume: a tiny compiled text
# classifier `model` whose embedding layer is named "Embedding-Token" (as in
# bert4keras), token ids `x`, labels `y`, unlabelled token ids `x_unlabeled`,
# and float features `features` / `labels` for the examples on float inputs.
import keras
import numpy as np

import keras_reg  # noqa: F401  (what the examples use)

VOCABULARY, LENGTH, CLASSES = 50, 8, 2


def build_model(dropout=0.0):
    """A compiled classifier: token ids -> Embedding-Token -> mean -> softmax."""
    tokens = keras.Input((LENGTH,), dtype="int32")
    h = keras.layers.Embedding(VOCABULARY, 8, name="Embedding-Token")(tokens)
    h = keras.layers.GlobalAveragePooling1D()(h)
    h = keras.layers.Dropout(dropout)(h)
    h = keras.layers.Dense(16, activation="relu")(h)
    outputs = keras.layers.Dense(CLASSES, activation="softmax")(h)
    model = keras.Model(tokens, outputs)
    model.compile(
        optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    return model


rng = np.random.default_rng(0)
x = rng.integers(1, VOCABULARY, size=(64, LENGTH))
y = rng.integers(0, CLASSES, size=(64,))
x_unlabeled = rng.integers(1, VOCABULARY, size=(256, LENGTH))
features = rng.normal(size=(64, 4)).astype("float32")
labels = (features[:, 0] > 0).astype("int32")
model = build_model()
