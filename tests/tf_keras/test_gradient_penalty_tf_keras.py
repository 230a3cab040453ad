"""Gradient penalties on a bert4keras BERT (tf_keras), against the source's
penalty computed independently with nested tapes in eager TensorFlow."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import keras_reg
from tests.tf_keras import tiny_bert

LR, EPSILON = 0.5, 4.0


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
    x, y = tiny_bert.batch(seed=2)
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


@pytest.mark.parametrize("integrated", [False, True], ids=["noisy-pass", "integrated"])
def test_bert4keras_noise_training_keeps_weights_at_learning_rate_zero(integrated):
    model = tiny_bert.classifier(tf_keras.optimizers.SGD(0.0))
    x, y = tiny_bert.batch(seed=2)
    before = [v.numpy() for v in model.trainable_variables]
    keras_reg.noise_training(
        model, "Embedding-Token", stddev=0.5, integrated=integrated, seed=0
    )
    history = model.fit(x, y, batch_size=2, epochs=2, verbose=0).history
    assert np.all(np.isfinite(history["loss"]))
    if integrated:
        assert all(value > 0 for value in history["noise_penalty"])
    for variable, old in zip(model.trainable_variables, before):
        np.testing.assert_array_equal(variable.numpy(), old)


def test_bert4keras_gradient_penalty_in_mixed_precision():
    """At the initial loss scale 2^15 the penalty's scaled float16 gradients
    overflow: those steps are skipped and the scale halved, as Keras does for
    any non-finite gradient, until the steps are finite."""
    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        optimizer = tf_keras.mixed_precision.LossScaleOptimizer(
            tf_keras.optimizers.SGD(0.01)
        )
        model = tiny_bert.classifier(optimizer)
        keras_reg.gradient_penalty(model, "Embedding-Token", weight=0.01)
        x, y = tiny_bert.batch(seed=2)
        history = model.fit(x, y, batch_size=2, epochs=8, verbose=0).history
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    assert float(optimizer.loss_scale) < 2.0**15  # some steps were skipped
    assert np.isfinite(history["loss"][-1])
    assert np.isfinite(history["gradient_penalty"][-1])
    for variable in model.trainable_variables:
        assert np.all(np.isfinite(variable.numpy())), variable.name
