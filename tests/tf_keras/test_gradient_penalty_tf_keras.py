"""Gradient penalties on a bert4keras BERT (tf_keras), against the source's
penalty computed independently with nested tapes in eager TensorFlow."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import keras_reg
from tests.tf_keras import tiny_bert

LR, EPSILON = 0.5, 4.0


def _batch():
    rng = np.random.default_rng(2)
    tokens = rng.integers(1, 40, size=(4, 10)).astype("int32")
    tokens[:, 3] = tokens[:, 2]
    return [tokens, np.zeros_like(tokens)], rng.integers(0, 2, size=(4,))


def _reference_step(model, x, y, penalty_of):
    """SGD on L + penalty_of(gradients), double backprop through nested tapes."""
    loss_fn = tf_keras.losses.SparseCategoricalCrossentropy()
    variables = model.trainable_variables
    matrix = model.get_layer("Embedding-Token").embeddings
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            loss = loss_fn(y, model(x, training=True))
        penalty = penalty_of(inner, loss, matrix, variables)
        total = loss + penalty
    gradients = outer.gradient(total, variables)
    return [
        v.numpy() - LR * tf.convert_to_tensor(g).numpy()
        for v, g in zip(variables, gradients)
    ]


def _source_penalty(inner, loss, matrix, variables):
    # bert4keras examples/task_iflytek_gradient_penalty.py: the .values of the
    # embedding's IndexedSlices gradient, one row per token occurrence.
    gradient = inner.gradient(loss, matrix)
    return 0.5 * EPSILON * tf.reduce_sum(tf.square(gradient.values))


def _parameter_penalty(inner, loss, matrix, variables):
    gradients = inner.gradient(loss, variables)
    return 0.1 * tf.add_n(
        [tf.reduce_sum(tf.square(tf.convert_to_tensor(g))) for g in gradients]
    )


@pytest.mark.parametrize(
    "regularizer, penalty_of",
    [
        (
            lambda: keras_reg.GradientPenalty("Embedding-Token", EPSILON),
            _source_penalty,
        ),
        (lambda: keras_reg.ParameterGradientPenalty(0.1), _parameter_penalty),
    ],
    ids=["embedding-occurrence", "parameter"],
)
def test_bert4keras_step_matches_nested_tapes(regularizer, penalty_of):
    model = tiny_bert.classifier(tf_keras.optimizers.SGD(LR))
    x, y = _batch()
    initial = model.get_weights()
    expected = _reference_step(model, x, y, penalty_of)
    plain = _reference_step(model, x, y, lambda *args: 0.0)
    model.set_weights(initial)
    keras_reg.install_regularizer(model, regularizer())
    history = model.fit(x, y, batch_size=len(y), epochs=1, verbose=0).history
    assert "gradient_penalty" in history
    moved = max(np.abs(e - p).max() for e, p in zip(expected, plain))
    assert moved > 1e-3
    for variable, want in zip(model.trainable_variables, expected):
        np.testing.assert_allclose(variable.numpy(), want, rtol=1e-4, atol=1e-5)
