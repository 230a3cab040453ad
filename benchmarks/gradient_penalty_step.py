"""Gradient-penalty step / plain step time ratios, measured side by side.

The model of fgm_step.py (BERT-shaped: vocab 21128, hidden 128, 2 layers,
batch 32 x 64, Adam, ``train_on_batch``). Variants, interleaved in rounds so
that drifts of the machine hit all of them alike (medians compared, and
the fastest rounds: load from other jobs only adds time):

- ``plain``: the model's own step;
- ``gp_occurrence``: ``GradientPenalty('Embedding-Token', weight=1.0)``, the
  penalty on the gradient w.r.t. each looked-up vector (the source's);
- ``gp_row``: the same with ``per='row'`` (the matrix gradient, repeated
  tokens summed);
- ``parameter_gp``: ``ParameterGradientPenalty(0.01)`` over every weight;
- ``fgm``: ``adversarial_training(model, 'Embedding-Token', epsilon=1.0)``,
  for reference.

A gradient penalty needs double backprop: the step differentiates a gradient,
so beyond the plain step it runs one more backward pass (the inner gradient,
kept differentiable) and the backward of that backward (roughly a forward plus
a backward again). Targets: embedding penalty <= 2.6x a plain step,
parameter penalty <= 3x.

Graph mode and XLA (``jit_compile=True``) on TensorFlow, jit on JAX, eager on
PyTorch. Writes ``results/benchmark_gradient_penalty_<backend>.json``.

PyTorch: Keras's ``MultiHeadAttention`` calls ``scaled_dot_product_attention``,
whose CPU flash kernel has no double backward ("derivative for
aten::_scaled_dot_product_flash_attention_for_cpu_backward is not
implemented"), so the penalty steps run inside
``torch.nn.attention.sdpa_kernel([SDPBackend.MATH])``; ``plain_math_sdpa`` is
the plain step with that kernel too, ratios are to the default plain step.

Usage:
    python benchmarks/gradient_penalty_step.py            # ~3 min per backend
    python benchmarks/gradient_penalty_step.py --quick    # smoke run
    KERAS_BACKEND=jax python benchmarks/gradient_penalty_step.py   # (or torch)
"""

import argparse
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


import keras_reg  # noqa: E402
from benchmarks import bert_shaped, timing  # noqa: E402
from benchmarks.timing import summary  # noqa: E402
from keras_reg._compat import keras  # noqa: E402

EMBEDDING = "Embedding-Token"
VARIANTS = {
    "plain": None,
    "gp_occurrence": lambda m: keras_reg.GradientPenalty(EMBEDDING, weight=1.0),
    "gp_row": lambda m: keras_reg.GradientPenalty(EMBEDDING, weight=1.0, per="row"),
    "parameter_gp": lambda m: keras_reg.ParameterGradientPenalty(0.01),
    "fgm": lambda m: keras_reg.FGM(EMBEDDING, epsilon=1.0),
}
# Not timed by default: for profiling the parameter penalty (--variants).
EXTRA = {
    # Every weight but the 21128 x 128 embedding matrix.
    "parameter_gp_no_embedding": lambda m: keras_reg.ParameterGradientPenalty(
        0.01,
        layers=[
            layer.name
            for layer in m.layers
            if layer.trainable_weights and layer.name != EMBEDDING
        ],
    ),
}
TARGETS = {"gp_occurrence": 2.6, "gp_row": 2.6, "parameter_gp": 3.0}
PENALTIES = (*TARGETS, "parameter_gp_no_embedding")


def _model(jit_compile, regularizer=None):
    keras.utils.set_random_seed(0)
    model = bert_shaped.build()
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer="adam",
        jit_compile=jit_compile,
    )
    if regularizer is not None:
        keras_reg.install_regularizer(model, regularizer(model))
    return model


def _math_attention(run):
    """Runs ``run`` with PyTorch's math attention kernel (twice differentiable)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def wrapped(x, y):
        with sdpa_kernel([SDPBackend.MATH]):
            return run(x, y)

    return wrapped


def time_steps(jit_compile, steps, rounds, names):
    x, y = bert_shaped.batch()
    variants = {
        name: _model(jit_compile, {**VARIANTS, **EXTRA}[name]).train_on_batch
        for name in names
    }
    if keras.backend.backend() == "torch":
        for name in names:
            if name in PENALTIES:
                variants[name] = _math_attention(variants[name])
        variants["plain_math_sdpa"] = _math_attention(_model(False).train_on_batch)
    times = timing.interleaved_times(variants, x, y, steps, rounds)
    backend = keras.backend.backend()
    mode = "jit/XLA" if jit_compile else "graph/eager"
    result = summary(times, f"{backend} {mode}")
    if backend == "jax":
        result.update(timing.flops_ratios(variants, x, y))
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
        choices=[n for n in {**VARIANTS, **EXTRA} if n != "plain"],
        default=None,
        help="Regularised variants to time (default: all); plain always runs.",
    )
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    steps, rounds = (2, 2) if args.quick else (6, 12)
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
        report, args.output or f"results/benchmark_gradient_penalty_{backend}.json"
    )


if __name__ == "__main__":
    main()
