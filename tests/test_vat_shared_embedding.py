"""VAT on one embedding layer shared by two inputs (a siamese / two-input model).

q = softmax((mean(E[a]) + mean(E[b])) W + b'), one SGD step against a float64
central-difference reference. ``"matrix"`` must give a token one row in both
calls; ``"output"`` perturbs each call's output (its perturbation is the two
calls' parts, flattened per example and concatenated).
"""

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras
from keras_reg.backend.interception import transformed_output
from tests import fixed_noise, vat_reference
from tests.models import CLASSES, DIM, VOCAB

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")
LR = 0.5
LENGTHS = (5, 3)


def _model():
    a = keras.Input((LENGTHS[0],), dtype="int32", name="a")
    b = keras.Input((LENGTHS[1],), dtype="int32", name="b")
    embedding = keras.layers.Embedding(VOCAB, DIM, name="emb")
    pool = keras.layers.GlobalAveragePooling1D()
    h = keras.layers.Add()([pool(embedding(a)), pool(embedding(b))])
    out = keras.layers.Dense(CLASSES, activation="softmax", name="out")(h)
    return keras.Model([a, b], out)


def _call_order(model):
    """Returns the input lengths in the order the forward pass calls the layer.

    The output site lays the calls' parts out in that order (Keras's
    functional models need not run ``a`` first).
    """
    lengths = []

    def record(output, ids):
        lengths.append(int(ids.shape[1]))
        return output

    with transformed_output(model.get_layer("emb"), record):
        model([np.zeros((1, n), "int32") for n in LENGTHS])
    return lengths


def _probabilities(params, xa, xb, site, delta, order):
    E, W, b = params
    if site == "matrix" and delta is not None:
        E = E + delta
    embedded = {len(x[0]): E[x] for x in (xa, xb)}
    if site == "output" and delta is not None:
        start = 0
        for n in order:
            part = delta[:, start : start + n * DIM]
            embedded[n] = embedded[n] + part.reshape(embedded[n].shape)
            start += n * DIM
    z = sum(e.mean(axis=1) for e in embedded.values()) @ W + b
    z = z - z.max(axis=-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)


def _initial_direction(site, xa, xb):
    if site == "output":
        return vat_reference.fixed_direction((len(xa), sum(LENGTHS) * DIM))
    slots = vat_reference.fixed_direction((xa.size + xb.size, DIM))
    d0 = np.zeros((VOCAB, DIM))
    for slot, token in enumerate(np.unique(np.concatenate([xa.ravel(), xb.ravel()]))):
        d0[token] = slots[slot]
    return d0


def _reference_step(params, xa, xb, y, site, norm, epsilon, xi, order):
    params = [np.asarray(p, np.float64).copy() for p in params]

    def probabilities(delta=None):
        return _probabilities(params, xa, xb, site, delta, order)

    p = probabilities()
    probe = xi * vat_reference.normalize(_initial_direction(site, xa, xb), norm)
    d = vat_reference.numerical_gradient(
        lambda: vat_reference.kl(p, probabilities(probe)),
        probe,
    )
    r = epsilon * vat_reference.normalize(d, norm)

    def total():
        supervised = vat_reference.cross_entropy(probabilities(), y, np.ones(len(y)))
        return supervised + vat_reference.kl(p, probabilities(r))

    grads = [vat_reference.numerical_gradient(total, q) for q in params]
    return [q - LR * g for q, g in zip(params, grads)]


def _data(rng, size=4):
    xa = rng.integers(0, VOCAB, size=(size, LENGTHS[0])).astype("int32")
    xb = rng.integers(0, VOCAB, size=(size, LENGTHS[1])).astype("int32")
    xb[:, 0] = xa[:, 0]  # the same token in both inputs
    return xa, xb


@pytest.mark.parametrize(
    "site, norm", [("matrix", "batch"), ("output", "batch"), ("output", "example")]
)
def test_shared_embedding_matches_finite_differences(site, norm, monkeypatch):
    fixed_noise.install(monkeypatch)
    rng = np.random.default_rng(0)
    E = rng.normal(size=(VOCAB, DIM)).astype("float32")
    W = rng.normal(size=(DIM, CLASSES)).astype("float32")
    b = rng.normal(size=(CLASSES,)).astype("float32") * 0.1
    xa, xb = _data(rng)
    y = rng.integers(0, CLASSES, size=(len(xa),)).astype("int32")
    model = _model()
    model.set_weights([E, W, b])
    model.compile(
        loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.SGD(LR)
    )
    keras_reg.virtual_adversarial_training(
        model, "emb", epsilon=0.8, xi=0.5, perturb=site, norm=norm
    )
    model.fit([xa, xb], y, batch_size=len(xa), shuffle=False, verbose=0)
    order = _call_order(model)
    expected = _reference_step([E, W, b], xa, xb, y, site, norm, 0.8, 0.5, order)
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _jit_options():
    return [False] if keras.backend.backend() == "torch" else [False, True]


@pytest.mark.parametrize("jit_compile", _jit_options(), ids=lambda j: f"jit={j}")
@pytest.mark.parametrize("perturb", ["matrix", "output"])
def test_two_input_model_trains_on_a_list_of_unlabelled_arrays(perturb, jit_compile):
    rng = np.random.default_rng(1)
    xa, xb = _data(rng, size=8)
    ua, ub = _data(rng, size=20)
    y = rng.integers(0, CLASSES, size=(8,)).astype("int32")
    model = _model()
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer="adam",
        jit_compile=jit_compile,
    )
    keras_reg.virtual_adversarial_training(
        model, "emb", perturb=perturb, unlabeled=[ua, ub], unlabeled_batch_size=6
    )
    history = model.fit([xa, xb], y, batch_size=4, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


def test_two_input_model_refuses_one_unlabelled_array():
    model = _model()
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
    ua, _ = _data(np.random.default_rng(2), size=6)
    with pytest.raises(ValueError, match=r"holds 1 array\(s\), but the model takes 2"):
        keras_reg.virtual_adversarial_training(model, "emb", unlabeled=ua)
