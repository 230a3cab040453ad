"""Step time of a small CNN with spectral normalisation vs plain, side by side.

The CNN: 28x28x1 input, Conv2D(16, 3)-ReLU, Conv2D(32, 3)-ReLU, MaxPool 2,
Dense(64)-ReLU, Dense(10); batch 32, Adam, ``train_on_batch``. Variants, each
on all four kernels:

- plain;
- ``constraints.SpectralNorm(1.0)``: after each update, the certified bound
  (Gram matrices of size min(m, n) = 9, 32, 64, 10, squared 11-12 times);
- ``layers.SpectralNormalization`` (1 power iteration): two matrix-vector
  products per kernel and the division of W by sigma, forward and backward;
- ``regularizers.SpectralNormRegularizer(1e-3)`` and ``regularizers.WEISSI(1e-3)``
  for reference.

The variants are interleaved (benchmarks/timing.py): each round times a few
steps of every variant in turn, and the ratio to plain is taken within the
round, so a load change on a shared machine hits both sides of a ratio alike;
reported: the median ratio over rounds and its interquartile range. Graph mode
and XLA on TensorFlow, jit on JAX, eager on PyTorch.

Usage:
    python benchmarks/spectral_step.py            # ~1-2 minutes on 2 CPU cores
    python benchmarks/spectral_step.py --quick
    KERAS_BACKEND=jax python benchmarks/spectral_step.py   # (or torch)
"""

import argparse
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from benchmarks import timing  # noqa: E402
from keras_reg import constraints, layers, regularizers  # noqa: E402
from keras_reg._compat import keras  # noqa: E402

VARIANTS = ("plain", "constraint", "wrapper", "spectral_penalty", "weissi")


def _model(variant, jit_compile):
    keras.utils.set_random_seed(0)
    options = {}
    if variant == "constraint":
        options = {"kernel_constraint": constraints.SpectralNorm(1.0)}
    elif variant == "spectral_penalty":
        options = {"kernel_regularizer": regularizers.SpectralNormRegularizer(1e-3)}
    elif variant == "weissi":
        options = {"kernel_regularizer": regularizers.WEISSI(1e-3)}

    def wrap(layer):
        return layers.SpectralNormalization(layer) if variant == "wrapper" else layer

    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            wrap(keras.layers.Conv2D(16, 3, activation="relu", **options)),
            wrap(keras.layers.Conv2D(32, 3, activation="relu", **options)),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            wrap(keras.layers.Dense(64, activation="relu", **options)),
            wrap(keras.layers.Dense(10, **options)),
        ]
    )
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer="adam",
        jit_compile=jit_compile,
    )
    return model


def paired_ratios(variants, x, y, steps, rounds):
    """Per round: each variant's median step time; ratios to plain per round."""
    per_round = [
        timing.interleaved_medians(variants, x, y, steps, rounds=1)
        for _ in range(rounds)
    ]
    row = {}
    for name in VARIANTS:
        row[f"{name}_ms"] = 1e3 * float(np.median([r[name] for r in per_round]))
    for name in VARIANTS[1:]:
        ratios = [r[name] / r["plain"] for r in per_round]
        row[f"{name}_ratio"] = float(np.median(ratios))
        row[f"{name}_ratio_iqr"] = [float(q) for q in np.percentile(ratios, [25, 75])]
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default="results/benchmark_spectral.json")
    args = parser.parse_args()
    steps, rounds = (2, 2) if args.quick else (5, 15)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, size=32)
    backend = keras.backend.backend()
    report = {
        "machine": f"{os.cpu_count()} CPU cores",
        "backend": backend,
        "keras": keras.__version__,
        "timing": [],
    }
    modes = timing.modes(backend)
    for jit in modes:
        variants = {name: _model(name, jit).train_on_batch for name in VARIANTS}
        row = {"mode": f"{backend} {'jit/XLA' if jit else 'graph/eager'}"}
        row.update(paired_ratios(variants, x, y, steps, rounds))
        report["timing"].append(row)
        print(json.dumps(row, indent=2), flush=True)
    timing.write_report(report, args.output, echo=False)


if __name__ == "__main__":
    main()
