"""JAX: a penalty step differentiates one clean pass, not two (XLA's optimized HLO).

JAX cannot read a gradient off the trainer's pass, so a penalty recomputes
the clean pass inside ``jax.value_and_grad``. If the step optimized the
trainer's loss plus the penalty, the trainer's pass would be differentiated
too: one backward pass more than needed (measured on the BERT-shaped
benchmark: 2.70x a plain step's FLOPs instead of 2.06x). The step optimizes
the recomputed pass's loss instead, and XLA merges the trainer's forward pass
(kept for the metrics) with the recomputed one.

Counted in matrix products (``dot`` instructions of the compiled step) on a
model with two dense layers (d dots forward):
- plain: forward d, backward 2d (activation and weight gradients) = 3d;
- embedding penalty: forward d, the inner backward to the embedding output d
  (activation gradients only), the outer backward of both 2d + 2d = 6d;
- parameter penalty: 9d, three plain steps' worth. It is computed forward over
  reverse (`jax.linearize` of the gradient: forward d and backward 2d, then the
  tangent of both, 6d); reverse over reverse counted the same (forward d, inner
  backward 2d, outer backward 2d + 4d) but ran 3.4x a plain step's time against
  about 2.4x (benchmarks/gradient_penalty_step.py).
An extra differentiated pass adds 2d to the penalties' counts.
"""

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras

pytestmark = pytest.mark.backends("jax")


def _dots(regularizer):
    from benchmarks import xla_cost  # imports jax

    keras.utils.set_random_seed(0)
    tokens = keras.Input((6,), dtype="int32")
    h = keras.layers.Embedding(50, 16, name="emb")(tokens)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(32, activation="tanh")(h)
    outputs = keras.layers.Dense(3, activation="softmax")(h)
    model = keras.Model(tokens, outputs)
    model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
    if regularizer is not None:
        keras_reg.install_regularizer(model, regularizer)
    x = np.random.default_rng(0).integers(0, 50, (8, 6)).astype("int32")
    y = np.arange(8) % 3
    model.train_on_batch(x, y)
    return xla_cost.train_step_cost(model, x, y)["dots"]


@pytest.mark.parametrize(
    "regularizer, factor",
    [
        (lambda: keras_reg.GradientPenalty("emb", weight=1.0), 6),
        (lambda: keras_reg.GradientPenalty("emb", weight=1.0, per="row"), 6),
        (lambda: keras_reg.ParameterGradientPenalty(0.1), 9),
    ],
    ids=["occurrence", "row", "parameter"],
)
def test_penalty_step_differentiates_one_clean_pass(regularizer, factor):
    d = 2  # two dense layers, one product each in the forward pass
    assert _dots(None) == 3 * d
    assert _dots(regularizer()) == factor * d
