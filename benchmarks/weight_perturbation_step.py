"""SAM / ASAM / AWP / R-Drop step / plain step time ratios, measured side by side.

The BERT-shaped model of fgm_step.py (vocab 21128, hidden 128, 2 layers,
batch 32 x 64, Adam, ``train_on_batch``) with dropout 0.1 after the
embeddings and before the head (R-Drop needs dropout; every variant gets
the same model). Variants, interleaved in rounds so that drifts of the
machine hit all of them alike (medians compared, and the fastest rounds:
load from other jobs only adds time):

- ``plain``: the model's own step;
- ``sam``: ``SAM(rho=0.05)`` over every weight (the 21128 x 128 embedding
  matrix included: its gradient is densified, as SAM perturbs all of it);
- ``asam``: ``SAM(adaptive=True)``;
- ``awp``: ``AWP(gamma=5e-3)`` (every weight with two or more axes);
- ``rdrop``: ``RDrop(weight=4.0)``.

SAM and AWP cost one more backward (the clean gradient; reused from the
step's own forward on TensorFlow and PyTorch, recomputed with its forward on
JAX) and one more forward; R-Drop one more forward, whose backward joins the
step's. Targets: SAM <= 2.1x a plain step, R-Drop <= 2.1x.

Graph mode and XLA (``jit_compile=True``) on TensorFlow, jit on JAX, eager on
PyTorch; on JAX also XLA's FLOP count of each compiled step over the plain
step's (``*_flops_ratio``: free of load noise). Writes
``results/benchmark_weight_perturbation_<backend>.json``.

Usage:
    python benchmarks/weight_perturbation_step.py            # ~3 min per backend
    python benchmarks/weight_perturbation_step.py --quick    # smoke run
    KERAS_BACKEND=jax python benchmarks/weight_perturbation_step.py   # or torch
"""

import argparse
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras_reg  # noqa: E402
from benchmarks import bert_shaped, timing  # noqa: E402
from benchmarks.timing import flops_ratios, interleaved_times, summary  # noqa: E402
from keras_reg._compat import keras  # noqa: E402

VARIANTS = {
    "plain": None,
    "sam": lambda: keras_reg.SAM(rho=0.05),
    "asam": lambda: keras_reg.SAM(adaptive=True),
    "awp": lambda: keras_reg.AWP(gamma=5e-3),
    "rdrop": lambda: keras_reg.RDrop(weight=4.0),
}
TARGETS = {"sam": 2.1, "rdrop": 2.1}


def build(vocab=21128, hidden=128, layers=2, heads=2, length=64, classes=2):
    """bert_shaped.build with Dropout(0.1) after the embeddings and before the head."""
    tokens = keras.Input((length,), dtype="int32", name="Input-Token")
    h = keras.layers.Embedding(vocab, hidden, name="Embedding-Token")(tokens)
    h = bert_shaped.PositionEmbedding(name="Embedding-Position")(h)
    h = keras.layers.LayerNormalization(name="Embedding-Norm")(h)
    h = keras.layers.Dropout(0.1)(h)
    for i in range(layers):
        h = bert_shaped.transformer_block(h, hidden, heads, name=f"Transformer-{i}")
    pooled = keras.layers.Dropout(0.1)(keras.layers.GlobalAveragePooling1D()(h))
    outputs = keras.layers.Dense(classes, activation="softmax")(pooled)
    return keras.Model(tokens, outputs, name="bert_shaped_dropout")


def _model(jit_compile, regularizer=None):
    keras.utils.set_random_seed(0)
    model = build()
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer="adam",
        jit_compile=jit_compile,
    )
    if regularizer is not None:
        keras_reg.install_regularizer(model, regularizer())
    return model


def time_steps(jit_compile, steps, rounds, names):
    x, y = bert_shaped.batch()
    variants = {
        name: _model(jit_compile, VARIANTS[name]).train_on_batch for name in names
    }
    times = interleaved_times(variants, x, y, steps, rounds)
    backend = keras.backend.backend()
    mode = "jit/XLA" if jit_compile else "graph/eager"
    result = summary(times, f"{backend} {mode}")
    if backend == "jax":
        result.update(flops_ratios(variants, x, y))
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
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=[n for n in VARIANTS if n != "plain"],
        default=None,
        help="Regularised variants to time (default: all); plain always runs.",
    )
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    steps, rounds = (2, 2) if args.quick else (5, 10)
    backend = keras.backend.backend()
    modes = timing.modes(backend, args.modes)
    names = ["plain"] + (args.variants or [n for n in VARIANTS if n != "plain"])
    report = {
        "machine": f"{os.cpu_count()} CPU cores",
        "backend": backend,
        "keras": keras.__version__,
        "steps_per_round": steps,
        "rounds": rounds,
        "targets": TARGETS,
        "timing": [time_steps(jit, steps, rounds, names) for jit in modes],
    }
    timing.write_report(
        report, args.output or f"results/benchmark_weight_perturbation_{backend}.json"
    )


if __name__ == "__main__":
    main()
