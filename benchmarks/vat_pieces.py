"""Where a VAT step's time goes: its pieces timed alone, graph mode vs XLA (TensorFlow).

On the model of vat_step.py, each piece is one ``tf.function`` (with and
without ``jit_compile``), timed side by side with the plain train step:

- ``forward``: one inference pass (VAT's p);
- ``forward_backward_input``: one pass and its gradient with respect to the
  embedded sequence only (VAT's power iteration);
- ``forward_backward_weights``: one pass and the gradients of every weight,
  without the optimizer (the adversarial pass and the supervised one);
- ``adam_update``: the optimizer applying given gradients (once per step,
  plain or VAT).

A VAT step is about the plain step + forward + forward_backward_input +
forward_backward_weights; FreeVAT drops forward_backward_input.

Usage:
    python benchmarks/vat_pieces.py            # ~2 minutes on 2 CPU cores
    python benchmarks/vat_pieces.py --quick
"""

import argparse
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

from benchmarks import bert_shaped, timing  # noqa: E402
from keras_reg._compat import keras  # noqa: E402


def _pieces(jit):
    keras.utils.set_random_seed(0)
    model = bert_shaped.build()
    model.compile(
        loss="sparse_categorical_crossentropy", optimizer="adam", jit_compile=jit
    )
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    embedding = model.get_layer("Embedding-Token")
    rest = keras.Model(embedding.output, model.output)
    weights = model.trainable_variables

    @tf.function(jit_compile=jit)
    def forward(x, y):
        return model(x, training=False)

    @tf.function(jit_compile=jit)
    def forward_backward_input(x, y):
        h = embedding(x)
        with tf.GradientTape() as tape:
            tape.watch(h)
            loss = loss_fn(y, rest(h, training=False))
        return tape.gradient(loss, h)

    @tf.function(jit_compile=jit)
    def forward_backward_weights(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        return tape.gradient(loss, weights)

    gradients = [tf.zeros_like(w) for w in weights]

    @tf.function(jit_compile=jit)
    def adam_update(x, y):
        model.optimizer.apply(gradients, weights)

    return {
        "plain": model.train_on_batch,
        "forward": forward,
        "forward_backward_input": forward_backward_input,
        "forward_backward_weights": forward_backward_weights,
        "adam_update": adam_update,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default="results/benchmark_vat_pieces.json")
    args = parser.parse_args()
    steps, rounds = (3, 3) if args.quick else (8, 5)
    x, y = bert_shaped.batch()
    report = {"machine": f"{os.cpu_count()} CPU cores", "timing": []}
    for jit in (False, True):
        variants = _pieces(jit)
        variants["plain"](x, y)  # builds the optimizer's variables
        times = timing.interleaved_times(variants, x, y, steps, rounds)
        mode = "tensorflow jit/XLA" if jit else "tensorflow graph"
        report["timing"].append(timing.summary(times, mode))
        print(json.dumps(report["timing"][-1]), flush=True)
    timing.write_report(report, args.output, echo=False)


if __name__ == "__main__":
    main()
