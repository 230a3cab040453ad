"""VAT step / plain step time ratio on a BERT-shaped model, measured side by side.

The model of fgm_step.py (vocab 21128, hidden 128, 2 layers, batch 32 x 64,
Adam); VAT draws an unlabelled batch of the same size each step and perturbs
either the embedded sequence (``perturb="output"``) or the embedding-matrix
rows (``perturb="matrix"``, the source), with one power iteration. Graph mode
and XLA on TensorFlow, jit on JAX, eager on PyTorch. A VAT step does, beyond
the plain step, one inference pass for p, one forward +
backward-to-the-perturbation for the power iteration, and one forward
+ full backward for the VAT loss: about 3x the plain step's arithmetic.
FreeVAT (``free_vat_matrix``) drops the power iteration's pass.

Usage:
    python benchmarks/vat_step.py            # ~4 minutes on 2 CPU cores
    python benchmarks/vat_step.py --quick
    KERAS_BACKEND=jax python benchmarks/vat_step.py   # (or torch)
"""

import argparse
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras_reg  # noqa: E402
from benchmarks import bert_shaped, timing  # noqa: E402
from keras_reg._compat import keras  # noqa: E402


def _model(jit_compile, perturb=None, unlabeled=None, free=False):
    keras.utils.set_random_seed(0)
    model = bert_shaped.build()
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer="adam",
        jit_compile=jit_compile,
    )
    if free:
        keras_reg.free_virtual_adversarial_training(
            model,
            "Embedding-Token",
            epsilon=1.0,
            unlabeled=unlabeled,
            unlabeled_batch_size=32,
            seed=0,
        )
    elif perturb:
        keras_reg.virtual_adversarial_training(
            model,
            "Embedding-Token",
            epsilon=1.0,
            xi=10.0,
            unlabeled=unlabeled,
            perturb=perturb,
            seed=0,
        )
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default="results/benchmark_vat.json")
    args = parser.parse_args()
    steps, rounds = (2, 2) if args.quick else (8, 5)
    x, y = bert_shaped.batch()
    unlabeled, _ = bert_shaped.batch(size=512, seed=1)
    backend = keras.backend.backend()
    report = {
        "machine": f"{os.cpu_count()} CPU cores",
        "backend": backend,
        "keras": keras.__version__,
        "timing": [],
    }
    modes = timing.modes(backend)
    for jit in modes:
        variants = {
            "plain": _model(jit).train_on_batch,
            "vat_output": _model(jit, "output", unlabeled).train_on_batch,
            "vat_matrix": _model(jit, "matrix", unlabeled).train_on_batch,
            "free_vat_matrix": _model(
                jit, unlabeled=unlabeled, free=True
            ).train_on_batch,
        }
        medians = timing.interleaved_medians(variants, x, y, steps, rounds)
        report["timing"].append(
            {
                "mode": f"{backend} {'jit/XLA' if jit else 'graph/eager'}",
                **{f"{k}_ms": 1e3 * v for k, v in medians.items()},
                "vat_output_ratio": medians["vat_output"] / medians["plain"],
                "vat_matrix_ratio": medians["vat_matrix"] / medians["plain"],
                "free_vat_matrix_ratio": medians["free_vat_matrix"] / medians["plain"],
            }
        )
        print(json.dumps(report["timing"][-1]), flush=True)
    timing.write_report(report, args.output, echo=False)


if __name__ == "__main__":
    main()
