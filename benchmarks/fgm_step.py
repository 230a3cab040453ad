"""FGM step / plain step time ratio, and FGM's extra memory, measured side by side.

Times one training step (``train_on_batch``, Adam) of a BERT-shaped model
(vocab 21128, hidden 128, 2 layers, batch 32 x 64) in graph mode and under XLA,
for: the plain step, keras_reg's FGM, and the source's reference approach (the
dense embedding gradient fetched to the host, ``E + delta`` and ``E - delta``
written back from NumPy around the plain step), and FGM's floor
(`benchmarks/two_pass_floor.py`: a hand-written two-pass FGM step over its own
plain step, and the plain step plus FGM's first pass alone). Steps of the
variants are interleaved in rounds, so drifts of the machine hit all of them
alike; the median step time is reported.

Memory: with a 500,000-row vocabulary, the peak resident memory of a child
process (sampled every millisecond) during 25 steps after 5 warm-up steps,
plain vs FGM, and the growth of the resident memory over those 25 steps.

On JAX (jit) and PyTorch only the plain and keras_reg steps are timed.

Usage:
    python benchmarks/fgm_step.py            # ~5 minutes on 2 CPU cores
    python benchmarks/fgm_step.py --quick    # smoke run
    KERAS_BACKEND=jax python benchmarks/fgm_step.py   # (or torch)
"""

import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import keras_reg  # noqa: E402
from benchmarks import bert_shaped, timing  # noqa: E402
from benchmarks.memory_table import PeakSampler, rss_mb  # noqa: E402
from keras_reg._compat import keras  # noqa: E402

EPSILON = 1.0


def _model(jit_compile, vocab=21128, regularized=False):
    keras.utils.set_random_seed(0)
    model = bert_shaped.build(vocab=vocab)
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer="adam",
        jit_compile=jit_compile,
    )
    if regularized:
        keras_reg.adversarial_training(model, "Embedding-Token", epsilon=EPSILON)
    return model


class SourceReferenceFGM:
    """The source's FGM: dense gradient to the host, set_value(E +/- delta)."""

    def __init__(self, model):
        import tensorflow as tf

        self.model = model
        self.matrix = model.get_layer("Embedding-Token").embeddings
        loss_fn = keras.losses.SparseCategoricalCrossentropy()

        @tf.function(jit_compile=bool(model.jit_compile))
        def dense_gradient(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            return tf.convert_to_tensor(tape.gradient(loss, self.matrix.value))

        self.dense_gradient = dense_gradient

    def train_on_batch(self, x, y):
        g = self.dense_gradient(x, y).numpy()
        delta = EPSILON * g / np.linalg.norm(g)
        self.matrix.assign(self.matrix.numpy() + delta)
        self.model.train_on_batch(x, y)
        self.matrix.assign(self.matrix.numpy() - delta)


def time_steps(jit_compile, steps, rounds):
    x, y = bert_shaped.batch()
    backend = keras.backend.backend()
    variants = {
        "plain": _model(jit_compile).train_on_batch,
        "keras_reg_fgm": _model(jit_compile, regularized=True).train_on_batch,
    }
    if backend == "tensorflow":
        from benchmarks.two_pass_floor import HandWrittenSteps

        source = SourceReferenceFGM(_model(jit_compile))
        variants["source_reference_fgm"] = source.train_on_batch
        floor = HandWrittenSteps(jit_compile)
        variants["hand_written_plain"] = floor.plain
        variants["hand_written_fgm"] = floor.fgm
        variants["clean_to_lookup"] = floor.clean_to_lookup
    medians = timing.interleaved_medians(variants, x, y, steps, rounds)
    result = {
        "mode": f"{backend} {'jit/XLA' if jit_compile else 'graph/eager'}",
        "plain_ms": 1e3 * medians["plain"],
        "fgm_ms": 1e3 * medians["keras_reg_fgm"],
        "fgm_ratio": medians["keras_reg_fgm"] / medians["plain"],
    }
    if "source_reference_fgm" in medians:
        result["source_ms"] = 1e3 * medians["source_reference_fgm"]
        result["source_ratio"] = medians["source_reference_fgm"] / medians["plain"]
    if "hand_written_fgm" in medians:
        # The two-pass floor, two ways: a hand-written FGM over its own plain
        # step, and the plain step plus FGM's first pass alone.
        result["hand_written_fgm_ratio"] = (
            medians["hand_written_fgm"] / medians["hand_written_plain"]
        )
        result["plain_plus_clean_pass_ratio"] = (
            1 + medians["clean_to_lookup"] / medians["plain"]
        )
    return result


def memory_child(variant, jit_compile, vocab, steps):
    """Runs in a child process: prints the peak RSS during steps and its growth."""
    x, y = bert_shaped.batch(vocab=vocab, size=8)
    model = _model(jit_compile, vocab=vocab, regularized=variant == "fgm")
    for _ in range(5):  # trace, compile, allocate optimizer slots
        model.train_on_batch(x, y)
    before = rss_mb()
    sampler = PeakSampler()
    sampler.start()
    for _ in range(steps):
        model.train_on_batch(x, y)
    sampler.running = False
    sampler.join()
    after = rss_mb()
    print(json.dumps({"peak_mb": sampler.peak, "growth_mb": after - before}))


def memory(jit_compile, vocab, steps):
    results = {}
    for variant in ("plain", "fgm"):
        out = (
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--memory-child",
                    variant,
                    str(int(jit_compile)),
                    str(vocab),
                    str(steps),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        results[variant] = json.loads(out)
    return {
        "mode": "xla" if jit_compile else "graph",
        "vocab": vocab,
        "plain_peak_mb": results["plain"]["peak_mb"],
        "fgm_peak_mb": results["fgm"]["peak_mb"],
        "fgm_extra_peak_mb": results["fgm"]["peak_mb"] - results["plain"]["peak_mb"],
        "fgm_growth_mb_over_steps": results["fgm"]["growth_mb"],
        "plain_growth_mb_over_steps": results["plain"]["growth_mb"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--output", default="results/benchmark_fgm.json")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    if args.memory_child:
        variant, jit, vocab, steps = args.memory_child
        memory_child(variant, bool(int(jit)), int(vocab), int(steps))
        return
    steps, rounds = (2, 2) if args.quick else (10, 5)
    vocab, mem_steps = (50_000, 8) if args.quick else (500_000, 25)
    backend = keras.backend.backend()
    modes = timing.modes(backend)
    report = {
        "machine": f"{os.cpu_count()} CPU cores",
        "backend": backend,
        "keras": keras.__version__,
        "timing": [time_steps(jit, steps, rounds) for jit in modes],
    }
    if backend == "tensorflow" and not args.skip_memory:
        report["memory"] = [memory(jit, vocab, mem_steps) for jit in modes]
    timing.write_report(report, args.output)


if __name__ == "__main__":
    main()
