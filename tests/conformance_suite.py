"""The checks every TrainingRegularizer passes, on Keras 3 and on tf_keras.

`Checks` holds them as test methods over every case of
`tests/conformance_cases.py`; a test module runs them by subclassing it with
its framework, the way optax runs one suite over every transform::

    class TestConformance(conformance_suite.Checks):
        framework = conformance_cases.Framework(keras)

`tests/test_conformance.py` does so for the active Keras 3 backend,
`tests/tf_keras/test_conformance_tf_keras.py` for tf_keras.
"""

import copy
import pickle

import numpy as np
import pytest

import keras_reg
from tests import models
from tests.conformance_cases import (
    CASES,
    KNOWN_FAILURES,
    NAMES,
    PERTURBING,
    TOKEN_CASES,
    batch,
    compiled,
    kind,
    trainable,
    with_unused_layer,
)

# Mixed precision computes the forward pass in float16/bfloat16 (float32
# variables, float32 regulariser maths). After 3 SGD steps the weights must
# have moved like float32's, to within 8 units of rounding of the compute
# dtype relative to the move: float16 keeps 11 significant bits (2^-11 =
# 4.9e-4), bfloat16 8 (2^-8 = 3.9e-3). Measured on the token model (every
# regulariser, TF, JAX and torch): at most 1.9e-3 (float16) and 1.1e-2
# (bfloat16) of the move, i.e. 3.9 and 2.7 units. A penalty left at the loss
# scale (256, or 256^2 once squared) misses by orders of magnitude.
MIXED_TOLERANCE = {"mixed_float16": 8 * 2.0**-11, "mixed_bfloat16": 8 * 2.0**-8}


def params(check, framework, names=NAMES):
    """Returns ``names`` as pytest params, known failures of ``check`` xfailed."""
    result = []
    for name in names:
        known = KNOWN_FAILURES.get((name, check, None)) or KNOWN_FAILURES.get(
            (name, check, framework.name)
        )
        marks = []
        if known:
            reason, raises = known
            marks.append(pytest.mark.xfail(strict=True, reason=reason, raises=raises))
        result.append(pytest.param(name, marks=marks, id=name))
    return result


def over(check, names=NAMES):
    """Marks a test method to run once per case of ``names`` (as ``name``)."""

    def mark(method):
        method.conformance = (check, names)
        return method

    return mark


def three_steps(framework, name, policy="float32", jit_compile=False):
    """Returns the trainable weights after 3 SGD steps (batches of 8), ``policy``."""
    framework.set_policy(policy)
    try:
        optimizer = framework.keras.optimizers.SGD(kind(name).lr)
        if policy == "mixed_float16":
            # Keras's default first scale, 2^15, overflows float16 in the
            # backward pass of an adversarial pass whose probabilities get
            # small: that step is skipped and the scale halved, as designed
            # (test_mixed_float16_skips_a_non_finite_step). Starting at 2^8
            # compares steps that all apply.
            optimizer = framework.loss_scale(optimizer, 256)
        model = compiled(framework, name, optimizer=optimizer, jit_compile=jit_compile)
    finally:
        framework.set_policy("float32")
    assert model.layers[-1].compute_dtype == policy.split("_")[-1]
    keras_reg.install_regularizer(model, CASES[name].make())
    x, y, w = batch(name, seed=3, size=24)
    framework.keras.utils.set_random_seed(5)
    model.fit(x, y, sample_weight=w, batch_size=8, shuffle=False, verbose=0)
    assert int(models.numpy(model.optimizer.iterations)) == 3
    return trainable(model)


def _fit_one_batch(model, x, y, w):
    model.fit(x, y, sample_weight=w, batch_size=len(x), shuffle=False, verbose=0)


def _arguments(config):
    """A config without the flag saying that data was left out (never saved)."""
    return {k: v for k, v in config.items() if k != "unlabeled_omitted"}


def _layer_variables(model):
    """The model's weights, without the step counter, loss scale or logs' metrics."""
    metrics = {id(v) for metric in model.metrics for v in metric.variables}
    return [
        v
        for v in model.weights
        if id(v) not in metrics
        and "iteration" not in getattr(v, "path", v.name)
        and "scale" not in getattr(v, "path", v.name)
    ]


_FLOAT32 = {}  # (framework, case) -> float32 weights after `three_steps`

# The arguments that are radii: the step squares them (a norm compared with
# others), so a value whose square overflows float32 is refused.
_RADII = ("epsilon", "rho", "stddev")
# Every argument that may be a schedule of the step.
_STRENGTHS = _RADII + ("weight", "alpha", "gamma", "entropy_weight")


def _members(regularizer):
    return list(getattr(regularizer, "regularizers", ())) or [regularizer]


def _radii(regularizer):
    """``[(member, argument)]`` of the numeric radii of ``regularizer``."""
    return [
        (member, argument)
        for member in _members(regularizer)
        for argument, value in member.get_config().items()
        if argument in _RADII and isinstance(value, (int, float))
    ]


def _names_emb(regularizer):
    """Whether ``regularizer`` (or a member) names the layer ``emb``."""
    return any(
        "emb" in (config.get("embedding_name"), config.get("shared_layer"))
        or "emb" in (config.get("layers") or ())
        for config in (m.get_config() for m in _members(regularizer))
    )


class Checks:
    """The conformance checks; a subclass sets ``framework``."""

    framework = None

    def pytest_generate_tests(self, metafunc):
        check, names = getattr(metafunc.function, "conformance", (None, None))
        if check is not None:
            metafunc.parametrize("name", params(check, self.framework, names))

    @pytest.fixture(autouse=True)
    def _fresh_state(self):
        keras = self.framework.keras
        self.framework.set_policy("float32")
        keras.utils.set_random_seed(1234)
        yield
        self.framework.set_policy("float32")
        keras.backend.clear_session()

    @pytest.mark.filterwarnings("ignore:.*unlabeled.*")
    @over("config")
    def test_config_round_trip(self, name):
        from keras_reg._compat import keras  # the serialisation is Keras 3's

        regularizer = CASES[name].make()
        config = regularizer.get_config()
        restored = type(regularizer).from_config(config)
        assert _arguments(restored.get_config()) == _arguments(config)
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(regularizer)
        )
        assert type(restored) is type(regularizer)
        assert _arguments(restored.get_config()) == _arguments(config)

    @over("pickle")
    def test_pickle_and_deepcopy(self, name):
        """A fresh regulariser and a trained one copy with their config."""
        regularizer = CASES[name].make()
        model = compiled(self.framework, name)
        keras_reg.install_regularizer(model, regularizer)
        _fit_one_batch(model, *batch(name))
        keras_reg.remove_regularization(model)
        for original in (CASES[name].make(), regularizer):
            pickled = pickle.loads(pickle.dumps(original))
            for copied in (pickled, copy.deepcopy(original)):
                assert type(copied) is type(original)
                np.testing.assert_equal(copied.get_config(), original.get_config())

    @over("install")
    def test_install_replace_remove(self, name):
        model = compiled(self.framework, name, lr=0.1)
        regularizer = CASES[name].make()
        assert keras_reg.install_regularizer(model, regularizer) is model
        assert keras_reg.installed_regularizer(model) is regularizer
        other = CASES[name].make()
        with pytest.warns(UserWarning, match="Replacing"):
            keras_reg.install_regularizer(model, other)
        assert keras_reg.installed_regularizer(model) is other
        keras_reg.remove_regularization(model)
        assert keras_reg.installed_regularizer(model) is None
        patched = {"train_step", "compute_loss", "get_metrics_result"}
        assert not (patched | {"compute_loss_and_updates"}) & set(model.__dict__)
        x, y, _ = batch(name)
        assert set(model.fit(x, y, verbose=0).history) == kind(name).logs

    @pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "jit"])
    @over("lr-zero")
    def test_learning_rate_zero_keeps_every_weight_bit_identical(
        self, name, jit_compile
    ):
        """lr=0: two epochs of 3 steps leave every trainable weight bit-identical."""
        if jit_compile and not self.framework.has_jit:
            pytest.skip("jit_compile=True is torch.compile, refused on torch")
        # The lookup path, then the in-place/substitution path.
        for l2 in CASES[name].l2_values(1e-3):
            model = compiled(
                self.framework, name, lr=0.0, l2=l2, jit_compile=jit_compile
            )
            keras_reg.install_regularizer(model, CASES[name].make())
            before = trainable(model)
            x, y, w = batch(name, size=12)
            model.fit(x, y, sample_weight=w, batch_size=4, epochs=2, verbose=0)
            for variable, old in zip(model.trainable_weights, before):
                np.testing.assert_array_equal(
                    models.numpy(variable), old, err_msg=variable.name
                )

    @over("nan", PERTURBING)
    def test_nan_batch_poisons_no_more_than_plain_keras(self, name):
        """No perturbation from a non-finite direction: plain Keras's NaN pattern.

        (A gradient penalty's second-order gradient mixes every example of the
        batch, so a NaN loss reaches every weight the batch touches; for it the
        guarantee is the loss-scaling tests'.)
        """
        x, y, w = batch(name)
        w[0] = np.nan
        results = []
        for regularizer in (None, CASES[name].make()):
            model = compiled(self.framework, name, lr=0.0)
            if regularizer is not None:
                keras_reg.install_regularizer(model, regularizer)
            _fit_one_batch(model, x, y, w)
            results.append(trainable(model))
        for plain, regularized in zip(*results):
            np.testing.assert_array_equal(np.isnan(regularized), np.isnan(plain))

    def _assert_nan_batch_skipped(self, name, policy):
        """A NaN batch under loss scaling is skipped and leaves no perturbation."""
        framework = self.framework
        x, y, w = batch(name)
        w[0] = np.nan
        if policy == "float32":
            optimizer = framework.loss_scale(framework.keras.optimizers.SGD(0.1), 2**15)
            model = compiled(framework, name, optimizer=optimizer)
        else:
            framework.set_policy(policy)
            try:  # with an L2 loss: the in-place path too
                l2 = CASES[name].l2_values(1e-3)[-1]
                model = compiled(framework, name, l2=l2, optimizer="sgd")
            finally:
                framework.set_policy("float32")
        keras_reg.install_regularizer(model, CASES[name].make())
        variables = _layer_variables(model)
        before = [models.numpy(v) for v in variables]
        _fit_one_batch(model, x, y, w)
        for variable, old in zip(variables, before):
            np.testing.assert_array_equal(
                models.numpy(variable), old, err_msg=variable.name
            )

    @over("no-loss")
    def test_a_model_compiled_without_a_loss_is_refused_or_trains(self, name):
        """Refused at install with the fix, or trained with finite weights.

        Never a deep error at the first step: VAT's term may be the whole loss
        (its unlabelled-only set-up); every other term needs the loss.
        """
        model = compiled(self.framework, name, lr=0.1, with_loss=False)
        try:
            keras_reg.install_regularizer(model, CASES[name].make())
        except ValueError as error:
            assert "loss" in str(error) and "ompile" in str(error), error
            assert keras_reg.installed_regularizer(model) is None
            return
        x, y, w = batch(name)
        before = trainable(model)
        _fit_one_batch(model, x, y, w)
        after = trainable(model)
        assert all(np.isfinite(a).all() for a in after)
        assert any(np.abs(a - b).max() > 0 for a, b in zip(after, before))

    @over("unused-layer", TOKEN_CASES)
    def test_a_named_layer_the_forward_pass_never_calls_is_a_clear_error(self, name):
        """A regulariser naming ``emb``, never called, says so; others train."""
        model = with_unused_layer(self.framework, name)
        regularizer = CASES[name].make()
        x, y, w = batch(name)
        try:
            keras_reg.install_regularizer(model, regularizer)
            _fit_one_batch(model, x, y, w)
        except ValueError as error:
            assert "'emb'" in str(error), error
            assert "did not look anything up" in str(error) or (
                "was not called" in str(error)
            ), error
            return
        assert not _names_emb(regularizer), f"{regularizer!r} trained without 'emb'"
        assert all(np.isfinite(a).all() for a in trainable(model))

    @over("schedule")
    @pytest.mark.filterwarnings("ignore:.*unlabeled.*")
    def test_each_strength_as_a_constant_schedule_trains_like_the_number(self, name):
        """Every strength accepts a schedule; a constant one trains like the number."""
        regularizer = CASES[name].make()
        if _members(regularizer) != [regularizer]:
            pytest.skip("a composition's members are checked as cases of their own")
        if getattr(regularizer, "balances_tasks", False):
            pytest.skip("a balancer's gamma is an exponent, not a strength")
        config = regularizer.get_config()
        arrays = getattr(getattr(regularizer, "sampler", None), "arrays", None)
        data = {} if arrays is None else {"unlabeled": arrays}  # never serialised
        strengths = [
            argument
            for argument, value in config.items()
            if argument in _STRENGTHS
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
            and value != 0  # 0 leaves the term out; a schedule keeps it, times 0
        ]
        assert strengths, f"{regularizer!r} has no strength to schedule"
        expected = self._three_steps_with(
            name, type(regularizer).from_config({**_arguments(config), **data})
        )
        for argument in strengths:
            value = float(config[argument])
            schedule = {argument: lambda step, v=value: v + 0.0 * step}
            scheduled = type(regularizer).from_config(
                {**_arguments(config), **data, **schedule}
            )
            got = self._three_steps_with(name, scheduled)
            for a, b in zip(got, expected):
                # Bit for bit but for XLA's rounding: it folds a Python number
                # into the computation where a schedule's value arrives at run
                # time (1 ulp seen on JAX 0.4.30 for PGD's epsilon).
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=argument)

    def _three_steps_with(self, name, regularizer):
        model = compiled(self.framework, name)
        keras_reg.install_regularizer(model, regularizer)
        x, y, w = batch(name, seed=3, size=12)
        self.framework.keras.utils.set_random_seed(5)
        model.fit(x, y, sample_weight=w, batch_size=4, shuffle=False, verbose=0)
        return trainable(model)

    @over("huge-strength")
    @pytest.mark.filterwarnings("ignore:.*unlabeled.*")
    def test_a_radius_whose_square_overflows_float32_is_refused(self, name):
        """Every radius of the case, at 1e38, is refused naming it and the bound."""
        regularizer = CASES[name].make()
        radii = _radii(regularizer)
        for owner, argument in radii:
            config = owner.get_config()
            config[argument] = 1e38
            with pytest.raises(ValueError, match=f"`{argument}`.*square"):
                type(owner).from_config(_arguments(config))

    @over("nan-loss-scale")
    def test_nan_batch_is_skipped_by_a_loss_scale_optimizer(self, name):
        self._assert_nan_batch_skipped(name, "float32")

    @over("nan-mixed")
    def test_mixed_float16_skips_a_non_finite_step(self, name):
        self._assert_nan_batch_skipped(name, "mixed_float16")

    @over("logs")
    def test_logged_terms_appear_in_fit_and_not_in_evaluate(self, name):
        model = compiled(self.framework, name, lr=0.1)
        regularizer = CASES[name].make()
        keras_reg.install_regularizer(model, regularizer)
        x, y, _ = batch(name)
        history = model.fit(x, y, batch_size=len(x), epochs=2, verbose=0).history
        for term in regularizer.logged_terms():
            assert np.all(np.isfinite(history[term])), term
        evaluated = model.evaluate(x, y, verbose=0, return_dict=True)
        assert set(evaluated) == kind(name).logs

    @over("scope")
    def test_scope_leaves_the_model_as_it_found_it(self, name):
        model = compiled(self.framework, name, lr=0.1)
        scope = keras_reg.callbacks.RegularizationScope(CASES[name].make())
        x, y, _ = batch(name)
        history = model.fit(x, y, verbose=0, callbacks=[scope]).history
        assert set(CASES[name].make().logged_terms()) <= set(history)
        assert keras_reg.installed_regularizer(model) is None
        assert set(model.fit(x, y, verbose=0).history) == kind(name).logs

    @pytest.mark.parametrize("policy", sorted(MIXED_TOLERANCE))
    @over("mixed")
    def test_mixed_precision_moves_the_weights_like_float32(self, name, policy):
        key = (self.framework.name, name)
        if key not in _FLOAT32:  # shared by both policies
            _FLOAT32[key] = three_steps(self.framework, name)
        reference = _FLOAT32[key]
        start = trainable(compiled(self.framework, name))
        mixed = three_steps(self.framework, name, policy)
        for got, want, initial in zip(mixed, reference, start):
            move = np.linalg.norm(want - initial)
            assert move > 0
            assert np.linalg.norm(got - want) <= MIXED_TOLERANCE[policy] * move
