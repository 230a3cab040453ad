"""The composition checks, on Keras 3 and on tf_keras.

`Checks` holds them as test methods; `tests/test_composition.py` runs them on
the active Keras 3 backend, `tests/tf_keras/test_composition_tf_keras.py` on
tf_keras (subclasses set ``keras``). One SGD step of the bag-of-embeddings
model against the float64 references of `tests.composition_reference`.
"""

import copy
import pickle

import numpy as np
import pytest

import keras_reg
from tests import composition_reference as reference
from tests import fgm_reference, models

LR = 0.5
EPSILON = 0.7
RHO = 0.5


def _fitted(keras, regularizer, data, style="functional", epochs=1, **kwargs):
    """Returns (model, history) after ``epochs`` full-batch SGD steps."""
    (E, W, b), (x, y, w) = data
    model = models.compiled(style, lr=LR, keras=keras, **kwargs)
    models.set_weights(model, E, W, b)
    if regularizer is not None:
        keras_reg.install_regularizer(model, regularizer)
    history = model.fit(
        x,
        y,
        sample_weight=w,
        batch_size=len(x),
        epochs=epochs,
        shuffle=False,
        verbose=0,
    ).history
    return model, history


def _moved(expected, other):
    return max(np.abs(a - p).max() for a, p in zip(expected, other))


class _Recording(keras_reg.RDrop):
    """R-Drop that records the epochs it is told (and asks for a retrace)."""

    def __init__(self, weight=4.0, predictions=None):
        super().__init__(weight, predictions)
        self.epochs = []

    def on_epoch_begin(self, epoch):
        self.epochs.append(epoch)
        return True


class Checks:
    """The composition checks; a subclass sets ``keras``."""

    keras = None
    style = "functional"

    def test_fgm_plus_gradient_penalty_matches_the_reference(self):
        data = models.data(0)
        (E, W, b), (x, y, w) = data
        both = [
            keras_reg.FGM("emb", epsilon=EPSILON),
            keras_reg.GradientPenalty("emb", weight=1.0),
        ]
        model, history = _fitted(self.keras, both, data, self.style)
        expected = reference.fgm_plus_penalty_step(
            E, W, b, x, y, w, LR, EPSILON, "occurrence", 1.0
        )
        fgm_only = fgm_reference.fgm_sgd_step(E, W, b, x, y, LR, EPSILON, w)
        assert _moved(expected, fgm_only) > 1e-3  # the penalty moves the step
        models.assert_weights(model, expected, rtol=1e-4, atol=1e-5)
        assert {"adversarial_loss", "gradient_penalty"} <= set(history)

    def test_fgm_plus_rdrop_without_dropout_is_fgm(self):
        data = models.data(1)
        (E, W, b), (x, y, w) = data
        both = [keras_reg.FGM("emb", epsilon=EPSILON), keras_reg.RDrop(weight=4.0)]
        model, history = _fitted(self.keras, both, data, self.style)
        alone, _ = _fitted(
            self.keras, keras_reg.FGM("emb", epsilon=EPSILON), data, self.style
        )
        for got, want in zip(models.get_weights(model), models.get_weights(alone)):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        expected = fgm_reference.fgm_sgd_step(E, W, b, x, y, LR, EPSILON, w)
        models.assert_weights(model, expected)
        assert history["rdrop_kl"][0] == pytest.approx(0.0, abs=1e-7)

    def test_sam_around_fgm_matches_the_reference(self):
        data = models.data(2)
        (E, W, b), (x, y, w) = data
        both = [keras_reg.SAM(rho=RHO), keras_reg.FGM("emb", epsilon=EPSILON)]
        model, history = _fitted(self.keras, both, data, self.style)
        expected = reference.sam_around_fgm_step(E, W, b, x, y, w, LR, RHO, EPSILON)
        fgm_only = fgm_reference.fgm_sgd_step(E, W, b, x, y, LR, EPSILON, w)
        assert _moved(expected, fgm_only) > 1e-2  # SAM moves the FGM step
        models.assert_weights(model, expected)
        assert set(history) >= {"sharpness", "adversarial_loss"}

    def test_the_order_of_the_members_does_not_matter(self):
        data = models.data(2)
        first, _ = _fitted(
            self.keras,
            [keras_reg.FGM("emb", epsilon=EPSILON), keras_reg.SAM(rho=RHO)],
            data,
            self.style,
        )
        (E, W, b), (x, y, w) = data
        expected = reference.sam_around_fgm_step(E, W, b, x, y, w, LR, RHO, EPSILON)
        models.assert_weights(first, expected)

    def test_a_list_of_one_is_that_regularizer(self):
        data = models.data(3)
        fgm = keras_reg.FGM("emb", epsilon=EPSILON)
        model, history = _fitted(self.keras, [fgm], data, self.style, epochs=2)
        assert keras_reg.installed_regularizer(model) is fgm
        alone, plain_history = _fitted(
            self.keras,
            keras_reg.FGM("emb", epsilon=EPSILON),
            data,
            self.style,
            epochs=2,
        )
        for got, want in zip(models.get_weights(model), models.get_weights(alone)):
            np.testing.assert_array_equal(got, want)
        assert history == plain_history

    def test_lr_zero_keeps_every_weight_bit_identical(self):
        (E, W, b), (x, y, w) = models.data(4)
        members = [
            keras_reg.SAM(rho=RHO),
            keras_reg.FGM("emb", epsilon=EPSILON),
            keras_reg.RDrop(weight=1.0),
        ]
        model = models.compiled(
            self.style, lr=0.0, l2=1e-3, dropout=0.3, keras=self.keras
        )
        models.set_weights(model, E, W, b)
        keras_reg.install_regularizer(model, members)
        model.fit(x, y, sample_weight=w, batch_size=3, epochs=2, verbose=0)
        for got, want in zip(models.get_weights(model), (E, W, b)):
            np.testing.assert_array_equal(got, want)

    def test_install_scope_and_remove(self):
        data = models.data(5)
        _, (x, y, _) = data
        model = models.compiled(self.style, keras=self.keras)
        members = [keras_reg.FGM("emb", epsilon=EPSILON), keras_reg.RDrop()]
        keras_reg.install_regularizer(model, members)
        installed = keras_reg.installed_regularizer(model)
        assert isinstance(installed, keras_reg.Composition)
        assert installed.regularizers == members
        history = model.fit(x, y, verbose=0).history
        assert set(history) == {"loss", "adversarial_loss", "rdrop_kl"}
        keras_reg.remove_regularization(model)
        assert keras_reg.installed_regularizer(model) is None
        assert set(model.fit(x, y, verbose=0).history) == {"loss"}
        scope = keras_reg.callbacks.RegularizationScope(
            [keras_reg.FGM("emb", epsilon=EPSILON), keras_reg.RDrop()]
        )
        if self.keras.__name__.startswith("tf_keras"):
            scope = keras_reg.callbacks.tf_keras_scope(scope.regularizer)
        history = model.fit(x, y, verbose=0, callbacks=[scope]).history
        assert set(history) == {"loss", "adversarial_loss", "rdrop_kl"}
        assert keras_reg.installed_regularizer(model) is None

    def test_epochs_reach_every_member(self):
        data = models.data(6)
        _, (x, y, _) = data
        recording = _Recording()
        model = models.compiled(self.style, keras=self.keras)
        scope = keras_reg.callbacks.RegularizationScope(
            [keras_reg.FGM("emb", epsilon=EPSILON), recording]
        )
        if self.keras.__name__.startswith("tf_keras"):
            scope = keras_reg.callbacks.tf_keras_scope(scope.regularizer)
        model.fit(x, y, epochs=2, verbose=0, callbacks=[scope])
        assert recording.epochs == [0, 1]


def test_refusals_name_both_and_the_fix():
    fgm = keras_reg.FGM("emb")
    with pytest.raises(ValueError, match=r"at most one of the weight-space .*SAM.*AWP"):
        keras_reg.compose(keras_reg.SAM(), keras_reg.AWP(), fgm)
    with pytest.raises(ValueError, match=r"at most one of the multi-task balancers"):
        keras_reg.compose(keras_reg.LossBalancing(), keras_reg.LossBalancing("prior"))
    with pytest.raises(
        ValueError, match=r"both have the logged term 'adversarial_loss'"
    ):
        keras_reg.compose(fgm, keras_reg.FGM("emb", epsilon=0.1))
    with pytest.raises(ValueError, match=r"cannot wrap the multi-task balancer"):
        keras_reg.compose(keras_reg.SAM(), keras_reg.LossBalancing())
    with pytest.raises(ValueError, match=r"empty list"):
        keras_reg.compose()
    with pytest.raises(TypeError, match=r"received 'FGM' \(str\)"):
        keras_reg.compose(fgm, "FGM")
    with pytest.raises(TypeError, match=r"expects a list"):
        keras_reg.Composition(fgm)


def test_sam_refuses_a_member_that_needs_the_trainers_pass():
    model = models.compiled()
    both = [keras_reg.SAM(), keras_reg.GradientPenalty("emb")]
    with pytest.raises(ValueError, match=r"cannot wrap GradientPenalty.*outputs"):
        keras_reg.install_regularizer(model, both)
    assert keras_reg.installed_regularizer(model) is None


def test_nested_compositions_flatten_and_one_is_itself():
    fgm, rdrop, sam = keras_reg.FGM("emb"), keras_reg.RDrop(), keras_reg.SAM()
    nested = keras_reg.compose(keras_reg.compose(fgm, rdrop), [sam])
    assert nested.regularizers == [fgm, rdrop, sam]
    assert keras_reg.compose(fgm) is fgm
    assert keras_reg.compose([[fgm]]) is fgm


def test_config_round_trip_pickle_and_repr():
    from keras_reg._compat import keras

    composition = keras_reg.compose(
        keras_reg.SAM(rho=0.1),
        keras_reg.FGM(
            "emb", epsilon=keras.optimizers.schedules.PolynomialDecay(1.0, 10, 0.1)
        ),
        keras_reg.RDrop(weight=2.0),
    )
    config = composition.get_config()
    assert [c["class_name"] for c in config["regularizers"]] == ["SAM", "FGM", "RDrop"]
    for restored in (
        keras_reg.Composition.from_config(config),
        keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(composition)
        ),
        pickle.loads(pickle.dumps(composition)),
        copy.deepcopy(composition),
    ):
        assert type(restored) is keras_reg.Composition
        assert restored.get_config() == config
        assert repr(restored) == repr(composition)
    assert repr(composition).startswith("Composition([SAM(rho=0.1")
