"""FreeVAT on a tf_keras model (own process: TF_KERAS=1)."""

import os

import numpy as np
import pytest

if os.environ.get("TF_KERAS") != "1":
    pytest.skip("tf_keras tests run in their own process", allow_module_level=True)

import tf_keras  # noqa: E402

import keras_reg  # noqa: E402
from tests import fixed_noise, vat_reference  # noqa: E402
from tests.models import CLASSES, DIM, LENGTH, VOCAB  # noqa: E402

LR, EPSILON, WEIGHT = 0.5, 0.8, 1.5


def test_matrix_two_steps_match_reference(monkeypatch):
    """Step 2's shared tokens get step 1's rows (one drawn sign), its new ones none."""
    fixed_noise.install(monkeypatch)
    draws = fixed_noise.ShiftedDraws(monkeypatch)
    rng = np.random.default_rng(1)
    E = rng.normal(size=(VOCAB, DIM)).astype("float32")
    W = rng.normal(size=(DIM, CLASSES)).astype("float32")
    b = rng.normal(size=(CLASSES,)).astype("float32") * 0.1
    x = rng.integers(0, VOCAB, size=(4, LENGTH)).astype("int32")
    y = rng.integers(0, CLASSES, size=(4,)).astype("int32")
    w = rng.uniform(0.5, 2.0, size=(4,)).astype("float32")
    pool = np.array(
        [[0, 1, 2, 1, 3], [3, 4, 4, 0, 5], [6, 7, 1, 6, 8], [9, 10, 3, 9, 7]],
        "int32",
    )
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
    keras_reg.free_virtual_adversarial_training(
        model,
        "emb",
        epsilon=EPSILON,
        weight=WEIGHT,
        unlabeled=pool,
        unlabeled_batch_size=2,
    )

    def fit_one():
        model.fit(x, y, sample_weight=w, batch_size=4, shuffle=False, verbose=0)

    fixed_noise.two_steps(model, fit_one, draws, 2)
    expected = vat_reference.free_vat_matrix_two_steps(
        [E, W, b], x, y, w, pool[:2], pool[2:], LR, EPSILON, WEIGHT
    )
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
