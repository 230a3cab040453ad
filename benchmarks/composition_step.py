"""FGM + R-Drop's step time against FGM's and R-Drop's, over one plain step.

Times one training step (``train_on_batch``, Adam) of the BERT-shaped model
(vocab 21128, hidden 128, 2 layers, batch 32 x 64) for: the plain step, FGM,
R-Drop, and the composition ``[FGM, RDrop]``, interleaved in rounds in one
process (drifts of the machine hit all four alike). With ``extra(v) =
t(v) - t(plain)``, it reports

    excess = extra(FGM + R-Drop) / (extra(FGM) + extra(R-Drop))

where 1 means the composition costs exactly the two regularisers' extras.
The composition needs one backward pass through the clean pass that FGM
alone does not (FGM without its clean term differentiates only L(E + delta);
R-Drop's (L1 + L2) / 2 and its KL reach the clean pass), so the excess is
above 1 by about one backward pass over the sum of the extras.

Usage:
    python benchmarks/composition_step.py            # ~5 minutes on 2 CPU cores
    python benchmarks/composition_step.py --quick    # smoke run
    KERAS_BACKEND=jax python benchmarks/composition_step.py   # (or torch)
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
    "plain": lambda: None,
    "fgm": lambda: keras_reg.FGM("Embedding-Token", epsilon=1.0),
    "rdrop": lambda: keras_reg.RDrop(weight=4.0),
    "fgm_rdrop": lambda: [
        keras_reg.FGM("Embedding-Token", epsilon=1.0),
        keras_reg.RDrop(weight=4.0),
    ],
}


def time_steps(jit_compile, steps, rounds):
    x, y = bert_shaped.batch()
    variants = {
        name: bert_shaped.compiled(jit_compile, make()).train_on_batch
        for name, make in VARIANTS.items()
    }
    times = timing.interleaved_times(variants, x, y, steps, rounds)
    mode = f"{keras.backend.backend()} {'jit/XLA' if jit_compile else 'graph/eager'}"
    result = timing.summary(times, mode)
    for key in ("", "min_"):
        plain = result[f"plain_{key}ms"]
        extra = {
            name: result[f"{name}_{key}ms"] - plain
            for name in VARIANTS
            if name != "plain"
        }
        result[f"{key}excess"] = extra["fgm_rdrop"] / (extra["fgm"] + extra["rdrop"])
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--mode", choices=("graph", "jit"), default=None)
    parser.add_argument("--output", default="results/benchmark_composition.json")
    args = parser.parse_args()
    steps, rounds = (2, 2) if args.quick else (8, 5)
    backend = keras.backend.backend()
    report = {
        "machine": f"{os.cpu_count()} CPU cores, shared with other processes",
        "backend": backend,
        "keras": keras.__version__,
        "timing": [
            time_steps(jit, steps, rounds) for jit in timing.modes(backend, args.mode)
        ],
    }
    timing.write_report(report, args.output)


if __name__ == "__main__":
    main()
