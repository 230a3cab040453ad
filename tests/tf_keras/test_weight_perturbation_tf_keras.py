"""SAM / ASAM, AWP and R-Drop on tf_keras models, including a bert4keras BERT.

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
from tests import fgm_reference, models  # noqa: E402
from tests import weight_perturbation_reference as reference  # noqa: E402
from tests.tf_keras import tiny_bert  # noqa: E402

LR = 0.5


@pytest.mark.parametrize(
    "regularizer, perturbation",
    [
        (
            lambda: keras_reg.SAM(rho=0.5),
            lambda *a: reference.sam_perturbation(*a, rho=0.5),
        ),
        (
            lambda: keras_reg.SAM(rho=1.0, adaptive=True, eta=0.05),
            lambda *a: reference.sam_perturbation(*a, rho=1.0, adaptive=True, eta=0.05),
        ),
        (
            lambda: keras_reg.AWP(gamma=0.2),
            lambda *a: reference.awp_perturbation(*a, gamma=0.2),
        ),
    ],
    ids=["sam", "asam", "awp"],
)
def test_one_step_matches_numpy(regularizer, perturbation):
    (E, W, b), (x, y, w) = models.data()
    model = models.compiled("sequential", keras=tf_keras)
    model.set_weights([E, W, b])
    keras_reg.install_regularizer(model, regularizer())
    model.fit(x, y, sample_weight=w, batch_size=6, shuffle=False, verbose=0)
    e = perturbation(E, W, b, x, y, w)
    expected = reference.perturbed_sgd_step(E, W, b, x, y, w, LR, e)
    plain = fgm_reference.plain_sgd_step(E, W, b, x, y, LR, w)
    assert max(np.abs(a - p).max() for a, p in zip(expected, plain)) > 1e-2
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("deprecated", [False, True], ids=["scope", "awp"])
def test_awp_warm_up_through_the_scope(deprecated):
    (E, W, b), (x, y, w) = models.data()
    model = models.compiled("sequential", keras=tf_keras)
    model.set_weights([E, W, b])
    if deprecated:
        with pytest.warns(DeprecationWarning):
            awp = keras_reg.AWP(gamma=0.2, start_epoch=np.int64(1))
        scope = keras_reg.callbacks.RegularizationScope(awp)
    else:
        scope = keras_reg.callbacks.RegularizationScope(
            keras_reg.AWP(gamma=0.2), start_epoch=1
        )
    model.fit(
        x,
        y,
        sample_weight=w,
        batch_size=6,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[scope],
    )
    E1, W1, b1 = fgm_reference.plain_sgd_step(E, W, b, x, y, LR, w)
    e = reference.awp_perturbation(E1, W1, b1, x, y, w, gamma=0.2)
    expected = reference.perturbed_sgd_step(E1, W1, b1, x, y, w, LR, e)
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize(
    "regularizer",
    [
        lambda: keras_reg.SAM(rho=0.5),
        lambda: keras_reg.AWP(gamma=0.05),
        lambda: keras_reg.RDrop(),
    ],
    ids=["sam", "awp", "rdrop"],
)
def test_bert_learning_rate_zero_keeps_every_weight_bit_identical(regularizer):
    model = tiny_bert.classifier(tf_keras.optimizers.SGD(0.0))
    before = model.get_weights()
    keras_reg.install_regularizer(model, regularizer())
    x, y = tiny_bert.batch(seed=2, repeat=False)
    history = model.fit(x, y, batch_size=2, epochs=3, verbose=0).history
    assert np.all(np.isfinite(history["loss"]))
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)


def test_rdrop_without_dropout_is_the_plain_step_and_with_dropout_differs():
    (E, W, b), (x, y, w) = models.data()
    results = []
    for dropout, rdrop in ((0.0, False), (0.0, True)):
        model = models.compiled("sequential", dropout=dropout, keras=tf_keras)
        model.set_weights([E, W, b])
        if rdrop:
            keras_reg.r_drop(model)
        model.fit(x, y, sample_weight=w, batch_size=6, shuffle=False, verbose=0)
        results.append(model.get_weights())
    for plain, got in zip(*results):
        np.testing.assert_allclose(got, plain, rtol=1e-6, atol=1e-7)
    model = models.compiled("sequential", dropout=0.5, keras=tf_keras)
    keras_reg.r_drop(model)
    history = model.fit(x, y, batch_size=6, epochs=2, verbose=0).history
    # The symmetric KL is exactly 0 when both passes draw the same mask; with
    # two masks it is small here (~1e-4: a near-uniform untrained model) but
    # never 0, so any positive value tells the masks apart.
    assert all(kl > 1e-8 for kl in history["rdrop_kl"]), history["rdrop_kl"]
    assert history["rdrop_kl"][0] != history["rdrop_kl"][1]
