"""Step time of plain, FGM, PGD-3, FreeLB-3 and FreeFGM training, side by side.

A BERT-shaped model (benchmarks/bert_shaped.py: vocab 21128, hidden 128, 2
layers, batch 32 x 64), Adam, ``train_on_batch``; one model per variant, all
in one process. After two warm-up steps each, every round times ``steps``
steps of each variant in turn, so drifts of the machine hit all of them
alike. Reported per variant: the median over rounds of the mean step time,
the fastest round, and both as ratios to the plain step.

Usage:
    python benchmarks/adversaries_step.py                 # TF graph and XLA
    KERAS_BACKEND=jax python benchmarks/adversaries_step.py   # JAX jit
    python benchmarks/adversaries_step.py --quick         # smoke run
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import keras_reg  # noqa: E402
from benchmarks import bert_shaped  # noqa: E402
from keras_reg._compat import keras  # noqa: E402

VARIANTS = {
    "plain": None,
    "fgm": {"method": "fgm", "epsilon": 1.0},
    "pgd3": {"method": "pgd", "epsilon": 1.0, "alpha": 0.3, "steps": 3},
    "freelb3": {"method": "freelb", "epsilon": 1.0, "alpha": 0.3, "steps": 3},
    "free_fgm": {"method": "free_fgm", "epsilon": 1.0},
}


def _step(options, jit_compile):
    keras.utils.set_random_seed(0)
    model = bert_shaped.build()
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer="adam",
        jit_compile=jit_compile,
    )
    if options is not None:
        keras_reg.adversarial_training(model, "Embedding-Token", **options)
    return model.train_on_batch


def time_mode(jit_compile, steps, rounds):
    """Returns the timings of every variant in one mode (graph or jit)."""
    x, y = bert_shaped.batch()
    runs = {name: _step(options, jit_compile) for name, options in VARIANTS.items()}
    for run in runs.values():
        run(x, y)
        run(x, y)
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            for _ in range(steps):
                run(x, y)
            times[name].append((time.perf_counter() - start) / steps)
    median = {name: float(np.median(t)) for name, t in times.items()}
    fastest = {name: float(np.min(t)) for name, t in times.items()}
    backend = keras.backend.backend()
    return {
        "mode": f"{backend} {'jit/XLA' if jit_compile else 'graph/eager'}",
        "median_ms": {n: round(1e3 * t, 1) for n, t in median.items()},
        "median_ratio": {n: round(t / median["plain"], 2) for n, t in median.items()},
        "fastest_ms": {n: round(1e3 * t, 1) for n, t in fastest.items()},
        "fastest_ratio": {
            n: round(t / fastest["plain"], 2) for n, t in fastest.items()
        },
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--modes", nargs="+", choices=("graph", "jit"), default=None)
    args = parser.parse_args()
    steps, rounds = (1, 2) if args.quick else (5, 7)
    modes = args.modes or (
        ["graph"] if keras.backend.backend() == "torch" else ["graph", "jit"]
    )
    report = {
        "backend": keras.backend.backend(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "timing": [time_mode(mode == "jit", steps, rounds) for mode in modes],
        "load_average_at_end": os.getloadavg(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
