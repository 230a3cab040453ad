"""Loss balancing on tf_keras (Keras 2) models (own process: TF_KERAS=1).

The same closed forms as tests/test_multitask.py: tf_keras's compiled loss
(``model.compiled_loss``) keeps one loss and one ``<output>_loss`` tracker per
output, which is all the balancing needs.
"""

import os

import numpy as np
import pytest

if os.environ.get("TF_KERAS") != "1":
    pytest.skip("tf_keras tests run in their own process", allow_module_level=True)

import bert4keras.models  # noqa: E402, F401
import tf_keras  # noqa: E402

import keras_reg  # noqa: E402
from tests import multitask_reference as ref  # noqa: E402

LR = 0.05
ALL = ("realtime", "initial", "prior", "gradient", "pareto")


def _model(lr=LR, losses=("sparse_categorical_crossentropy", "mse"), l2=0.0,
           loss_weights=None, jit_compile=False):
    inputs = tf_keras.Input((ref.IN,))
    regularizer = tf_keras.regularizers.L2(l2) if l2 else None
    h = tf_keras.layers.Dense(
        ref.HIDDEN, name="shared", kernel_regularizer=regularizer
    )(inputs)
    cls = tf_keras.layers.Dense(ref.CLASSES, activation="softmax", name="cls")(h)
    reg = tf_keras.layers.Dense(1, name="reg")(h)
    model = tf_keras.Model(inputs, [cls, reg])
    model.compile(
        optimizer=tf_keras.optimizers.SGD(lr),
        loss=list(losses),
        loss_weights=loss_weights,
        jit_compile=jit_compile,
    )
    return model


def _layer_weights(model):
    # Not get_weights(): on tf_keras it also lists the logged terms' Mean
    # variables that the installer attaches to the model.
    return [v.numpy() for v in model.trainable_weights]


def _options(method, x, y, w=None):
    if method == "initial":
        return {"x": x, "y": y, "sample_weight": w}
    if method == "prior":
        return {"y": y, "sample_weight": w}
    if method in ("gradient", "pareto"):
        return {"shared_layer": "shared"}
    return {}


def _fit(model, x, y, w=None, epochs=1):
    return model.fit(
        x, y, sample_weight=w, batch_size=len(x), epochs=epochs, shuffle=False,
        verbose=0,
    ).history


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("method", ALL)
def test_one_sgd_step_matches_numpy(method, jit_compile):
    rng = np.random.default_rng(0)
    weights = ref.initial_weights(rng)
    x, y_cls, y_reg, w = ref.batch(rng)
    x_ref, y_cls_ref, y_reg_ref, w_ref = ref.batch(rng, size=12)
    model = _model(l2=0.01, loss_weights=[2.0, 0.5], jit_compile=jit_compile)
    model.set_weights(weights)
    keras_reg.balance_losses(
        model, method, **_options(method, x_ref, [y_cls_ref, y_reg_ref], w_ref)
    )
    history = _fit(model, x, [y_cls, y_reg], w)
    refs = None
    if method == "initial":
        refs, _ = ref.task_losses(weights, x_ref, y_cls_ref, y_reg_ref, w_ref)
    elif method == "prior":
        refs = ref.prior_losses(y_cls_ref, y_reg_ref, w_ref)
    c = ref.factors(
        method, weights, x, y_cls, y_reg, w, references=refs, loss_weights=(2.0, 0.5)
    )
    expected = ref.sgd_step(weights, x, y_cls, y_reg, LR, c, w, l2=0.01)
    for got, want in zip(_layer_weights(model), expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    (l_cls, l_reg), _ = ref.task_losses(weights, x, y_cls, y_reg, w)
    np.testing.assert_allclose(history["cls_loss"][0], l_cls, rtol=1e-5)
    np.testing.assert_allclose(history["reg_loss"][0], l_reg, rtol=1e-5)
    np.testing.assert_allclose(history["cls_loss_weight"][0], c[0], rtol=1e-5)


def test_scale_invariance_of_the_realtime_weighting():
    rng = np.random.default_rng(4)
    weights = ref.initial_weights(rng)
    x, y_cls, y_reg, w = ref.batch(rng)

    def scaled(y_true, y_pred):
        return 1000.0 * tf_keras.losses.mean_squared_error(y_true, y_pred)

    results = []
    for loss in ("mse", scaled):
        model = _model(losses=("sparse_categorical_crossentropy", loss))
        model.set_weights(weights)
        keras_reg.balance_losses(model)
        _fit(model, x, [y_cls, y_reg], w)
        results.append(_layer_weights(model))
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)


def test_logs_lr_zero_errors_and_removal():
    rng = np.random.default_rng(5)
    x, y_cls, y_reg, w = ref.batch(rng)
    model = _model(lr=0.0, l2=1e-3)
    before = _layer_weights(model)
    keras_reg.balance_losses(model)
    history = _fit(model, x, [y_cls, y_reg], w, epochs=2)
    assert set(history) == {
        "loss", "cls_loss", "reg_loss", "cls_loss_weight", "reg_loss_weight"
    }
    for got, old in zip(_layer_weights(model), before):
        np.testing.assert_array_equal(got, old)
    keys = model.evaluate(x, [y_cls, y_reg], verbose=0, return_dict=True)
    assert set(keys) == {"loss", "cls_loss", "reg_loss"}
    keras_reg.remove_regularization(model)
    assert set(_fit(model, x, [y_cls, y_reg])) == {"loss", "cls_loss", "reg_loss"}

    inputs = tf_keras.Input((ref.IN,))
    single = tf_keras.Model(inputs, tf_keras.layers.Dense(2)(inputs))
    single.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="one loss per output"):
        keras_reg.balance_losses(single)
