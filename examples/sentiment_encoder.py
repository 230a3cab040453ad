"""A small bert4keras-style character transformer, MLM pre-trained on reviews.

The encoder follows BERT's layout with bert4keras's layer names
(``Embedding-Token``, ``Embedding-Position``, ``Embedding-Norm``,
``Transformer-i-MultiHeadSelfAttention[-Norm]``,
``Transformer-i-FeedForward[-Norm]``), so the regularisers find its token
embedding by name, exactly as they would in a bert4keras BERT.

``pretrained_encoder(texts, config)`` pre-trains it with masked language
modelling (BERT's 15% / 80-10-10 masking, dynamic per epoch) on the texts it is
given -- callers pass only training-side texts, never the test split -- and
caches the weights and the vocabulary under ``sentiment_data.cache_dir()``,
keyed by a hash of the config and of the texts, so a second run loads them.
``build_classifier(config, weights)`` then builds a flat classifier (one model,
no nested sub-model, so ``model.get_layer("Embedding-Token")`` works) and loads
the pre-trained weights by layer name.

Usage (pre-trains, or loads the cached weights, and prints the time taken):
    python examples/sentiment_encoder.py [--quick]
"""

import hashlib
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import sentiment_data  # noqa: E402

from keras_reg._compat import keras  # noqa: E402

ops = keras.ops

# Token ids: 0 pad, 1 unknown, 2.. characters (sentiment_data.char_vocabulary),
# then [CLS] and [MASK] after the characters.
CONFIG = {
    "length": 64,  # characters per review, [CLS] included
    "hidden": 128,
    "layers": 2,
    "heads": 4,
    "intermediate": 256,
    "min_count": 2,  # characters seen fewer times map to "unknown"
    "mask_rate": 0.15,
    "max_predictions": 10,  # masked positions scored per review (BERT's trick)
    "pretrain_epochs": 8,
    "pretrain_batch_size": 64,
    "pretrain_learning_rate": 1e-3,
    "seed": 0,
}
# --quick (CI): the same encoder, one epoch of pre-training (its own cache entry).
QUICK = dict(CONFIG, pretrain_epochs=1)


def special_ids(vocabulary):
    """Returns (cls_id, mask_id, vocab_size) for a character vocabulary."""
    cls_id = len(vocabulary) + 2
    return cls_id, cls_id + 1, cls_id + 2


def encode(texts, vocabulary, length):
    """Returns int32 ids (batch, length): [CLS] then the characters, zero-padded."""
    cls_id, _, _ = special_ids(vocabulary)
    ids = np.zeros((len(texts), length), "int32")
    ids[:, 0] = cls_id
    ids[:, 1:] = sentiment_data.encode(texts, vocabulary, length - 1)
    return ids


def _encoder_layers(tokens, config, vocab_size, dropout):
    """Applies the encoder's named layers to int tokens; returns (sequence, mask)."""
    init = keras.initializers.TruncatedNormal(stddev=0.02)
    length, hidden = config["length"], config["hidden"]
    padding = ops.cast(ops.not_equal(tokens, 0), "float32")  # (batch, length)
    # An explicit attention mask: no Keras implicit masks, which a layer whose
    # output is replaced (a perturbed embedding) would drop.
    attention_mask = ops.cast(padding[:, None, :], "bool")
    attention_mask = ops.repeat(attention_mask, length, axis=1)
    h = keras.layers.Embedding(
        vocab_size, hidden, embeddings_initializer=init, name="Embedding-Token"
    )(tokens)
    positions = ops.cumsum(ops.ones_like(tokens), axis=1) - 1  # 0 .. length - 1
    p = keras.layers.Embedding(
        length, hidden, embeddings_initializer=init, name="Embedding-Position"
    )(positions)
    h = keras.layers.Add(name="Embedding-Add")([h, p])
    h = keras.layers.LayerNormalization(epsilon=1e-12, name="Embedding-Norm")(h)
    h = keras.layers.Dropout(dropout, name="Embedding-Dropout")(h)
    for i in range(config["layers"]):
        name = f"Transformer-{i}-MultiHeadSelfAttention"
        a = keras.layers.MultiHeadAttention(
            config["heads"],
            hidden // config["heads"],
            dropout=dropout,
            kernel_initializer=init,
            name=name,
        )(h, h, attention_mask=attention_mask)
        a = keras.layers.Dropout(dropout, name=f"{name}-Dropout")(a)
        h = keras.layers.Add(name=f"{name}-Add")([h, a])
        h = keras.layers.LayerNormalization(epsilon=1e-12, name=f"{name}-Norm")(h)
        name = f"Transformer-{i}-FeedForward"
        f = keras.layers.Dense(
            config["intermediate"],
            activation="gelu",
            kernel_initializer=init,
            name=f"{name}-Inner",
        )(h)
        f = keras.layers.Dense(hidden, kernel_initializer=init, name=name)(f)
        f = keras.layers.Dropout(dropout, name=f"{name}-Dropout")(f)
        h = keras.layers.Add(name=f"{name}-Add")([h, f])
        h = keras.layers.LayerNormalization(epsilon=1e-12, name=f"{name}-Norm")(h)
    return h, padding


def build_mlm(config, vocab_size, dropout=0.1):
    """Returns the pre-training model: (tokens, positions) -> logits at positions."""
    tokens = keras.Input((config["length"],), dtype="int32", name="tokens")
    positions = keras.Input((config["max_predictions"],), dtype="int32")
    h, _ = _encoder_layers(tokens, config, vocab_size, dropout)
    h = ops.take_along_axis(h, ops.expand_dims(positions, -1), axis=1)
    h = keras.layers.Dense(config["hidden"], activation="gelu", name="MLM-Dense")(h)
    h = keras.layers.LayerNormalization(epsilon=1e-12, name="MLM-Norm")(h)
    logits = keras.layers.Dense(vocab_size, name="MLM-Logits")(h)
    return keras.Model([tokens, positions], logits)


def build_classifier(config, vocab_size, weights=None, dropout=0.1, classes=2):
    """Returns tokens -> class probabilities, pre-trained weights loaded by name.

    Pooling: the mean of the encoder's outputs over the real (non-pad)
    characters, [CLS] included (MLM pre-training leaves [CLS] itself untrained).
    """
    tokens = keras.Input((config["length"],), dtype="int32", name="tokens")
    h, padding = _encoder_layers(tokens, config, vocab_size, dropout)
    weights_ = ops.expand_dims(padding, -1)
    pooled = ops.sum(h * weights_, axis=1) / ops.sum(weights_, axis=1)
    pooled = keras.layers.Dropout(dropout, name="Pooler-Dropout")(pooled)
    outputs = keras.layers.Dense(classes, activation="softmax", name="Classifier")(
        pooled
    )
    model = keras.Model(tokens, outputs)
    if weights is not None:
        for layer in model.layers:
            if layer.weights and layer.name in weights:
                layer.set_weights(weights[layer.name])
    return model


def mask_tokens(ids, config, mask_id, rng):
    """BERT masking: returns (inputs, positions, targets, sample_weight)."""
    count = config["max_predictions"]
    inputs = ids.copy()
    positions = np.zeros((len(ids), count), "int32")
    targets = np.zeros((len(ids), count), "int32")
    weight = np.zeros((len(ids), count), "float32")
    for row in range(len(ids)):
        real = np.flatnonzero(ids[row, 1:]) + 1  # characters, not [CLS] or pad
        n = min(count, max(1, int(round(len(real) * config["mask_rate"]))))
        chosen = rng.choice(real, n, replace=False)
        positions[row, :n], targets[row, :n], weight[row, :n] = (
            chosen,
            ids[row, chosen],
            1,
        )
        draw = rng.random(n)
        inputs[row, chosen[draw < 0.8]] = mask_id
        random = chosen[(draw >= 0.8) & (draw < 0.9)]
        inputs[row, random] = rng.integers(2, mask_id - 1, len(random))
    return inputs, positions, targets, weight


# Part of the cache key: bump it when a change of the code changes the weights.
CACHE_VERSION = 1


def _cache_key(texts, config):
    key = json.dumps({"config": config, "version": CACHE_VERSION}, sort_keys=True)
    digest = hashlib.sha256(key.encode())
    for text in texts:
        digest.update(text.encode("utf-8") + b"\n")
    return digest.hexdigest()[:16]


def pretrain(texts, config, verbose=1):
    """MLM pre-training on ``texts``; returns (weights by layer name, vocabulary)."""
    vocabulary = sentiment_data.char_vocabulary(texts, config["min_count"])
    _, mask_id, vocab_size = special_ids(vocabulary)
    ids = encode(texts, vocabulary, config["length"])
    ids = ids[(ids[:, 1:] != 0).sum(axis=1) >= 2]  # something to predict
    keras.utils.set_random_seed(config["seed"])
    rng = np.random.default_rng(config["seed"])
    model = build_mlm(config, vocab_size)
    steps = config["pretrain_epochs"] * int(
        np.ceil(len(ids) / config["pretrain_batch_size"])
    )
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0,
        steps - steps // 10,
        warmup_target=config["pretrain_learning_rate"],
        warmup_steps=steps // 10,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=0.01, clipnorm=1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=["accuracy"],
    )
    for epoch in range(config["pretrain_epochs"]):
        inputs, positions, targets, weight = mask_tokens(ids, config, mask_id, rng)
        history = model.fit(
            [inputs, positions],
            targets,
            sample_weight=weight,
            batch_size=config["pretrain_batch_size"],
            epochs=1,
            shuffle=True,
            verbose=0,
        )
        if verbose:
            logs = {k: round(v[-1], 4) for k, v in history.history.items()}
            print(f"  MLM epoch {epoch + 1}/{config['pretrain_epochs']}: {logs}")
    weights = {
        layer.name: layer.get_weights() for layer in model.layers if layer.weights
    }
    return weights, vocabulary


def pretrained_encoder(texts, config=CONFIG, verbose=1):
    """Returns (weights, vocabulary, info), pre-training only on a cache miss.

    ``info`` says whether the cache was hit, the cache file and the seconds spent.
    """
    path = os.path.join(
        sentiment_data.cache_dir(), f"sentiment_encoder_{_cache_key(texts, config)}.npz"
    )
    start = time.time()
    if os.path.exists(path):
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["__meta__"]))
            weights = {
                name: [data[f"{name}/{i}"] for i in range(n)]
                for name, n in meta["layers"].items()
            }
        return (
            weights,
            meta["vocabulary"],
            {
                "cached": True,
                "path": path,
                "seconds": time.time() - start,
                "pretrain_seconds": meta["seconds"],
            },
        )
    if verbose:
        print(f"MLM pre-training on {len(texts)} texts (cached afterwards) ...")
    weights, vocabulary = pretrain(texts, config, verbose)
    seconds = time.time() - start
    arrays = {
        f"{name}/{i}": w for name, ws in weights.items() for i, w in enumerate(ws)
    }
    meta = {
        "layers": {name: len(ws) for name, ws in weights.items()},
        "vocabulary": vocabulary,
        "config": config,
        "seconds": seconds,
    }
    tmp = path + ".tmp.npz"
    np.savez(tmp, __meta__=json.dumps(meta, ensure_ascii=False), **arrays)
    os.replace(tmp, path)
    return (
        weights,
        vocabulary,
        {
            "cached": False,
            "path": path,
            "seconds": seconds,
            "pretrain_seconds": seconds,
        },
    )


def pretraining_texts(texts, labels, test_size=5000):
    """Every review outside the fixed test split (labels are not used)."""
    test, labeled, unlabeled = sentiment_data.split(labels, test_size, 0, 0)
    del labeled
    return [texts[i] for i in np.sort(unlabeled)]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    texts, labels, _ = sentiment_data.load_reviews()
    corpus = pretraining_texts(texts, labels)
    _, vocabulary, info = pretrained_encoder(corpus, QUICK if args.quick else CONFIG)
    print(f"{len(vocabulary)} characters; {info}")
