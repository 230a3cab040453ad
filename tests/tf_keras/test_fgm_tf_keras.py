"""FGM on tf_keras (Keras 2) models, including a BERT built by bert4keras 0.11.5.

Runs in its own process with TF_KERAS=1 and TF_USE_LEGACY_KERAS=1 (see the
runner); bert4keras is imported first, as its users do.
"""

import os

import numpy as np
import pytest

if os.environ.get("TF_KERAS") != "1":
    pytest.skip("tf_keras tests run in their own process", allow_module_level=True)

import bert4keras.models  # noqa: E402, F401
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

import keras_reg  # noqa: E402
from tests import fgm_reference  # noqa: E402
from tests.models import CLASSES, DIM, LENGTH, VOCAB  # noqa: E402
from tests.tf_keras import tiny_bert  # noqa: E402

LR, EPSILON = 0.5, 0.7


def _bag_of_embeddings(lr=LR):
    model = tf_keras.Sequential(
        [
            tf_keras.Input((LENGTH,), dtype="int32"),
            tf_keras.layers.Embedding(VOCAB, DIM, name="emb"),
            tf_keras.layers.GlobalAveragePooling1D(),
            tf_keras.layers.Dense(CLASSES, activation="softmax", name="out"),
        ]
    )
    model.compile(
        loss="sparse_categorical_crossentropy", optimizer=tf_keras.optimizers.SGD(lr)
    )
    return model


def _weights(model):
    emb, out = model.get_layer("emb"), model.get_layer("out")
    return [v.numpy() for v in (emb.embeddings, out.kernel, out.bias)]


def _data(seed=0):
    rng = np.random.default_rng(seed)
    E = rng.normal(size=(VOCAB, DIM)).astype("float32")
    W = rng.normal(size=(DIM, CLASSES)).astype("float32")
    b = rng.normal(size=(CLASSES,)).astype("float32") * 0.1
    x = rng.integers(0, VOCAB - 2, size=(6, LENGTH)).astype("int32")
    x[:, 1] = x[:, 0]
    y = rng.integers(0, CLASSES, size=(6,)).astype("int32")
    w = rng.uniform(0.5, 2.0, size=(6,)).astype("float32")
    return (E, W, b), (x, y, w)


def _fit(model, x, y, w, **kwargs):
    kwargs.setdefault("epochs", 1)
    model.fit(
        x, y, sample_weight=w, batch_size=len(x), shuffle=False, verbose=0, **kwargs
    )


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_one_step_matches_numpy(jit_compile):
    (E, W, b), (x, y, w) = _data()
    model = _bag_of_embeddings()
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer=tf_keras.optimizers.SGD(LR),
        jit_compile=jit_compile,
    )
    model.set_weights([E, W, b])
    keras_reg.adversarial_training(model, "emb", epsilon=EPSILON)
    _fit(model, x, y, w)
    expected = fgm_reference.fgm_sgd_step(E, W, b, x, y, LR, EPSILON, w)
    for got, want in zip(_weights(model), expected):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def test_remove_and_callback_scope():
    (E, W, b), (x, y, w) = _data()
    model = _bag_of_embeddings()
    model.set_weights([E, W, b])
    scope = keras_reg.callbacks.RegularizationScope(keras_reg.FGM("emb", EPSILON))
    assert isinstance(scope, tf_keras.callbacks.Callback)
    _fit(model, x, y, w, callbacks=[scope])
    E, W, b = fgm_reference.fgm_sgd_step(E, W, b, x, y, LR, EPSILON, w)
    for got, want in zip(_weights(model), (E, W, b)):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    assert keras_reg.installed_regularizer(model) is None
    _fit(model, x, y, w)
    for got, want in zip(
        _weights(model), fgm_reference.plain_sgd_step(E, W, b, x, y, LR, w)
    ):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def _tiny_bert():
    return tiny_bert.classifier(tf_keras.optimizers.SGD(LR), metrics=["accuracy"])


def _bert_batch():
    rng = np.random.default_rng(1)
    tokens = rng.integers(1, 40, size=(4, 10)).astype("int32")
    tokens[:, 3] = tokens[:, 2]
    segments = np.zeros_like(tokens)
    labels = rng.integers(0, 2, size=(4,)).astype("int32")
    return [tokens, segments], labels


def _reference_fgm_step(model, x, y, epsilon, lr):
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


def test_bert4keras_step_matches_reference():
    model = _tiny_bert()
    x, y = _bert_batch()
    initial = model.get_weights()
    expected = _reference_fgm_step(model, x, y, EPSILON, LR)
    model.set_weights(initial)
    keras_reg.adversarial_training(model, "Embedding-Token", epsilon=EPSILON)
    history = model.fit(x, y, batch_size=len(y), epochs=1, verbose=0).history
    assert set(history) == {"loss", "accuracy", "adversarial_loss"}
    # fit shows the loss being optimized (here L(E + delta)), not the mean of
    # the compiled loss's clean and perturbed calls.
    assert history["loss"][0] == pytest.approx(history["adversarial_loss"][0])
    assert evaluate_keys(model, x, y) == ["loss", "accuracy"]
    for variable, want in zip(model.trainable_variables, expected):
        np.testing.assert_allclose(variable.numpy(), want, rtol=1e-4, atol=1e-5)


def evaluate_keys(model, x, y):
    return list(model.evaluate(x, y, verbose=0, return_dict=True))


def test_bert4keras_embedding_restored_bit_for_bit():
    model = tiny_bert.classifier(tf_keras.optimizers.SGD(0.0))
    x, y = _bert_batch()
    matrix = model.get_layer("Embedding-Token").embeddings
    before = matrix.numpy()
    keras_reg.adversarial_training(model, "Embedding-Token", epsilon=1.0)
    model.fit(x, y, batch_size=2, epochs=3, verbose=0)
    np.testing.assert_array_equal(matrix.numpy(), before)


def test_bert4keras_errors_list_embedding_layers():
    model = _tiny_bert()
    with pytest.raises(ValueError, match="'Embedding-Token'"):
        keras_reg.adversarial_training(model, "Embedding-Tokens")


def test_logged_terms_are_not_model_weights():
    """A tf_keras metric is a layer: assigned as an attribute it would join
    get_weights() and checkpoints, and stay there after removal."""
    model = _tiny_bert()
    count = len(model.get_weights())
    keras_reg.adversarial_training(model, "Embedding-Token", epsilon=EPSILON)
    x, y = _bert_batch()
    assert "adversarial_loss" in model.fit(x, y, verbose=0).history
    assert len(model.get_weights()) == count
    keras_reg.remove_regularization(model)
    assert len(model.get_weights()) == count
    assert "adversarial_loss" not in model.fit(x, y, verbose=0).history
