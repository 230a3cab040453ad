"""A regulariser whose step changes at an epoch: every backend traces it anew.

`keras_reg.callbacks.RegularizationScope` remakes the train function when
`TrainingRegularizer.on_epoch_begin` says the step changed. On JAX the remade
function must not reuse the old trace (``jax.jit`` caches traces by function).
"""

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras
from tests import models

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")


class _ScaledFromEpoch(keras_reg.TrainingRegularizer):
    """Trains on ``factor * L`` from ``epoch`` on, on L before (a Python flag)."""

    def __init__(self, factor=3.0, epoch=1):
        self.factor = factor
        self.epoch = epoch
        self.active = epoch == 0

    def on_epoch_begin(self, epoch):
        before, self.active = self.active, epoch >= self.epoch
        return before != self.active

    def regularized_loss(self, step):
        return step.loss * self.factor if self.active else step.loss

    def get_config(self):
        return {"factor": self.factor, "epoch": self.epoch}


def _model(jit_compile):
    keras.utils.set_random_seed(0)
    model = models.build("functional")
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer=keras.optimizers.SGD(0.5),
        jit_compile=jit_compile,
    )
    return model


def _weights(model):
    return [keras.ops.convert_to_numpy(v) for v in model.trainable_weights]


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "jit"])
def test_a_step_that_changes_at_an_epoch_is_traced_anew(jit_compile, rng):
    if jit_compile and keras.backend.backend() == "torch":
        pytest.skip("jit_compile=True is torch.compile, refused on torch")
    x, y, w = models.batch(rng)

    scoped = _model(jit_compile)
    scope = keras_reg.callbacks.RegularizationScope(_ScaledFromEpoch())
    models.fit_one_batch(scoped, x, y, w, epochs=2, callbacks=[scope])

    expected = _model(jit_compile)
    models.fit_one_batch(expected, x, y, w)
    keras_reg.install_regularizer(expected, _ScaledFromEpoch(epoch=0))
    models.fit_one_batch(expected, x, y, w)

    plain = _model(jit_compile)
    models.fit_one_batch(plain, x, y, w, epochs=2)

    for got, want in zip(_weights(scoped), _weights(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert any(
        not np.allclose(got, want, rtol=1e-4, atol=1e-5)
        for got, want in zip(_weights(scoped), _weights(plain))
    )
