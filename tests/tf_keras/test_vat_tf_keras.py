"""VAT on tf_keras models and a bert4keras BERT (own process: TF_KERAS=1)."""

import os

import numpy as np
import pytest

if os.environ.get("TF_KERAS") != "1":
    pytest.skip("tf_keras tests run in their own process", allow_module_level=True)

import bert4keras.models  # noqa: E402, F401
import tf_keras  # noqa: E402

import keras_reg  # noqa: E402
from tests import fixed_noise, vat_reference  # noqa: E402
from tests.models import CLASSES, DIM, LENGTH, VOCAB  # noqa: E402
from tests.tf_keras import tiny_bert  # noqa: E402

LR = 0.5


@pytest.mark.parametrize("site", ["output", "matrix"])
def test_one_step_matches_finite_differences(site, monkeypatch):
    fixed_noise.install(monkeypatch)
    rng = np.random.default_rng(0)
    E = rng.normal(size=(VOCAB, DIM)).astype("float32")
    W = rng.normal(size=(DIM, CLASSES)).astype("float32")
    b = rng.normal(size=(CLASSES,)).astype("float32") * 0.1
    x = rng.integers(0, VOCAB - 2, size=(5, LENGTH)).astype("int32")
    y = rng.integers(0, CLASSES, size=(5,)).astype("int32")
    w = rng.uniform(0.5, 2.0, size=(5,)).astype("float32")
    model = tf_keras.Sequential(
        [
            tf_keras.Input((LENGTH,), dtype="int32"),
            tf_keras.layers.Embedding(VOCAB, DIM, name="emb"),
            tf_keras.layers.GlobalAveragePooling1D(),
            tf_keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )
    model.compile(
        loss="sparse_categorical_crossentropy", optimizer=tf_keras.optimizers.SGD(LR)
    )
    model.set_weights([E, W, b])
    keras_reg.virtual_adversarial_training(
        model, "emb", epsilon=0.8, xi=0.5, perturb=site, weight=1.5
    )
    model.fit(x, y, sample_weight=w, batch_size=5, shuffle=False, verbose=0)
    d0 = vat_reference.initial_direction(site, x, VOCAB, DIM)
    expected = vat_reference.vat_sgd_step(
        [E, W, b], x, y, w, d0, site, LR, 0.8, 0.5, 1, 1.5, "batch"
    )
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("perturb", ["output", "matrix"])
def test_bert4keras_vat_trains_on_unlabelled_inputs(perturb):
    model = tiny_bert.classifier("adam", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 40, size=(8, 10)).astype("int32")
    labels = rng.integers(0, 2, size=(8,)).astype("int32")
    unlabeled = rng.integers(1, 40, size=(30, 10)).astype("int32")
    keras_reg.virtual_adversarial_training(
        model,
        "Embedding-Token",
        epsilon=1.0,
        xi=10.0,
        perturb=perturb,
        unlabeled=[unlabeled, np.zeros_like(unlabeled)],
    )
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(
        [tokens, np.zeros_like(tokens)], labels, batch_size=4, epochs=2, verbose=0
    )
    assert np.all(np.isfinite(history.history["loss"]))
    assert set(history.history) == {"loss", "accuracy", "vat_loss"}
    assert any(not np.array_equal(a, b) for a, b in zip(model.get_weights(), before))


def _bag_model(activation):
    return tf_keras.Sequential(
        [
            tf_keras.Input((LENGTH,), dtype="int32"),
            tf_keras.layers.Embedding(VOCAB, DIM, name="emb"),
            tf_keras.layers.GlobalAveragePooling1D(),
            tf_keras.layers.Dense(CLASSES, activation=activation),
        ]
    )


def test_logits_head_steps_like_the_softmax_head(monkeypatch):
    """from_logits=True (a tf_keras loss object) is read: KL on log_softmax."""
    fixed_noise.install(monkeypatch)
    rng = np.random.default_rng(0)
    weights = [
        rng.normal(size=(VOCAB, DIM)).astype("float32"),
        rng.normal(size=(DIM, CLASSES)).astype("float32"),
        rng.normal(size=(CLASSES,)).astype("float32") * 0.1,
    ]
    x = rng.integers(0, VOCAB, size=(5, LENGTH)).astype("int32")
    y = rng.integers(0, CLASSES, size=(5,)).astype("int32")
    results = []
    for activation, loss in [
        ("softmax", "sparse_categorical_crossentropy"),
        (None, tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
    ]:
        model = _bag_model(activation)
        model.compile(loss=loss, optimizer=tf_keras.optimizers.SGD(LR))
        model.set_weights(weights)
        keras_reg.virtual_adversarial_training(
            model, "emb", epsilon=0.8, xi=0.5, perturb="output"
        )
        model.fit(x, y, batch_size=5, shuffle=False, verbose=0)
        results.append(model.get_weights())
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_regression_loss_is_refused():
    model = _bag_model(None)
    model.compile(loss=tf_keras.losses.MeanSquaredError(), optimizer="sgd")
    with pytest.raises(ValueError, match="regression/score loss"):
        keras_reg.virtual_adversarial_training(model, "emb")


def test_bert4keras_token_ids_outside_the_vocabulary_are_named():
    model = tiny_bert.classifier("adam")
    tokens = np.full((6, 10), 45, "int32")  # the tiny BERT has 40 tokens
    with pytest.raises(ValueError, match="array 0 holds token ids from 45 to 45"):
        keras_reg.virtual_adversarial_training(
            model, "Embedding-Token", unlabeled=[tokens, np.zeros_like(tokens)]
        )


def test_mixed_float16_trains():
    from tf_keras import mixed_precision

    mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _bag_model("softmax")
        model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
        rng = np.random.default_rng(0)
        x = rng.integers(0, VOCAB, size=(8, LENGTH)).astype("int32")
        y = rng.integers(0, CLASSES, size=(8,)).astype("int32")
        keras_reg.virtual_adversarial_training(model, "emb", perturb="output")
        history = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    finally:
        mixed_precision.set_global_policy("float32")
    assert model.outputs[0].dtype == "float16"
    assert np.all(np.isfinite(history.history["loss"]))
