"""Multilabel softmax cross-entropy vs per-class sigmoid BCE on real digits, + flooding.

Two multilabel tasks derived from scikit-learn's 8x8 handwritten digits (real
scans shipped with scikit-learn, no download; train and test use disjoint
halves of the scans):

* ``attributes``: 4 labels per digit: {even, greater than 4, prime, has a closed
  loop (0, 6, 8, 9)}; 0 to 3 positives (the digit 1 has an empty label set).
* ``slots``: 1 to 4 digits drawn into a strip of 4 slots (8x32 pixels); one label
  per (slot, digit) pair, 40 labels with 1 to 4 positives: the imbalanced,
  variable-cardinality setting (about 6% positives) the loss was designed for.

Each task trains the same MLP with (a) `MultilabelCategoricalCrossentropy`
(dense labels), (b) `SparseMultilabelCategoricalCrossentropy` (slots task;
labels = positive indices, class 0 = padding) and (c) per-class sigmoid binary
cross-entropy on logits. All predict a class when its logit is > 0. Test
micro-F1 and exact-match (subset) accuracy are reported after a short and a
longer training budget, mean +- std over seeds. A last section trains the
attribute task on 150 digits to (near) zero training loss and compares plain
training with `Flooding` at two levels.

Usage:
    python examples/multilabel_softmax_ce.py           # 3 seeds, ~1.5-2 min on 2 CPUs
    python examples/multilabel_softmax_ce.py --quick   # smoke test: 1 seed, 2 epochs
    KERAS_BACKEND=jax python examples/multilabel_softmax_ce.py
"""

import argparse
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split

from keras_reg import losses, metrics
from keras_reg._compat import keras

ops = keras.ops

PRIMES = {2, 3, 5, 7}
LOOPS = {0, 6, 8, 9}


def digit_attributes(digits):
    return np.stack(
        [
            digits % 2 == 0,
            digits > 4,
            np.isin(digits, list(PRIMES)),
            np.isin(digits, list(LOOPS)),
        ],
        axis=1,
    ).astype("float32")


def make_strips(images, digits, count, rng, slots=4):
    """Strips with 1..slots digits in random slots; label 10 * slot + digit."""
    x = np.zeros((count, 8, 8 * slots), "float32")
    y = np.zeros((count, 10 * slots), "float32")
    for n in range(count):
        k = rng.integers(1, slots + 1)
        chosen = rng.choice(slots, k, replace=False)
        for slot, pick in zip(chosen, rng.integers(0, len(images), k)):
            x[n, :, 8 * slot : 8 * slot + 8] = images[pick]
            y[n, 10 * slot + digits[pick]] = 1.0
    return x.reshape(count, -1), y


def to_indices(y_dense):
    """Positive classes as indices shifted by 1, padded with 0 (mask_zero)."""
    width = int(y_dense.sum(1).max())
    out = np.zeros((len(y_dense), width), "int32")
    for row, labels in enumerate(y_dense):
        positives = np.flatnonzero(labels) + 1
        out[row, : len(positives)] = positives
    return out


def load_tasks(split_seed=0):
    data = load_digits()
    x = (data.data / 16.0).astype("float32")
    images = data.images / 16.0
    idx_train, idx_test = train_test_split(
        np.arange(len(x)), test_size=0.5, random_state=split_seed, stratify=data.target
    )
    rng = np.random.default_rng(split_seed)
    strips_train = make_strips(images[idx_train], data.target[idx_train], 1600, rng)
    strips_test = make_strips(images[idx_test], data.target[idx_test], 1600, rng)
    attributes = digit_attributes(data.target)
    return {
        "attributes": (
            (x[idx_train], attributes[idx_train]),
            (x[idx_test], attributes[idx_test]),
        ),
        "slots": (strips_train, strips_test),
    }


def mlp(inputs, outputs, hidden=128):
    return keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(outputs),
        ]
    )


LOSSES = {
    "softmax-CE (ours)": lambda: losses.MultilabelCategoricalCrossentropy(),
    "softmax-CE sparse": lambda: losses.SparseMultilabelCategoricalCrossentropy(
        mask_zero=True
    ),
    "sigmoid BCE": lambda: keras.losses.BinaryCrossentropy(from_logits=True),
}


def evaluate(model, test, sparse):
    x_test, y_test = test
    logits = ops.convert_to_numpy(model(x_test, training=False))  # no predict trace
    if sparse:
        logits = logits[:, 1:]
    predicted = ops.convert_to_numpy(metrics.multilabel_predictions(logits))
    test_loss = losses.multilabel_categorical_crossentropy(y_test, logits)
    return {
        "micro_f1": f1_score(y_test, predicted, average="micro", zero_division=0),
        "exact": float(np.mean(np.all(predicted == y_test, axis=1))),
        "test_loss": float(np.mean(ops.convert_to_numpy(test_loss))),
    }


def run(train, test, loss_name, seed, budgets, loss=None, repeat=1):
    """Trains one model; returns test metrics after each cumulative epoch budget."""
    x_train, y_train = train
    sparse = loss_name == "softmax-CE sparse"
    keras.utils.set_random_seed(seed)
    outputs = y_train.shape[1] + (1 if sparse else 0)  # class 0 = padding
    model = mlp(x_train.shape[1], outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss=loss or LOSSES[loss_name]()
    )
    labels = to_indices(y_train) if sparse else y_train
    x_fit, labels = np.repeat(x_train, repeat, 0), np.repeat(labels, repeat, 0)
    results, done = [], 0
    for budget in budgets:
        history = model.fit(
            x_fit, labels, batch_size=64, epochs=budget - done, verbose=0
        )
        done = budget
        results.append(
            {**evaluate(model, test, sparse), "train_loss": history.history["loss"][-1]}
        )
    return results


def summarise(results, key):
    values = np.array([r[key] for r in results])
    return f"{values.mean():.3f} +- {values.std():.3f}"


def compare_losses(tasks, seeds, budgets):
    header = " | ".join(f"F1 / exact @{b} ep" for b in budgets)
    print(f"| task | loss | {header} |")
    print("|---|---|" + "---|" * len(budgets))
    for task, (train, test) in tasks.items():
        for name in LOSSES:
            if name == "softmax-CE sparse" and task != "slots":
                continue
            runs = [run(train, test, name, seed, budgets) for seed in seeds]
            cells = [
                summarise([r[i] for r in runs], "micro_f1")
                + " / "
                + summarise([r[i] for r in runs], "exact")
                for i in range(len(budgets))
            ]
            print(f"| {task} | {name} | " + " | ".join(cells) + " |", flush=True)


def flooding_demo(tasks, seeds, passes, levels, train_size=150):
    (x_train, y_train), test = tasks["attributes"]
    small = (x_train[:train_size], y_train[:train_size])
    print(
        f"\nFlooding: attributes task, {train_size} training digits, {passes} passes,"
        " softmax-CE"
    )
    print(
        "| flood level b | final train loss | test loss | test micro-F1 | test exact |"
    )
    print("|---|---|---|---|---|")
    for level in [0.0, *levels]:
        results = []
        for seed in seeds:
            loss = losses.MultilabelCategoricalCrossentropy()
            if level > 0:
                loss = losses.Flooding(loss, level)
            # One epoch = 10 passes over the small set (fewer per-epoch overheads).
            (result,) = run(
                small, test, "flood", seed, [passes // 10], loss=loss, repeat=10
            )
            results.append(result)
        keys = ("train_loss", "test_loss", "micro_f1", "exact")
        label = "none" if level == 0 else level
        print(f"| {label} | " + " | ".join(summarise(results, k) for k in keys) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, few epochs")
    args = parser.parse_args()
    seeds = [0] if args.quick else [0, 1, 2]
    budgets = [2] if args.quick else [10, 30]
    start = time.time()
    tasks = load_tasks()
    print(
        f"Keras {keras.__version__}, backend {keras.backend.backend()}, seeds {seeds}"
    )
    compare_losses(tasks, seeds, budgets)
    if args.quick:
        flooding_demo(tasks, seeds, 20, levels=[0.05])
    else:
        flooding_demo(tasks, seeds, 150, levels=[0.02, 0.05])
    print(f"\n{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
