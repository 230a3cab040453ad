"""Relative strengths on tf_keras models, including a bert4keras BERT.

Runs in its own process with TF_KERAS=1 and TF_USE_LEGACY_KERAS=1.
"""

import os
import pickle

import numpy as np
import pytest

if os.environ.get("TF_KERAS") != "1":
    pytest.skip("tf_keras tests run in their own process", allow_module_level=True)

import bert4keras.models  # noqa: E402, F401
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

import keras_reg  # noqa: E402
from tests import fgm_reference, models  # noqa: E402
from tests.tf_keras import tiny_bert  # noqa: E402

LR, RATIO = 0.5, 0.3


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_fgm_relative_matches_numpy(jit_compile):
    (E, W, b), (x, y, w) = models.data()
    x = (x % 5) * 2  # the odd rows are never touched
    model = models.compiled("sequential", keras=tf_keras, jit_compile=jit_compile)
    model.set_weights([E, W, b])
    keras_reg.fgm(model, "emb", epsilon=keras_reg.relative(RATIO))
    models.fit_one_batch(model, x, y, w)
    epsilon = RATIO * np.linalg.norm(E[np.unique(x)])
    models.assert_weights(
        model, fgm_reference.fgm_sgd_step(E, W, b, x, y, LR, epsilon, w)
    )


def test_bert4keras_fgm_relative_matches_reference():
    model = tiny_bert.classifier(tf_keras.optimizers.SGD(LR))
    x, y = tiny_bert.batch()
    initial = model.get_weights()
    matrix = model.get_layer("Embedding-Token").embeddings
    with tf.GradientTape() as tape:
        loss = tf_keras.losses.SparseCategoricalCrossentropy()(
            y, model(x, training=True)
        )
    g = tf.convert_to_tensor(tape.gradient(loss, matrix)).numpy()
    moved = np.square(g).sum(axis=1) > 0
    epsilon = RATIO * np.linalg.norm(matrix.numpy()[moved])
    expected = tiny_bert.reference_fgm_step(model, x, y, epsilon, LR)
    model.set_weights(initial)
    keras_reg.fgm(model, "Embedding-Token", epsilon=keras_reg.relative(RATIO))
    model.fit(x, y, batch_size=len(y), epochs=1, verbose=0)
    for variable, want in zip(model.trainable_variables, expected):
        np.testing.assert_allclose(variable.numpy(), want, rtol=1e-4, atol=1e-5)


def test_config_round_trip_and_pickling():
    fgm = keras_reg.FGM("Embedding-Token", epsilon=keras_reg.relative(0.1))
    again = keras_reg.FGM.from_config(fgm.get_config())
    assert again.epsilon == keras_reg.relative(0.1)
    assert pickle.loads(pickle.dumps(fgm)).get_config() == fgm.get_config()
