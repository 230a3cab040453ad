"""A tiny bert4keras BERT classifier for the tf_keras tests."""

import bert4keras.models
import numpy as np
import tensorflow as tf
import tf_keras


def classifier(optimizer, metrics=None):
    """Returns a compiled 1-layer BERT (vocab 40, hidden 16) with a softmax head."""
    bert = bert4keras.models.build_transformer_model(
        config_path=None,
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        hidden_act="gelu",
        max_position=16,
        type_vocab_size=2,
    )
    cls = tf_keras.layers.Lambda(lambda h: h[:, 0], name="CLS-token")(bert.output)
    out = tf_keras.layers.Dense(2, activation="softmax", name="classifier")(cls)
    model = tf_keras.Model(bert.inputs, out)
    model.compile(
        loss="sparse_categorical_crossentropy", optimizer=optimizer, metrics=metrics
    )
    return model


def batch(seed=1, repeat=True):
    """Returns ([token ids, segment ids], labels): 4 sequences of 10 tokens.

    With ``repeat``, token 3 repeats token 2 in each sequence (repeated rows).
    """
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 40, size=(4, 10)).astype("int32")
    if repeat:
        tokens[:, 3] = tokens[:, 2]
    segments = np.zeros_like(tokens)
    labels = rng.integers(0, 2, size=(4,)).astype("int32")
    return [tokens, segments], labels


def reference_fgm_step(model, x, y, epsilon, lr):
    """One FGM + SGD step written directly in eager TensorFlow (no keras_reg)."""
    matrix = model.get_layer("Embedding-Token").embeddings
    loss_fn = tf_keras.losses.SparseCategoricalCrossentropy()

    def loss_and_gradients(variables):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True)) + tf.add_n(
                [tf.constant(0.0)] + model.losses
            )
        return tape.gradient(loss, variables)

    (g,) = loss_and_gradients([matrix])
    g = tf.convert_to_tensor(g).numpy().astype(np.float64)
    delta = (epsilon * g / np.linalg.norm(g)).astype(np.float32)
    original = matrix.numpy()
    matrix.assign(original + delta)
    grads = loss_and_gradients(model.trainable_variables)
    matrix.assign(original)
    return [
        v.numpy() - lr * tf.convert_to_tensor(g).numpy()
        for v, g in zip(model.trainable_variables, grads)
    ]
