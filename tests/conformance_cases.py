"""The cases of the shared conformance suite (tests/conformance_suite.py).

`CASES` names each regulariser under test with a factory for a fresh instance
and the kind of model it trains (`KINDS`: token ids, float inputs or two
heads). A new regulariser adds one entry here, and keeps its closed-form
tests in its own file. `Framework` is Keras 3 (its active backend) or tf_keras.

A check that a regulariser fails today is listed in `KNOWN_FAILURES` with the
defect it shows: the suite marks it ``xfail(strict=True)``, so the fix turns
it into a failure that asks to drop the entry.
"""

import dataclasses
from typing import Callable

import numpy as np

import keras_reg
from tests import models

_UNLABELED = np.random.default_rng(7).integers(0, models.VOCAB, (32, models.LENGTH))


@dataclasses.dataclass(frozen=True)
class Case:
    """A regulariser under test: ``make()`` returns a fresh instance."""

    make: Callable
    model: str = "tokens"  # a key of KINDS
    perturbing: bool = False  # perturbs weights or activations in an extra pass
    lookup_only: bool = False  # refuses an L2-read matrix: the L2 variants skip it

    def l2_values(self, l2):
        """The L2 strengths to check: ``(0.0, l2)``, or ``(0.0,)`` if lookup-only."""
        return (0.0,) if self.lookup_only else (0.0, l2)


CASES = {
    "fgm": Case(lambda: keras_reg.FGM("emb", epsilon=0.7), perturbing=True),
    "fgm-clean": Case(
        lambda: keras_reg.FGM("emb", epsilon=0.7, add_clean_loss=True),
        perturbing=True,
    ),
    "pgd": Case(
        lambda: keras_reg.PGD("emb", epsilon=0.7, alpha=0.5, steps=3), perturbing=True
    ),
    "freelb": Case(
        lambda: keras_reg.FreeLB(
            "emb", epsilon=0.5, alpha=0.3, steps=2, init_scale=0.1, seed=1
        ),
        perturbing=True,
    ),
    "free-fgm": Case(lambda: keras_reg.FreeFGM("emb", epsilon=0.7), perturbing=True),
    "free-fgm-rows": Case(
        lambda: keras_reg.FreeFGM("emb", epsilon=0.7, batch_tokens=512),
        perturbing=True,
        lookup_only=True,
    ),
    "vat-output": Case(
        lambda: keras_reg.VAT(
            "emb", epsilon=0.5, xi=1.0, perturb="output", unlabeled=_UNLABELED, seed=1
        ),
        perturbing=True,
    ),
    "vat-matrix": Case(
        lambda: keras_reg.VAT("emb", epsilon=0.5, xi=1.0, seed=1), perturbing=True
    ),
    "free-vat": Case(
        lambda: keras_reg.FreeVAT(
            "emb", epsilon=0.5, unlabeled=_UNLABELED, unlabeled_batch_size=8, seed=1
        ),
        perturbing=True,
    ),
    "gp-occurrence": Case(lambda: keras_reg.GradientPenalty("emb", weight=1.0)),
    "gp-row": Case(lambda: keras_reg.GradientPenalty("emb", weight=1.0, per="row")),
    "parameter-gp": Case(lambda: keras_reg.ParameterGradientPenalty(0.1)),
    "input-gp": Case(lambda: keras_reg.InputGradientPenalty(0.5, seed=3), "floats"),
    "noise": Case(
        lambda: keras_reg.NoiseTraining("emb", stddev=0.1, seed=2), perturbing=True
    ),
    "noise-integrated": Case(
        lambda: keras_reg.NoiseTraining("emb", stddev=0.1, integrated=True, seed=2)
    ),
    "sam": Case(lambda: keras_reg.SAM(rho=0.5), perturbing=True),
    "asam": Case(lambda: keras_reg.SAM(adaptive=True), perturbing=True),
    "awp": Case(
        lambda: keras_reg.AWP(gamma=0.1, update_batch_norm=True), perturbing=True
    ),
    "rdrop": Case(lambda: keras_reg.RDrop(weight=4.0), perturbing=True),
    "compose-additive": Case(
        lambda: keras_reg.compose(
            keras_reg.FGM("emb", epsilon=0.7),
            keras_reg.GradientPenalty("emb", weight=1.0),
            keras_reg.RDrop(weight=4.0),
        ),
        perturbing=True,
    ),
    "compose-sam": Case(
        lambda: keras_reg.compose(
            keras_reg.SAM(rho=0.5), keras_reg.FGM("emb", epsilon=0.7)
        ),
        perturbing=True,
    ),
    "balance-gradient": Case(
        lambda: keras_reg.LossBalancing("gradient", shared_layer="shared"), "two-heads"
    ),
}
NAMES = sorted(CASES)
PERTURBING = sorted(name for name, case in CASES.items() if case.perturbing)
TOKEN_CASES = sorted(name for name, case in CASES.items() if case.model == "tokens")

# (case, check, framework name or None for every framework) -> (the defect,
# the exception it raises).
KNOWN_FAILURES = {}


def public_regularizer_classes():
    """Returns the `TrainingRegularizer` classes `keras_reg` exports."""
    return {
        value
        for value in (getattr(keras_reg, name) for name in keras_reg.__all__)
        if isinstance(value, type)
        and issubclass(value, keras_reg.TrainingRegularizer)
        and value is not keras_reg.TrainingRegularizer
    }


# ---- the frameworks ----------------------------------------------------------------
class Framework:
    """Keras 3 (on its active backend) or tf_keras, as the checks use them."""

    def __init__(self, keras):
        self.keras = keras
        self.legacy = not hasattr(keras, "StatelessScope")
        self.name = "tf_keras" if self.legacy else keras.backend.backend()
        self.has_jit = self.name != "torch"  # torch.compile is refused

    def set_policy(self, policy):
        if self.legacy:
            self.keras.mixed_precision.set_global_policy(policy)
        else:
            self.keras.config.set_dtype_policy(policy)

    def loss_scale(self, optimizer, initial_scale):
        return self.keras.mixed_precision.LossScaleOptimizer(
            optimizer, initial_scale=initial_scale
        )


@dataclasses.dataclass(frozen=True)
class Kind:
    """A test model: builder, loss, data, initial weights, plain logs, SGD rate."""

    build: Callable  # (l2, keras) -> uncompiled model
    loss: object
    batch: Callable  # (rng, size) -> (x, y, sample_weight)
    initialize: Callable  # model -> None
    logs: frozenset
    lr: float


def _token_weights(model):
    models.set_weights(model, *models.initial_weights(np.random.default_rng(1)))


KINDS = {
    "tokens": Kind(
        lambda l2, keras: models.build("functional", l2=l2, keras=keras),
        "sparse_categorical_crossentropy",
        models.batch,
        _token_weights,
        frozenset({"loss"}),
        0.5,
    ),
    "floats": Kind(
        models.float_inputs,
        "sparse_categorical_crossentropy",
        models.float_batch,
        lambda model: models.randomize(model, 6),
        frozenset({"loss"}),
        0.5,
    ),
    "two-heads": Kind(
        models.two_heads,
        models.TWO_HEADS_LOSSES,
        models.two_heads_batch,
        lambda model: models.randomize(model, 5, scale=0.5),
        frozenset({"loss", "cls_loss", "reg_loss"}),
        0.05,
    ),
}


def kind(name):
    return KINDS[CASES[name].model]


def compiled(
    framework, name, lr=None, l2=0.0, optimizer=None, with_loss=True, **compile_kwargs
):
    """Returns the case's model with its initial weights, compiled with SGD.

    With ``with_loss=False`` it is compiled without a loss.
    """
    model_kind = kind(name)
    model = model_kind.build(l2, framework.keras)
    model_kind.initialize(model)
    if optimizer is None:
        optimizer = framework.keras.optimizers.SGD(model_kind.lr if lr is None else lr)
    loss = model_kind.loss if with_loss else None
    model.compile(loss=loss, optimizer=optimizer, **compile_kwargs)
    return model


def with_unused_layer(framework, name):
    """The token model whose layer ``emb`` is never called, compiled like the case's.

    Its lookup goes through an embedding called ``lookup``; ``emb`` (and a
    dense layer ``idle``) are built but never called by the forward pass.
    """
    keras = framework.keras

    class UnusedNamedLayers(keras.Model):
        def __init__(self):
            super().__init__()
            embedding = keras.layers.Embedding
            self.lookup = embedding(models.VOCAB, models.DIM, name="lookup")
            self.emb = embedding(models.VOCAB, models.DIM, name="emb")
            self.idle = keras.layers.Dense(models.CLASSES, name="idle")
            self.pool = keras.layers.GlobalAveragePooling1D()
            self.out = keras.layers.Dense(
                models.CLASSES, activation="softmax", name="out"
            )

        def build(self, input_shape):
            self.emb.build(input_shape)
            self.idle.build((None, models.DIM))
            super().build(input_shape)

        def call(self, x, training=False):
            return self.out(self.pool(self.lookup(x)))

    model = UnusedNamedLayers()
    model(np.zeros((1, models.LENGTH), "int32"))
    model.compile(loss=kind(name).loss, optimizer=keras.optimizers.SGD(0.1))
    return model


def batch(name, seed=0, size=6):
    return kind(name).batch(np.random.default_rng(seed), size)


def trainable(model):
    return [models.numpy(v) for v in model.trainable_weights]
