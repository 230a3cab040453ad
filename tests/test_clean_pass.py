"""The clean pass a regulariser recomputes stands in for the trainer's (JAX).

JAX cannot read a gradient off the trainer's forward pass, so FGM, PGD, SAM,
AWP and the gradient penalties recompute the clean pass (same inputs, weights
and dropout mask) inside ``jax.grad``. The installer then hands that pass's
output to the metrics in place of the trainer's ``y_pred``, and the loss the
step optimizes never reads the trainer's pass, so XLA removes the trainer's
forward pass. Before, XLA had to merge the two forward passes itself, and
failed once the model had a LayerNormalization (its traced forms differ
inside and outside ``jax.grad``): one forward pass too many per step (SAM on
the BERT-shaped benchmark: 2.34x a plain step's FLOPs, now 1.99x).

Checked here: the metrics ``fit`` reports are still the clean pass's, on every
backend (a dropout model, so that a pass with another mask, or the perturbed
pass, would show), and, on JAX, the compiled step's matrix products.
"""

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras

REGULARIZERS = {
    "fgm": lambda: keras_reg.FGM("emb", epsilon=0.5),
    "fgm_clean": lambda: keras_reg.FGM("emb", epsilon=0.5, add_clean_loss=True),
    "pgd": lambda: keras_reg.PGD("emb", epsilon=0.5, alpha=0.2, steps=2),
    "sam": lambda: keras_reg.SAM(rho=0.05),
    "awp": lambda: keras_reg.AWP(gamma=1e-2),
    "gradient_penalty": lambda: keras_reg.GradientPenalty("emb", weight=1.0),
    "parameter_penalty": lambda: keras_reg.ParameterGradientPenalty(0.1),
}


def _model(dropout, regularizer=None, jit_compile=False):
    keras.utils.set_random_seed(7)
    tokens = keras.Input((6,), dtype="int32")
    h = keras.layers.Embedding(50, 8, name="emb")(tokens)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(16, activation="tanh")(h)
    h = keras.layers.LayerNormalization()(h)
    if dropout:
        h = keras.layers.Dropout(dropout)(h)
    outputs = keras.layers.Dense(3, activation="softmax")(h)
    model = keras.Model(tokens, outputs)
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer=keras.optimizers.SGD(0.1),
        metrics=[keras.metrics.SparseCategoricalCrossentropy(name="xent")],
        jit_compile=jit_compile,
    )
    if regularizer is not None:
        keras_reg.install_regularizer(model, regularizer)
    return model


def _batch():
    rng = np.random.default_rng(3)
    return rng.integers(0, 50, (8, 6)).astype("int32"), np.arange(8) % 3


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "jit"])
@pytest.mark.parametrize("name", list(REGULARIZERS))
def test_metrics_are_the_clean_pass_metrics(name, jit_compile):
    if jit_compile and keras.backend.backend() == "torch":
        pytest.skip("keras_reg refuses torch.compile")
    x, y = _batch()
    plain = _model(0.5, jit_compile=jit_compile)
    expected = plain.train_on_batch(x, y, return_dict=True)["xent"]
    model = _model(0.5, REGULARIZERS[name](), jit_compile=jit_compile)
    logs = model.train_on_batch(x, y, return_dict=True)
    # Same weights, batch and dropout mask as the plain step's forward pass.
    np.testing.assert_allclose(logs["xent"], expected, rtol=1e-5)
    # Not a metric that any pass would give: another mask changes it.
    other = _model(0.5, jit_compile=jit_compile)
    other.train_on_batch(x, y)  # advances the dropout seed
    assert abs(other.train_on_batch(x, y, return_dict=True)["xent"] - expected) > 1e-4


def _dots(regularizer):
    from benchmarks import xla_cost  # imports jax

    model = _model(0.0, regularizer)
    x, y = _batch()
    model.train_on_batch(x, y)
    return xla_cost.train_step_cost(model, x, y)["dots"]


@pytest.mark.backends("jax")
@pytest.mark.parametrize(
    "name, products",
    [("sam", 12), ("awp", 12), ("fgm", 10), ("parameter_penalty", 18)],
)
def test_trainer_forward_pass_is_removed(name, products):
    # A plain step: 2 forward products and 4 backward (each dense layer's
    # kernel and input gradients, the first for the embedding) = 6.
    # SAM, AWP: a clean and a perturbed pass, 2 x 6. FGM: the clean forward
    # (2), its backward to the embedding (2), the perturbed pass (6).
    # Parameter penalty: double backprop, 3 x 6. The trainer's forward pass,
    # kept, adds 1 to each (the product after the LayerNormalization, which
    # XLA does not merge with the recomputed one): measured before the change.
    assert _dots(None) == 6
    assert _dots(REGULARIZERS[name]()) == products
