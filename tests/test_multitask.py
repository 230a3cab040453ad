"""Loss balancing (issue 15): each method's SGD step against NumPy closed forms,
the invariances the posts promise, loss_weights and sample weights, the logs,
the errors, and the conformance checks on a two-head model (the shared suite's
model has one output, which has nothing to balance)."""

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras
from tests import multitask_reference as ref

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")
LR = 0.05
ALL = ("realtime", "initial", "prior", "gradient", "pareto")


def _model(lr=LR, losses=None, loss_weights=None, l2=0.0, dict_outputs=False,
           jit_compile=False):
    inputs = keras.Input((ref.IN,))
    regularizer = keras.regularizers.L2(l2) if l2 else None
    h = keras.layers.Dense(ref.HIDDEN, name="shared", kernel_regularizer=regularizer)(
        inputs
    )
    cls = keras.layers.Dense(ref.CLASSES, activation="softmax", name="cls")(h)
    reg = keras.layers.Dense(1, name="reg")(h)
    outputs = {"cls": cls, "reg": reg} if dict_outputs else [cls, reg]
    model = keras.Model(inputs, outputs)
    if losses is None:
        losses = ["sparse_categorical_crossentropy", "mse"]
    model.compile(
        optimizer=keras.optimizers.SGD(lr),
        loss=losses,
        loss_weights=loss_weights,
        jit_compile=jit_compile,
    )
    return model


def _set(model, weights):
    for layer, (kernel, bias) in zip(
        ("shared", "cls", "reg"), zip(weights[::2], weights[1::2])
    ):
        model.get_layer(layer).kernel.assign(kernel)
        model.get_layer(layer).bias.assign(bias)


def _get(model):
    return [
        keras.ops.convert_to_numpy(v)
        for layer in ("shared", "cls", "reg")
        for v in (model.get_layer(layer).kernel, model.get_layer(layer).bias)
    ]


def _fit(model, x, y, w=None, epochs=1):
    return model.fit(
        x, y, sample_weight=w, batch_size=len(x), epochs=epochs, shuffle=False,
        verbose=0,
    ).history


def _options(method, x, y, w=None):
    if method == "initial":
        return {"x": x, "y": y, "sample_weight": w}
    if method == "prior":
        return {"y": y, "sample_weight": w}
    if method in ("gradient", "pareto"):
        return {"shared_layer": "shared"}
    return {}


def _references(method, weights, x, y_cls, y_reg, w=None, scale=1.0):
    if method == "initial":
        losses, _ = ref.task_losses(weights, x, y_cls, y_reg, w, scale)
        return losses
    if method == "prior":
        l_cls, l_reg = ref.prior_losses(y_cls, y_reg, w)
        return l_cls, scale * l_reg
    return None


def _close(got, want, rtol=2e-5, atol=2e-6):
    for g, e in zip(got, want):
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)


# ---- each method's update against NumPy -------------------------------------------
@pytest.mark.parametrize("l2", [0.0, 0.01], ids=["plain", "l2"])
@pytest.mark.parametrize("method", ALL)
def test_one_sgd_step_matches_numpy(method, l2):
    rng = np.random.default_rng(0)
    weights = ref.initial_weights(rng)
    x, y_cls, y_reg, w = ref.batch(rng)
    x_ref, y_cls_ref, y_reg_ref, w_ref = ref.batch(rng, size=12)  # the references
    model = _model(l2=l2)
    _set(model, weights)
    keras_reg.balance_losses(
        model, method, **_options(method, x_ref, [y_cls_ref, y_reg_ref], w_ref)
    )
    _fit(model, x, [y_cls, y_reg], w)
    refs = _references(method, weights, x_ref, y_cls_ref, y_reg_ref, w_ref)
    c = ref.factors(method, weights, x, y_cls, y_reg, w, references=refs)
    expected = ref.sgd_step(weights, x, y_cls, y_reg, LR, c, w, l2=l2)
    _close(_get(model), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("gamma", [0.5, 1.0])
def test_generalised_mean_gamma(gamma):
    rng = np.random.default_rng(1)
    weights = ref.initial_weights(rng)
    x, y_cls, y_reg, w = ref.batch(rng)
    model = _model()
    _set(model, weights)
    keras_reg.balance_losses(model, "realtime", gamma=gamma)
    _fit(model, x, [y_cls, y_reg], w)
    c = ref.factors("realtime", weights, x, y_cls, y_reg, w, gamma=gamma)
    _close(_get(model), ref.sgd_step(weights, x, y_cls, y_reg, LR, c, w), 1e-4)
    if gamma == 1.0:  # the plain weighted sum: Keras's own step
        plain = ref.sgd_step(weights, x, y_cls, y_reg, LR, (1.0, 1.0), w)
        _close(_get(model), plain, 1e-4)


def test_reference_losses_given_instead_of_data():
    rng = np.random.default_rng(2)
    weights = ref.initial_weights(rng)
    x, y_cls, y_reg, _ = ref.batch(rng)
    model = _model()
    _set(model, weights)
    keras_reg.balance_losses(
        model, "initial", reference_losses={"cls": np.log(3.0), "reg": 900.0}
    )
    _fit(model, x, [y_cls, y_reg])
    c = ref.factors("initial", weights, x, y_cls, y_reg, references=(np.log(3), 900))
    _close(_get(model), ref.sgd_step(weights, x, y_cls, y_reg, LR, c), 1e-4)


def test_prior_losses_are_entropy_and_variance():
    rng = np.random.default_rng(3)
    _, y_cls, y_reg, _ = ref.batch(rng, size=50)
    model = _model()
    regularizer = keras_reg.LossBalancing("prior", y=[y_cls, y_reg])
    keras_reg.install_regularizer(model, regularizer)
    freq = np.bincount(y_cls, minlength=ref.CLASSES) / len(y_cls)
    entropy = -np.sum(freq[freq > 0] * np.log(freq[freq > 0]))
    got = regularizer.get_config()["reference_losses"]
    np.testing.assert_allclose(got["cls"], entropy, rtol=1e-5)
    np.testing.assert_allclose(got["reg"], np.var(y_reg.astype("float64")), rtol=1e-5)


# ---- the invariances ---------------------------------------------------------------
def _scaled_mse(scale, shift=0.0):
    def loss(y_true, y_pred):
        error = keras.ops.square(y_true - y_pred) + shift
        return scale * keras.ops.mean(error, axis=-1)

    return loss


@pytest.mark.parametrize("method", ["realtime", "initial", "prior", "gradient"])
def test_multiplying_a_task_loss_by_1000_leaves_the_update_unchanged(method):
    rng = np.random.default_rng(4)
    weights = ref.initial_weights(rng)
    x, y_cls, y_reg, w = ref.batch(rng)
    results = {}
    for scale in (1.0, 1000.0):
        model = _model(losses=["sparse_categorical_crossentropy", _scaled_mse(scale)])
        _set(model, weights)
        keras_reg.balance_losses(model, method, **_options(method, x, [y_cls, y_reg]))
        _fit(model, x, [y_cls, y_reg], w)
        results[scale] = _get(model)
    _close(results[1000.0], results[1.0], rtol=2e-5, atol=1e-7)
    # ... while the plain sum takes a 1000x larger step on the regression head.
    plain = [
        ref.sgd_step(weights, x, y_cls, y_reg, LR, (1.0, 1.0), w, scale=s)
        for s in (1.0, 1000.0)
    ]
    assert not np.allclose(plain[0][4], plain[1][4], rtol=1e-2)


def test_gradient_method_ignores_a_constant_added_to_a_loss():
    rng = np.random.default_rng(5)
    weights = ref.initial_weights(rng)
    x, y_cls, y_reg, _ = ref.batch(rng)
    results = {}
    for method in ("gradient", "realtime"):
        for shift in (0.0, 50.0):
            model = _model(
                losses=["sparse_categorical_crossentropy", _scaled_mse(1.0, shift)]
            )
            _set(model, weights)
            keras_reg.balance_losses(model, method, **_options(method, x, None))
            _fit(model, x, [y_cls, y_reg])
            results[method, shift] = _get(model)
    _close(results["gradient", 50.0], results["gradient", 0.0], rtol=2e-5)
    assert not np.allclose(results["realtime", 50.0][4], results["realtime", 0.0][4])


# ---- loss_weights, sample weights, per-output logs ------------------------------
@pytest.mark.parametrize("method", ["realtime", "prior", "pareto"])
def test_loss_weights_are_multiplied_in(method):
    rng = np.random.default_rng(6)
    weights = ref.initial_weights(rng)
    x, y_cls, y_reg, w = ref.batch(rng)
    y = {"cls": y_cls, "reg": y_reg}
    model = _model(
        losses={"reg": "mse", "cls": "sparse_categorical_crossentropy"},
        loss_weights={"cls": 2.0, "reg": 0.5},
        dict_outputs=True,
    )
    _set(model, weights)
    keras_reg.balance_losses(model, method, **_options(method, x, y))
    history = _fit(model, x, y, w)
    refs = _references(method, weights, x, y_cls, y_reg)
    c = ref.factors(
        method, weights, x, y_cls, y_reg, w, references=refs, loss_weights=(2.0, 0.5)
    )
    _close(_get(model), ref.sgd_step(weights, x, y_cls, y_reg, LR, c, w), 1e-4)
    np.testing.assert_allclose(history["cls_loss_weight"][0], c[0], rtol=1e-5)
    np.testing.assert_allclose(history["reg_loss_weight"][0], c[1], rtol=1e-5)


def test_realtime_is_unchanged_by_a_common_factor_on_the_sample_weights():
    rng = np.random.default_rng(7)
    weights = ref.initial_weights(rng)
    x, y_cls, y_reg, w = ref.batch(rng)
    results = []
    for factor in (1.0, 3.0):
        model = _model()
        _set(model, weights)
        keras_reg.balance_losses(model, "realtime")
        _fit(model, x, [y_cls, y_reg], w * factor)
        results.append(_get(model))
    _close(results[1], results[0], rtol=2e-5, atol=1e-7)


def test_per_output_logs_are_keras_own_and_weights_are_their_inverses():
    rng = np.random.default_rng(8)
    weights = ref.initial_weights(rng)
    x, y_cls, y_reg, w = ref.batch(rng)
    logs = []
    for balanced in (False, True):
        model = _model(lr=0.0)
        _set(model, weights)
        if balanced:
            keras_reg.balance_losses(model, "realtime")
        logs.append(_fit(model, x, [y_cls, y_reg], w))
    plain, history = logs
    for name in ("cls_loss", "reg_loss"):
        np.testing.assert_allclose(history[name], plain[name], rtol=1e-6)
        np.testing.assert_allclose(
            np.asarray(history[f"{name}_weight"]) * history[name], 1.0, rtol=1e-5
        )
    np.testing.assert_allclose(history["loss"], 2.0, rtol=1e-5)  # sum of L_i / L_i
    (l_cls, l_reg), _ = ref.task_losses(weights, x, y_cls, y_reg, w)
    np.testing.assert_allclose(history["cls_loss"][0], l_cls, rtol=1e-5)
    np.testing.assert_allclose(history["reg_loss"][0], l_reg, rtol=1e-5)


class TwoHeads(keras.Model):
    def __init__(self):
        super().__init__()
        self.shared = keras.layers.Dense(ref.HIDDEN)
        self.heads = [keras.layers.Dense(1), keras.layers.Dense(1)]

    def call(self, x):
        h = self.shared(x)
        return [head(h) for head in self.heads]


def test_subclassed_model_and_outputs_sharing_a_loss_name():
    rng = np.random.default_rng(14)
    x, _, y_reg, _ = ref.batch(rng)
    y = [y_reg / 30.0, y_reg]
    model = TwoHeads()
    model.compile(optimizer=keras.optimizers.SGD(1e-4), loss="mse")
    # Before its first step the model cannot tell its output names: it trains
    # balanced, without the per-task logs.
    keras_reg.balance_losses(model)
    assert np.allclose(_fit(model, x, y)["loss"], 2.0)
    # After it, both outputs are named after their loss: numbered in the logs.
    keras_reg.balance_losses(model)
    history = _fit(model, x, y)
    # The second target is 30x the first: its loss is hundreds of times larger.
    ratio = history["mse_1_loss_weight"][0] / history["mse_2_loss_weight"][0]
    assert ratio > 50, ratio
    with pytest.raises(ValueError, match="no distinct names"):
        keras_reg.balance_losses(model, "prior", y=y)


# ---- errors --------------------------------------------------------------------------
def test_single_output_model_is_refused():
    inputs = keras.Input((ref.IN,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="one loss per output.*1 loss term"):
        keras_reg.balance_losses(model)


def test_one_total_loss_is_refused():
    inputs = keras.Input((ref.IN,))
    h = keras.layers.Dense(4)(inputs)
    heads = [keras.layers.Dense(3)(h), keras.layers.Dense(1)(h)]
    both = keras.layers.Concatenate()(heads)
    model = keras.Model(inputs, both)
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="one loss computed over all outputs"):
        keras_reg.balance_losses(model, "realtime")
    two = _model(losses=["sparse_categorical_crossentropy", None])
    with pytest.raises(ValueError, match="1 loss term"):
        keras_reg.balance_losses(two)
    without = keras.Model(inputs, heads)  # the loss comes from add_loss, say
    without.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="no compiled loss"):
        keras_reg.balance_losses(without)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "geometric"}, "`method` must be one of"),
        ({"method": "prior", "gamma": 0.5}, "gamma"),
        ({"method": "gradient"}, "shared_layer"),
        ({"method": "realtime", "shared_layer": "shared"}, "shared_layer"),
        ({"method": "initial"}, "pass x= and y="),
        ({"method": "prior"}, "pass y="),
        ({"method": "realtime", "y": [1]}, "takes no y"),
        ({"method": "prior", "reference_losses": {"cls": 1.0}}, "exactly the outputs"),
        ({"method": "prior", "reference_losses": {"cls": 1.0, "reg": 0}}, "positive"),
        ({"method": "gradient", "shared_layer": "nope"}, "No layer named 'nope'"),
        ({"methd": "prior"}, "did you mean 'method'"),
    ],
)
def test_bad_arguments_name_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_reg.balance_losses(_model(), **kwargs)


def test_constant_target_has_no_prior_loss():
    rng = np.random.default_rng(9)
    _, y_cls, y_reg, _ = ref.batch(rng)
    with pytest.raises(ValueError, match="prior loss of 0"):
        keras_reg.balance_losses(_model(), "prior", y=[y_cls, np.ones_like(y_reg)])


# ---- the shared suite's checks, on a two-head model -------------------------------
def _regularizer(method, x, y):
    return keras_reg.LossBalancing(method, **_options(method, x, y))


@pytest.mark.parametrize("method", ALL)
def test_config_round_trip(method):
    rng = np.random.default_rng(10)
    x, y_cls, y_reg, _ = ref.batch(rng)
    regularizer = _regularizer(method, x, [y_cls, y_reg])
    keras_reg.install_regularizer(_model(), regularizer)  # measures the references
    config = regularizer.get_config()
    assert type(regularizer).from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(regularizer)
    )
    assert type(restored) is keras_reg.LossBalancing
    assert restored.get_config() == config


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "jit"])
@pytest.mark.parametrize("method", ALL)
def test_learning_rate_zero_keeps_every_weight_bit_identical(method, jit_compile):
    if jit_compile and keras.backend.backend() == "torch":
        pytest.skip("jit_compile=True is torch.compile, refused on torch")
    rng = np.random.default_rng(11)
    x, y_cls, y_reg, w = ref.batch(rng, size=12)
    model = _model(lr=0.0, l2=1e-3, jit_compile=jit_compile)
    keras_reg.install_regularizer(model, _regularizer(method, x, [y_cls, y_reg]))
    before = [keras.ops.convert_to_numpy(v) for v in model.trainable_weights]
    model.fit(x, [y_cls, y_reg], sample_weight=w, batch_size=4, epochs=2, verbose=0)
    for variable, old in zip(model.trainable_weights, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), old)


@pytest.mark.parametrize("method", ALL)
def test_logged_terms_in_fit_not_in_evaluate_and_removal(method):
    rng = np.random.default_rng(12)
    x, y_cls, y_reg, w = ref.batch(rng)
    model = _model()
    regularizer = _regularizer(method, x, [y_cls, y_reg])
    keras_reg.install_regularizer(model, regularizer)
    assert regularizer.logged_terms() == ("cls_loss_weight", "reg_loss_weight")
    history = _fit(model, x, [y_cls, y_reg], w, epochs=2)
    for term in regularizer.logged_terms():
        assert np.all(np.isfinite(history[term])) and history[term][0] >= 0, term
    evaluated = model.evaluate(x, [y_cls, y_reg], verbose=0, return_dict=True)
    assert set(evaluated) == {"loss", "cls_loss", "reg_loss"}
    keras_reg.remove_regularization(model)
    assert set(_fit(model, x, [y_cls, y_reg])) == {"loss", "cls_loss", "reg_loss"}


def test_scope_leaves_the_model_as_it_found_it():
    rng = np.random.default_rng(13)
    x, y_cls, y_reg, _ = ref.batch(rng)
    model = _model()
    scope = keras_reg.callbacks.RegularizationScope(keras_reg.LossBalancing())
    history = model.fit(x, [y_cls, y_reg], verbose=0, callbacks=[scope]).history
    assert {"cls_loss_weight", "reg_loss_weight"} <= set(history)
    assert keras_reg.installed_regularizer(model) is None
