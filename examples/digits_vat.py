"""Semi-supervised VAT on scikit-learn's 8x8 digits: 100 labels, the rest unlabelled.

``load_digits`` (1,797 real scans, shipped with scikit-learn), pixels scaled to
[0, 1], split once into 1,347 training and 450 test images (stratified,
``random_state=0``). Per seed, 10 training images per class keep their label;
the other 1,247 are passed as ``unlabeled`` to

    keras_reg.virtual_adversarial_training(model, epsilon=0.5, xi=0.01,
                                           unlabeled=x_unlabeled,
                                           unlabeled_batch_size=128,
                                           norm="example")

which perturbs the model's inputs (the 64 pixels). The same MLP (256-256,
ReLU, Adam 1e-3, 1,500 steps of 32 labels) is also trained on the 100 labels
alone (baseline). Prints test accuracy (mean +- std over seeds) and the mean
test KL(p(x) || p(x + r)) at VAT's adversarial direction r (the smoothness VAT
optimizes), writes them to ``results/digits_vat.md``, and draws a few test
digits with each model's adversarial direction in ``results/digits_vat.png``.

Usage:
    python examples/digits_vat.py            # 3 seeds, ~1-1.5 min on 2 CPUs
    python examples/digits_vat.py --quick    # 1 seed, 500 steps (~20-40 s)
    KERAS_BACKEND=jax python examples/digits_vat.py   # or torch (slower)
"""

import argparse
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import keras_reg  # noqa: E402
from keras_reg._compat import keras  # noqa: E402

ops = keras.ops

LABELS_PER_CLASS = 10
BATCH_SIZE = 32


def load_split():
    """The fixed train/test split of the digits, pixels in [0, 1]."""
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    return train_test_split(
        x, digits.target, test_size=450, stratify=digits.target, random_state=0
    )


def choose_labels(y_train, seed):
    """Indices of the labelled (10 per class) and unlabelled training images."""
    rng = np.random.default_rng(seed)
    labeled = np.concatenate(
        [
            rng.choice(np.flatnonzero(y_train == c), LABELS_PER_CLASS, replace=False)
            for c in range(10)
        ]
    )
    return labeled, np.setdiff1d(np.arange(len(y_train)), labeled)


def build_mlp(width=256):
    inputs = keras.Input((64,))
    h = keras.layers.Dense(width, activation="relu")(inputs)
    h = keras.layers.Dense(width, activation="relu")(h)
    outputs = keras.layers.Dense(10, activation="softmax")(h)
    return keras.Model(inputs, outputs)


def train(x_labeled, y_labeled, x_unlabeled, seed, steps, learning_rate, vat):
    """Trains one model for ``steps`` steps of 32 labels (+ VAT if given)."""
    keras.utils.set_random_seed(seed)
    model = build_mlp()
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer=keras.optimizers.Adam(learning_rate),
        metrics=["accuracy"],
    )
    if vat is not None and vat.get("free"):
        # No power-iteration pass: the direction is carried from the last
        # time each unlabelled example was drawn (xi does not apply).
        keras_reg.free_virtual_adversarial_training(
            model,
            epsilon=vat["epsilon"],
            unlabeled=x_unlabeled,
            unlabeled_batch_size=vat["unlabeled_batch_size"],
            norm="example",
            seed=seed,
        )
    elif vat is not None:
        keras_reg.virtual_adversarial_training(
            model,
            epsilon=vat["epsilon"],
            xi=vat["xi"],
            unlabeled=x_unlabeled,
            unlabeled_batch_size=vat["unlabeled_batch_size"],
            norm="example",
            seed=seed,
        )
    # The 100 labels repeated to `steps` batches, shuffled: one epoch, one `fit`.
    repeats = -(-steps * BATCH_SIZE // len(x_labeled))
    x = np.tile(x_labeled, (repeats, 1))[: steps * BATCH_SIZE]
    y = np.tile(y_labeled, repeats)[: steps * BATCH_SIZE]
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=1, verbose=0)
    return model


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


def input_gradient(function, x):
    """The gradient of a scalar ``function`` at the tensor ``x``, on any backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            value = function(x)
        return tape.gradient(value, x)
    if backend == "jax":
        import jax

        return jax.grad(function)(x)
    x = x.detach().requires_grad_(True)  # torch
    function(x).backward()
    return x.grad


def virtual_adversarial(model, x, epsilon, xi=0.01, seed=0):
    """Per example: VAT's direction r (||r|| = epsilon) and KL(p(x) || p(x + r)).

    One power iteration from a fixed random start, as in training: the KL is
    the "local distributional smoothness" that VAT drives down (lower: the
    prediction moves less under the worst small perturbation).
    """

    def unit(d):
        return d / ops.maximum(ops.norm(d, axis=1, keepdims=True), 1e-12)

    def kl(p, q):
        p, q = ops.clip(p, 1e-7, 1.0), ops.clip(q, 1e-7, 1.0)
        return ops.sum(p * (ops.log(p) - ops.log(q)), axis=1)

    x = ops.convert_to_tensor(x)
    p = ops.stop_gradient(model(x, training=False))
    probe = xi * unit(keras.random.normal(ops.shape(x), seed=seed))
    d = input_gradient(lambda d: ops.sum(kl(p, model(x + d, training=False))), probe)
    r = epsilon * unit(d)
    divergence = kl(p, model(x + r, training=False))
    return ops.convert_to_numpy(r), ops.convert_to_numpy(divergence)


def plot_directions(path, x, y, models, titles, epsilon, count=8):
    """Test digits and each model's virtual adversarial direction r."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = x[:count]
    figure, axes = plt.subplots(
        1 + len(models), count, figsize=(1.3 * count, 1.5 * (1 + len(models)))
    )
    for column in range(count):
        axes[0, column].imshow(x[column].reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
        axes[0, column].set_title(f"label {y[column]}", fontsize=8)
    for row, (model, title) in enumerate(zip(models, titles), start=1):
        r, divergence = virtual_adversarial(model, x, epsilon)
        prediction = np.argmax(model.predict(x + r, verbose=0), -1)
        limit = np.abs(r).max()
        for column in range(count):
            axes[row, column].imshow(
                r[column].reshape(8, 8), cmap="bwr", vmin=-limit, vmax=limit
            )
            axes[row, column].set_title(
                f"KL {divergence[column]:.2f} -> {prediction[column]}", fontsize=8
            )
        axes[row, 0].set_ylabel(title, fontsize=9)
    axes[0, 0].set_ylabel("test digit", fontsize=9)
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(
        f"virtual adversarial direction r (||r|| = {epsilon}); "
        "title: KL(p(x) || p(x + r)) -> class predicted at x + r",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, fewer steps")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--epsilon", type=float, default=0.5)
    parser.add_argument("--xi", type=float, default=0.01)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--unlabeled-batch-size", type=int, default=128)
    parser.add_argument("--output-dir", default="results")
    parser.add_argument(
        "--free",
        action="store_true",
        help="also train FreeVAT (no power-iteration pass)",
    )
    args = parser.parse_args()
    seeds = args.seeds or (1 if args.quick else 3)
    steps = args.steps or (500 if args.quick else 1500)
    vat = {
        "epsilon": args.epsilon,
        "xi": args.xi,
        "unlabeled_batch_size": args.unlabeled_batch_size,
    }
    vat_name = f"VAT (eps={args.epsilon}, xi={args.xi})"

    x_train, x_test, y_train, y_test = load_split()
    rows = {"baseline (100 labels)": [], vat_name: []}
    variants = [None, vat]
    if args.free:
        rows[f"FreeVAT (eps={args.epsilon})"] = []
        variants.append(dict(vat, free=True))
    smoothness = {name: [] for name in rows}
    start = time.time()
    for seed in range(seeds):
        labeled, unlabeled = choose_labels(y_train, seed)
        models = []
        for name, settings in zip(rows, variants):
            began = time.time()
            model = train(
                x_train[labeled],
                y_train[labeled],
                x_train[unlabeled],
                seed,
                steps,
                args.learning_rate,
                settings,
            )
            rows[name].append(accuracy(model, x_test, y_test))
            smoothness[name].append(
                float(np.mean(virtual_adversarial(model, x_test, args.epsilon)[1]))
            )
            models.append(model)
            print(
                f"seed {seed} {name}: test accuracy {rows[name][-1]:.4f}, "
                f"virtual adversarial KL {smoothness[name][-1]:.3f} "
                f"({time.time() - began:.1f} s)",
                flush=True,
            )
        if seed == 0:
            os.makedirs(args.output_dir, exist_ok=True)
            plot_directions(
                os.path.join(args.output_dir, "digits_vat.png"),
                x_test,
                y_test,
                models,
                ["baseline r", "VAT r", "FreeVAT r"][: len(models)],
                args.epsilon,
            )

    table = [
        f"Digits (8x8): {LABELS_PER_CLASS * 10} labelled, "
        f"{len(x_train) - LABELS_PER_CLASS * 10} unlabelled, {len(x_test)} test; "
        f"MLP 256-256; {steps} steps; {seeds} seed(s) ({time.time() - start:.0f} s)",
        "",
        "| training | test accuracy (mean +- std) | per seed | "
        f"test KL at eps={args.epsilon} (mean +- std) |",
        "|---|---|---|---|",
    ]
    for name, values in rows.items():
        table.append(
            f"| {name} | {np.mean(values):.3f} +- {np.std(values):.3f} | "
            + ", ".join(f"{v:.3f}" for v in values)
            + f" | {np.mean(smoothness[name]):.3f} +- {np.std(smoothness[name]):.3f} |"
        )
    print("\n".join(table))
    with open(os.path.join(args.output_dir, "digits_vat.md"), "w") as f:
        f.write("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
