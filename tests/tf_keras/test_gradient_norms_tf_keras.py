"""callbacks.GradientNorms in a bert4keras process: a tf_keras callback whose
norms match an independent tape on the source's quantities."""

import numpy as np
import tensorflow as tf
import tf_keras

import keras_reg
from tests.tf_keras import tiny_bert


def _reference(model, x, y):
    """The source's per-occurrence gradient (IndexedSlices values), ||dL/dtheta||."""
    loss_fn = tf_keras.losses.SparseCategoricalCrossentropy()
    matrix = model.get_layer("Embedding-Token").embeddings
    with tf.GradientTape(persistent=True) as tape:
        loss = loss_fn(y, model(x, training=False))
        if model.losses:
            loss += tf.add_n(model.losses)
    occurrences = tape.gradient(loss, matrix).values
    weights = tape.gradient(loss, model.trainable_variables)
    weights_sq = sum(
        np.sum(np.square(tf.convert_to_tensor(g).numpy().astype(np.float64)))
        for g in weights
    )
    inputs_sq = np.sum(np.square(occurrences.numpy().astype(np.float64)))
    return np.sqrt(inputs_sq), np.sqrt(weights_sq)


def test_gradient_norms_is_a_tf_keras_callback_with_the_source_quantities():
    model = tiny_bert.classifier(tf_keras.optimizers.SGD(0.0))
    x, y = tiny_bert.batch(seed=3)
    norms = keras_reg.callbacks.GradientNorms(x, y, embedding_name="Embedding-Token")
    assert isinstance(norms, tf_keras.callbacks.Callback)
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[norms])
    want = _reference(model, x, y)
    for epoch in range(2):
        got = [
            history.history[k][epoch] for k in ("grad_norm_inputs", "grad_norm_weights")
        ]
        np.testing.assert_allclose(got, want, rtol=1e-4)


def test_probe_of_mismatched_lengths_is_refused_by_the_tf_keras_callback():
    x, y = tiny_bert.batch(seed=3)
    try:
        keras_reg.callbacks.GradientNorms(x, y[:3], embedding_name="Embedding-Token")
    except ValueError as error:
        assert "same number of examples" in str(error)
        assert "x: [4, 4], y: 3" in str(error)
    else:
        raise AssertionError("GradientNorms accepted 4 inputs and 3 targets")
