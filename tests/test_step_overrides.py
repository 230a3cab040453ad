"""Each backend override of a `Step` composite gives the generic path's numbers.

`keras_reg.backend.base.Step` writes every composite once, over the
framework primitives; a backend overrides one only where speed needs it
(sparse rows on TensorFlow, the recomputed clean pass on JAX, a plain lookup
perturbed through its output, its gradient taken as rows on JAX and PyTorch).
Here each override present on the running backend is replaced by the generic
method and two training steps must end at the same weights (float tolerance),
for the regularisers that use it.
"""

import numpy as np
import pytest

import keras_reg
from keras_reg import backend
from keras_reg._compat import keras
from keras_reg.backend import base
from tests import models

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")


def _regularizers():
    return {
        "fgm": lambda: keras_reg.FGM("emb", epsilon=0.7),
        "pgd": lambda: keras_reg.PGD("emb", epsilon=0.7, alpha=0.4, steps=3),
        "free_fgm": lambda: keras_reg.FreeFGM("emb", epsilon=0.7),
        "matrix_penalty": lambda: keras_reg.GradientPenalty(
            "emb", epsilon=0.5, per="row"
        ),
        "parameter_penalty": lambda: keras_reg.ParameterGradientPenalty(0.1),
        "sam": lambda: keras_reg.SAM(rho=0.3),
        "asam": lambda: keras_reg.SAM(rho=0.5, adaptive=True),
        "awp": lambda: keras_reg.AWP(gamma=0.2),
        "fgm_relative": lambda: keras_reg.FGM("emb", epsilon=keras_reg.relative(0.3)),
        "freelb_relative": lambda: keras_reg.FreeLB(
            "emb", epsilon=keras_reg.relative(0.3), alpha=keras_reg.relative(0.2)
        ),
    }


# Overrides replaced together (a sparse form meets only sparse forms: TF's
# sparse rows), and the regularisers whose step goes through them.
GROUPS = {
    "gradient_forms": (
        (
            "scale_to_norm",
            "add_perturbations",
            "clip_to_norm",
            "_inner_product",
            "squared_norm",
            "unscaled",
        ),
        ("pgd", "free_fgm", "matrix_penalty", "fgm_relative"),
    ),
    "recorded_outputs": (("lookup_outputs",), ("freelb_relative",)),
    "plain_lookup": (("_plain_lookup",), ("pgd", "free_fgm")),
    "loss_gradient": (("loss_gradient",), ("fgm",)),
    "lookup_rows": (
        ("matrix_gradient", "matrix_loss_gradients", "matrix_penalty_gradient"),
        ("fgm", "pgd", "fgm_relative", "sam", "asam", "awp", "matrix_penalty"),
    ),
    "weight_rows": (("rows_or_dense",), ("sam", "asam", "awp")),
    "weight_norm": (("frobenius_norm",), ("awp",)),
    "gradient_norm": (("loss_plus_gradient_norm",), ("parameter_penalty",)),
    "recomputed_clean_pass": (
        ("loss_plus", "clean_loss", "clean_output"),
        ("matrix_penalty", "sam", "pgd"),
    ),
}


def _cases():
    return [
        pytest.param(group, user, id=f"{group}-{user}")
        for group, (_, users) in GROUPS.items()
        for user in users
    ]


def _trained(regularizer, l2):
    rng = np.random.default_rng(0)
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    model = models.build("functional", l2=l2)
    model.compile(
        loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.SGD(0.5)
    )
    models.set_weights(model, E, W, b)
    if regularizer is not None:
        keras_reg.install_regularizer(model, regularizer)
    models.fit_one_batch(model, x, y, w, epochs=2)
    return models.get_weights(model)


@pytest.mark.parametrize("l2", [0.0, 0.05], ids=["lookup", "in-place"])
@pytest.mark.parametrize("group, user", _cases())
def test_override_equals_the_generic_path(group, user, l2, monkeypatch):
    step_class = backend.for_model(models.build("functional")).Step
    names = [
        name
        for name in GROUPS[group][0]
        if getattr(step_class, name) is not getattr(base.Step, name)
    ]
    if not names:
        pytest.skip(f"{keras.backend.backend()} overrides none of {group}")
    make = _regularizers()[user]
    fast = _trained(make(), l2)
    for name in names:
        monkeypatch.setattr(step_class, name, getattr(base.Step, name))
    slow = _trained(make(), l2)
    moved = [np.abs(a - b).max() for a, b in zip(fast, _trained(None, l2))]
    assert max(moved) > 1e-4, "the regulariser changed nothing: a vacuous check"
    for got, want in zip(fast, slow):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
