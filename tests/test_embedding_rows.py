"""On JAX and PyTorch the adversaries, SAM, AWP and the penalties take rows.

The framework's gradient of an embedding lookup is a dense ``vocabulary x
dim`` matrix there; FGM's and PGD's directions, the table's part of SAM's,
ASAM's and AWP's e(w), the gradient the row penalty squares and (JAX) the
table's part of the parameter penalty's gradient and tangent are taken instead
from the gradient with respect to the lookup's output, summed per id
(`keras_reg.backend.rows`). At a vocabulary of 50,000 the step must then
create no ``vocabulary x dim`` tensor beyond the plain step's (the weights'
gradient and update): counted in the jitted step's jaxpr on JAX, and over the
ops the step runs (a dispatch mode) on PyTorch. On TensorFlow, whose gradient
of a lookup is sparse already, SAM's and AWP's traced step must hold no such
tensor but the variable's reads. The rows path must also give the dense
path's numbers (repeated ids, mixed precision; the generic path is
`base.Step`'s, see also tests/test_step_overrides.py).
"""

import numpy as np
import pytest

import keras_reg
from keras_reg import backend
from keras_reg._compat import keras
from keras_reg.backend import base, rows
from tests import models

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")
STATELESS = pytest.mark.backends("jax", "torch")

VOCAB, DIM = 50_000, 8


def _adversaries():
    return {
        "fgm": lambda: keras_reg.FGM("emb", epsilon=0.5),
        "fgm_relative": lambda: keras_reg.FGM("emb", epsilon=keras_reg.relative(0.1)),
        "pgd": lambda: keras_reg.PGD("emb", epsilon=0.5, alpha=0.3, steps=3),
        "pgd_no_clean": lambda: keras_reg.PGD(
            "emb", epsilon=0.5, alpha=0.3, steps=2, add_clean_loss=False
        ),
    }


def _row_penalty():
    return keras_reg.GradientPenalty("emb", weight=5.0, per="row")


def _parameter_penalty():
    return keras_reg.ParameterGradientPenalty(0.5)


def _weight_perturbations():
    return {
        "sam": lambda: keras_reg.SAM(rho=0.05),
        "asam": lambda: keras_reg.SAM(adaptive=True),
        "awp": lambda: keras_reg.AWP(gamma=5e-3),
    }


def _large_vocabulary_model():
    inputs = keras.Input((6,), dtype="int32")
    h = keras.layers.Embedding(VOCAB, DIM, name="emb")(inputs)
    h = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _batch():
    rng = np.random.default_rng(0)
    x = rng.integers(0, VOCAB, (4, 6)).astype("int32")
    x[:, 1] = x[:, 0]  # repeated ids
    return x, rng.integers(0, 2, (4,)).astype("int32")


def _jax_count(model, x, y):
    """Equations of the jitted train step that output a vocabulary x dim array."""
    import jax

    def count(jaxpr):
        total = 0
        for equation in jaxpr.eqns:
            total += sum(
                tuple(getattr(v.aval, "shape", ())) == (VOCAB, DIM)
                for v in equation.outvars
            )
            for param in equation.params.values():
                for sub in param if isinstance(param, (list, tuple)) else [param]:
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        total += count(inner)
        return total

    from benchmarks import xla_cost

    arguments = xla_cost.train_step_arguments(model, x, y)
    return count(jax.make_jaxpr(model.train_step)(*arguments).jaxpr)


def _torch_count(model, x, y):
    """Tensors of vocabulary x dim created by the ops of one train step."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class Counter(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            # A view of an input (``detach``) is no new memory.
            given = {
                leaf.untyped_storage().data_ptr()
                for leaf in tree_leaves((args, kwargs))
                if isinstance(leaf, torch.Tensor)
            }
            for leaf in tree_leaves(out):
                if isinstance(leaf, torch.Tensor) and leaf.shape == (VOCAB, DIM):
                    self.count += leaf.untyped_storage().data_ptr() not in given
            return out

    with Counter() as counter:
        model.train_on_batch(x, y)
    return counter.count


def _tf_count(model, x, y):
    """Ops of the traced train step that output a vocabulary x dim tensor.

    A read of the variable (``ReadVariableOp``) is not counted: it is the
    variable's own buffer, and every step reads it. The reads are checked to
    be seen, so the count is not vacuous.
    """
    import tensorflow as tf

    step = tf.function(model.train_step)
    graph = step.get_concrete_function((tf.constant(x), tf.constant(y))).graph
    types = [
        op.type
        for op in graph.get_operations()
        for output in op.outputs
        if output.shape.as_list() == [VOCAB, DIM]
    ]
    assert "ReadVariableOp" in types, "the count sees nothing: a vacuous check"
    return sum(t != "ReadVariableOp" for t in types)


def _matrix_sized(regularizer):
    model = _large_vocabulary_model()
    if regularizer is not None:
        keras_reg.install_regularizer(model, regularizer)
    x, y = _batch()
    model.train_on_batch(x, y)  # builds the optimizer; the lookup probe
    if keras.backend.backend() == "tensorflow":
        return _tf_count(model, x, y)
    if keras.backend.backend() == "jax":
        return _jax_count(model, x, y)
    return _torch_count(model, x, y)


@STATELESS
@pytest.mark.parametrize("name", ["fgm", "fgm_relative", "pgd_no_clean"])
def test_no_vocabulary_sized_tensor_beyond_the_plain_step(name):
    plain = _matrix_sized(None)
    assert plain > 0, "the count sees nothing: a vacuous check"
    assert _matrix_sized(_adversaries()[name]()) <= plain


@pytest.mark.parametrize("name", list(_weight_perturbations()))
def test_weight_perturbation_adds_no_vocabulary_sized_tensor(name):
    # e(w) of the table is its batch rows, added at the lookup's output.
    plain = _matrix_sized(None)
    assert keras.backend.backend() == "tensorflow" or plain > 0, (
        "the count sees nothing: a vacuous check"
    )
    assert _matrix_sized(_weight_perturbations()[name]()) <= plain


@STATELESS
def test_a_penalty_on_the_tables_gradient_adds_no_vocabulary_sized_tensor():
    # The penalty differentiates the rows of the lookup's gradient, not the
    # dense gradient of the table (double backprop through a scatter).
    plain = _matrix_sized(None)
    assert plain > 0, "the count sees nothing: a vacuous check"
    assert _matrix_sized(_row_penalty()) <= plain


@pytest.mark.backends("jax")
def test_the_parameter_penalty_adds_no_vocabulary_sized_tensor():
    # The table's gradient and its Hessian-vector product's tangent are taken
    # at the lookup's output (forward over reverse), as rows.
    plain = _matrix_sized(None)
    assert plain > 0, "the count sees nothing: a vacuous check"
    assert _matrix_sized(_parameter_penalty()) <= plain


@STATELESS
def test_pgd_ascent_steps_add_no_vocabulary_sized_tensor():
    # With the clean term (add_clean_loss=True) the optimizer's gradient of E
    # sums two lookups' gradients (the clean term's and the perturbed pass's),
    # but each ascent step works on rows only.
    def pgd(steps):
        return _matrix_sized(
            keras_reg.PGD("emb", epsilon=0.5, alpha=0.3, steps=steps)
        )

    assert pgd(3) == pgd(1)


def _generic(monkeypatch):
    """Replaces the rows path with `base.Step`'s (the dense matrix gradient)."""
    step_class = backend.for_model(models.build("functional")).Step
    for name in ("matrix_gradient", "matrix_loss_gradients", "matrix_penalty_gradient"):
        monkeypatch.setattr(step_class, name, getattr(base.Step, name))
    if hasattr(step_class, "_gradient_norm_by_rows"):  # JAX's parameter penalty
        monkeypatch.setattr(
            step_class, "_plain_lookup", lambda self, layer, variable: False
        )


def _trained(regularizer, policy):
    keras.config.set_dtype_policy(policy)
    (E, W, b), (x, y, w) = models.data()
    model = models.compiled(lr=models.ADVERSARY_LR)
    models.set_weights(model, E, W, b)
    keras_reg.install_regularizer(model, regularizer)
    models.fit_one_batch(model, x, y, w, epochs=2)
    return models.get_weights(model)


@STATELESS
@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
@pytest.mark.parametrize(
    "name",
    [*_adversaries(), *_weight_perturbations(), "row_penalty", "parameter_penalty"],
)
def test_rows_give_the_dense_maths(name, policy, monkeypatch):
    make = {
        **_adversaries(),
        **_weight_perturbations(),
        "row_penalty": _row_penalty,
        "parameter_penalty": _parameter_penalty,
    }[name]
    fast = _trained(make(), policy)
    _generic(monkeypatch)
    slow = _trained(make(), policy)
    tolerance = 1e-5 if policy == "float32" else 2e-3
    for got, want in zip(fast, slow):
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)


@STATELESS
def test_summed_rows_are_the_dense_gradients_rows():
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 7, (5, 4)).astype("int32")
    values = rng.normal(size=(5, 4, 3)).astype("float32")
    dense = np.zeros((7, 3), "float32")
    np.add.at(dense, ids, values)
    summed = rows.summed([ids[:2], ids[2:]], [values[:2], values[2:]])
    got = models.numpy(summed.rows)
    distinct = np.unique(ids)
    np.testing.assert_array_equal(got[: len(distinct)], distinct)
    assert (got[len(distinct) :] == rows.PAD).all()
    np.testing.assert_allclose(
        models.numpy(rows.densified(summed, (7, 3))), dense, rtol=1e-6, atol=1e-6
    )
    twice = rows.add(summed, summed)
    looked_up = models.numpy(rows.lookup(twice, np.array([[6, 0], [9, 2]], "int32")))
    want = np.where(np.isin([[6, 0], [9, 2]], distinct)[..., None], 2 * dense[
        np.minimum([[6, 0], [9, 2]], 6)
    ], 0.0)
    np.testing.assert_allclose(looked_up, want, rtol=1e-6, atol=1e-6)
