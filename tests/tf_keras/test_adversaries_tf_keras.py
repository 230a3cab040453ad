"""PGD, FreeLB and FreeFGM on tf_keras models, including bert4keras's BERT.

Runs in its own process with TF_KERAS=1 and TF_USE_LEGACY_KERAS=1.
"""

import os

import numpy as np
import pytest

if os.environ.get("TF_KERAS") != "1":
    pytest.skip("tf_keras tests run in their own process", allow_module_level=True)

import bert4keras.models  # noqa: E402, F401
import tf_keras  # noqa: E402

import keras_reg  # noqa: E402
from tests import adversaries_reference, fgm_reference, models  # noqa: E402
from tests.tf_keras import tiny_bert  # noqa: E402

LR = 0.5


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_pgd_projected_step_matches_numpy(jit_compile):
    (E, W, b), (x, y, w) = models.data()
    model = models.compiled("sequential", keras=tf_keras, jit_compile=jit_compile)
    model.set_weights([E, W, b])
    keras_reg.adversarial_training(
        model, "emb", epsilon=0.7, method="pgd", alpha=0.5, steps=3
    )
    models.fit_one_batch(model, x, y, w)
    expected, active = adversaries_reference.pgd_sgd_step(
        E, W, b, x, y, LR, 0.7, 0.5, 3, w
    )
    assert active
    models.assert_weights(model, expected)


def test_freelb_step_matches_numpy():
    (E, W, b), (x, y, w) = models.data()
    model = models.compiled("sequential", keras=tf_keras)
    model.set_weights([E, W, b])
    keras_reg.adversarial_training(
        model, "emb", epsilon=0.05, method="freelb", alpha=0.04, steps=3
    )
    models.fit_one_batch(model, x, y, w)
    expected, _ = adversaries_reference.freelb_sgd_step(
        E, W, b, x, y, LR, 0.05, 0.04, 3, w
    )
    models.assert_weights(model, expected)


def test_free_fgm_two_steps_match_numpy_and_state_is_not_a_weight():
    (E, W, b), (x, y, w) = models.data()
    model = models.compiled("sequential", keras=tf_keras)
    model.set_weights([E, W, b])
    keras_reg.adversarial_training(model, "emb", epsilon=0.7, method="free_fgm")
    assert len(model.get_weights()) == 3
    models.fit_one_batch(model, x, y, w, epochs=2)
    expected = adversaries_reference.free_fgm_sgd_steps(E, W, b, x, y, LR, 0.7, 2, w)
    models.assert_weights(model, expected)
    assert len(model.get_weights()) == 3


def test_scope_start_epoch():
    (E, W, b), (x, y, w) = models.data()
    model = models.compiled("sequential", keras=tf_keras)
    model.set_weights([E, W, b])
    scope = keras_reg.callbacks.RegularizationScope(
        keras_reg.FGM("emb", 0.7), start_epoch=1
    )
    models.fit_one_batch(model, x, y, w, epochs=2, callbacks=[scope])
    E, W, b = fgm_reference.plain_sgd_step(E, W, b, x, y, LR, w)
    models.assert_weights(model, fgm_reference.fgm_sgd_step(E, W, b, x, y, LR, 0.7, w))


METHODS = {
    "pgd": {"alpha": 0.3, "steps": 3},
    "freelb": {"alpha": 0.3, "steps": 2, "init_scale": 0.1, "seed": 1},
    "free_fgm": {},
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_bert4keras_lr_zero_keeps_every_weight_bit_identical(method):
    model = tiny_bert.classifier(tf_keras.optimizers.SGD(0.0))
    x, y = tiny_bert.batch()
    before = model.get_weights()
    keras_reg.adversarial_training(
        model, "Embedding-Token", epsilon=1.0, method=method, **METHODS[method]
    )
    history = model.fit(x, y, batch_size=2, epochs=2, verbose=0).history
    assert np.all(np.isfinite(history["adversarial_loss"]))
    after = model.get_weights()
    assert len(after) == len(before)
    for got, want in zip(after, before):
        np.testing.assert_array_equal(got, want)


def test_bert4keras_pgd_one_step_is_fgm_exactly():
    x, y = tiny_bert.batch()
    results, initial = [], None
    for method, options in (("fgm", {}), ("pgd", {"alpha": 0.7, "steps": 1})):
        model = tiny_bert.classifier(tf_keras.optimizers.SGD(LR))
        initial = initial or model.get_weights()
        model.set_weights(initial)
        tf_keras.utils.set_random_seed(0)
        keras_reg.adversarial_training(
            model,
            "Embedding-Token",
            epsilon=0.7,
            method=method,
            add_clean_loss=True,
            **options,
        )
        model.fit(x, y, batch_size=len(y), epochs=2, verbose=0)
        results.append(model.get_weights())
    for fgm, pgd in zip(*results):
        np.testing.assert_array_equal(pgd, fgm)
