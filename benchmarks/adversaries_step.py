"""Step time of plain, FGM, PGD-3, FreeLB-3 and FreeFGM training, side by side.

A BERT-shaped model (benchmarks/bert_shaped.py: vocab 21128, hidden 128, 2
layers, batch 32 x 64), Adam, ``train_on_batch``; one model per variant, all
in one process. After two warm-up steps each, every round times ``steps``
steps of each variant in turn, so drifts of the machine hit all of them
alike. Reported per variant: the median over rounds of the mean step time,
the fastest round, and both as ratios to the plain step (`timing.summary`);
on JAX also XLA's FLOP count over the plain step's. Writes
results/benchmark_adversaries_<backend>.json.

Usage:
    python benchmarks/adversaries_step.py                 # TF graph and XLA
    KERAS_BACKEND=jax python benchmarks/adversaries_step.py   # JAX jit (+ XLA FLOPs)
    KERAS_BACKEND=torch python benchmarks/adversaries_step.py # PyTorch eager
    python benchmarks/adversaries_step.py --quick         # smoke run
"""

import argparse
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras_reg  # noqa: E402
from benchmarks import bert_shaped, timing  # noqa: E402
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
    times = timing.interleaved_times(runs, x, y, steps, rounds)
    backend = keras.backend.backend()
    result = timing.summary(
        times, f"{backend} {'jit/XLA' if jit_compile else 'graph/eager'}"
    )
    if backend == "jax":
        result.update(timing.flops_ratios(runs, x, y))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--modes",
        choices=("graph", "jit", "both"),
        default=None,
        help="TensorFlow only: graph mode, XLA, or both (the default).",
    )
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    steps, rounds = (1, 2) if args.quick else (5, 7)
    backend = keras.backend.backend()
    report = {
        "backend": backend,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "timing": [
            time_mode(jit, steps, rounds) for jit in timing.modes(backend, args.modes)
        ],
        "load_average_at_end": os.getloadavg(),
    }
    timing.write_report(
        report, args.output or f"results/benchmark_adversaries_{backend}.json"
    )


if __name__ == "__main__":
    main()
