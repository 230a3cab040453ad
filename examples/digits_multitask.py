"""Two heads, losses five orders of magnitude apart: loss balancing on the digits.

``load_digits`` (1,797 real 8x8 scans, shipped with scikit-learn), split once
into 1,347 training and 450 test images (stratified, ``random_state=0``). One
MLP with a shared trunk (64 -> 64 -> 32, ReLU, layer ``"trunk"``) and two heads:

- ``digit``: the class (softmax, sparse categorical cross-entropy; about 2.3 at
  initialisation);
- ``ink``: the image's total ink, the sum of its 64 raw pixel values (0-16
  each; mean about 313, std about 34), in raw units (mean squared error; about
  1e5 at initialisation).

Compiled with fixed equal weights (Keras's plain sum) and then with each
`keras_reg.balance_losses` method; the same Adam (1e-3), batch 32, 30 epochs,
initial weights and batch order per seed. For reference, the same model trained
on one head's loss alone (the other head's loss None). Prints test accuracy
of ``digit`` and test RMSE of ``ink`` (mean +- std over seeds) and writes
them to ``results/digits_multitask.md``.

Usage:
    python examples/digits_multitask.py            # 3 seeds, ~5 min on 2 CPUs
    python examples/digits_multitask.py --quick    # 1 seed, 10 epochs (~1 min)
    KERAS_BACKEND=jax python examples/digits_multitask.py   # or torch
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

BATCH_SIZE = 32
SINGLE = {"digit loss only (reference)": "digit", "ink loss only (reference)": "ink"}
METHODS = {
    "fixed equal weights (plain Keras)": None,
    "realtime: 1 / sg(L_i)": ("realtime", {}),
    "realtime, gamma = 0.5": ("realtime", {"gamma": 0.5}),
    "initial: 1 / L_i(init)": ("initial", "data"),
    "prior: 1 / L_i(prior)": ("prior", "targets"),
    "gradient: 1 / norm of grad_h L_i": ("gradient", {"shared_layer": "trunk"}),
    "pareto (MGDA, min-norm)": ("pareto", {"shared_layer": "trunk"}),
}


def load_split():
    """The fixed train/test split: pixels in [0, 1], labels, raw ink totals."""
    digits = load_digits()
    ink = digits.data.sum(axis=1, keepdims=True).astype("float32")
    x = (digits.data / 16.0).astype("float32")
    return train_test_split(
        x,
        digits.target.astype("int32"),
        ink,
        test_size=450,
        stratify=digits.target,
        random_state=0,
    )


def build(seed, only=None):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((64,))
    h = keras.layers.Dense(64, activation="relu")(inputs)
    h = keras.layers.Dense(32, activation="relu", name="trunk")(h)
    digit = keras.layers.Dense(10, activation="softmax", name="digit")(h)
    ink = keras.layers.Dense(1, name="ink")(h)
    model = keras.Model(inputs, {"digit": digit, "ink": ink})
    losses = {"digit": "sparse_categorical_crossentropy", "ink": "mse"}
    if only is not None:
        losses = {name: loss if name == only else None for name, loss in losses.items()}
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=losses)
    return model


def train(method, x, y, seed, epochs):
    if isinstance(method, str):  # one head's loss only
        model = build(seed, only=method)
    else:
        model = build(seed)
    if method is not None and not isinstance(method, str):
        name, options = method
        if options == "data":
            options = {"x": x, "y": y}
        elif options == "targets":
            options = {"y": y}
        keras_reg.balance_losses(model, name, **options)
    keras.utils.set_random_seed(seed)  # the same batch order for every method
    history = model.fit(x, y, batch_size=BATCH_SIZE, epochs=epochs, verbose=0)
    return model, history.history


def scores(model, x, digits, ink):
    predicted = model.predict(x, verbose=0)
    accuracy = float(np.mean(np.argmax(predicted["digit"], -1) == digits))
    rmse = float(np.sqrt(np.mean((predicted["ink"] - ink) ** 2)))
    return accuracy, rmse


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 10 epochs")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--output-dir", default="results")
    args = parser.parse_args()
    seeds = args.seeds or (1 if args.quick else 3)
    epochs = args.epochs or (10 if args.quick else 30)

    x_train, x_test, d_train, d_test, ink_train, ink_test = load_split()
    y_train = {"digit": d_train, "ink": ink_train}
    initial = build(0).evaluate(x_train, y_train, verbose=0, return_dict=True)
    runs = dict(METHODS, **SINGLE)
    results = {name: [] for name in runs}
    seconds = {name: 0.0 for name in runs}
    start = time.time()
    for seed in range(seeds):
        for name, method in runs.items():
            began = time.time()
            model, history = train(method, x_train, y_train, seed, epochs)
            seconds[name] += time.time() - began
            results[name].append(scores(model, x_test, d_test, ink_test))
            factors = ""
            if isinstance(method, tuple):
                factors = ", last-epoch factors digit {:.3g} ink {:.3g}".format(
                    history["digit_loss_weight"][-1], history["ink_loss_weight"][-1]
                )
            print(
                f"seed {seed} {name}: accuracy {results[name][-1][0]:.4f}, "
                f"ink RMSE {results[name][-1][1]:.2f}{factors} "
                f"({time.time() - began:.1f} s)",
                flush=True,
            )

    table = [
        f"Digits: 1,347 train / 450 test; MLP 64-64-32 trunk + heads `digit` "
        f"(10 classes, CE) and `ink` (raw pixel sum, MSE); Adam 1e-3, batch "
        f"{BATCH_SIZE}, {epochs} epochs; {seeds} seed(s); "
        f"{keras.backend.backend()} backend ({time.time() - start:.0f} s). "
        f"Losses at initialisation (seed 0): digit {initial['digit_loss']:.3g}, "
        f"ink {initial['ink_loss']:.3g}. Test ink: mean "
        f"{ink_test.mean():.0f}, std {ink_test.std():.1f}.",
        "",
        "| weighting | digit test accuracy (mean +- std) | ink test RMSE "
        "(mean +- std) | per seed (accuracy / RMSE) | s per run |",
        "|---|---|---|---|---|",
    ]
    for name, values in results.items():
        accuracy, rmse = np.array(values).T
        per_seed = ", ".join(f"{a:.3f} / {r:.2f}" for a, r in values)
        cells = [
            f"{accuracy.mean():.3f} +- {accuracy.std():.3f}",
            f"{rmse.mean():.2f} +- {rmse.std():.2f}",
        ]
        if name in SINGLE:  # the other head is untrained
            cells[0 if SINGLE[name] == "ink" else 1] = "(not trained)"
        table.append(
            f"| {name} | {cells[0]} | {cells[1]} | {per_seed} | "
            f"{seconds[name] / seeds:.0f} |"
        )
    print("\n".join(table))
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "digits_multitask.md"), "w") as f:
        f.write("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
