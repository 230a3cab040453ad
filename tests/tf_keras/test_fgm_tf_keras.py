"""FGM on tf_keras (Keras 2) models, including a BERT built by bert4keras 0.11.5.

Runs in its own process with TF_KERAS=1 and TF_USE_LEGACY_KERAS=1 (see the
runner); bert4keras is imported first, as its users do.
"""

import os
import warnings

import numpy as np
import pytest

if os.environ.get("TF_KERAS") != "1":
    pytest.skip("tf_keras tests run in their own process", allow_module_level=True)

import bert4keras.models  # noqa: E402, F401
import tf_keras  # noqa: E402

import keras_reg  # noqa: E402
from tests import fgm_reference, models  # noqa: E402
from tests.tf_keras import tiny_bert  # noqa: E402

LR, EPSILON = 0.5, 0.7


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_one_step_matches_numpy(jit_compile):
    (E, W, b), (x, y, w) = models.data()
    model = models.compiled("sequential", keras=tf_keras, jit_compile=jit_compile)
    model.set_weights([E, W, b])
    keras_reg.adversarial_training(model, "emb", epsilon=EPSILON)
    models.fit_one_batch(model, x, y, w)
    expected = fgm_reference.fgm_sgd_step(E, W, b, x, y, LR, EPSILON, w)
    models.assert_weights(model, expected)


def test_remove_and_callback_scope():
    (E, W, b), (x, y, w) = models.data()
    model = models.compiled("sequential", keras=tf_keras)
    model.set_weights([E, W, b])
    scope = keras_reg.callbacks.RegularizationScope(keras_reg.FGM("emb", EPSILON))
    assert isinstance(scope, tf_keras.callbacks.Callback)
    models.fit_one_batch(model, x, y, w, callbacks=[scope])
    E, W, b = fgm_reference.fgm_sgd_step(E, W, b, x, y, LR, EPSILON, w)
    models.assert_weights(model, (E, W, b))
    assert keras_reg.installed_regularizer(model) is None
    models.fit_one_batch(model, x, y, w)
    models.assert_weights(model, fgm_reference.plain_sgd_step(E, W, b, x, y, LR, w))


def _tiny_bert():
    return tiny_bert.classifier(tf_keras.optimizers.SGD(LR), metrics=["accuracy"])


def test_bert4keras_step_matches_reference():
    model = _tiny_bert()
    x, y = tiny_bert.batch()
    initial = model.get_weights()
    expected = tiny_bert.reference_fgm_step(model, x, y, EPSILON, LR)
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
    x, y = tiny_bert.batch()
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
    x, y = tiny_bert.batch()
    assert "adversarial_loss" in model.fit(x, y, verbose=0).history
    assert len(model.get_weights()) == count
    keras_reg.remove_regularization(model)
    assert len(model.get_weights()) == count
    assert "adversarial_loss" not in model.fit(x, y, verbose=0).history


def test_a_schedule_going_negative_is_reported_once_at_the_epoch_end():
    (E, W, b), (x, y, w) = models.data()
    model = models.compiled("sequential", keras=tf_keras)
    model.set_weights([E, W, b])
    keras_reg.adversarial_training(model, "emb", epsilon=lambda step: 1.0 - step)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        models.fit_one_batch(model, x, y, w, epochs=3)
    told = [str(c.message) for c in caught if "schedule returned" in str(c.message)]
    assert len(told) == 1 and "returned -1.0 at step 2" in told[0], told
