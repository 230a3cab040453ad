"""The export decorator: one public list, and installers generated from classes."""

import functools
import inspect
import warnings

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras
from keras_reg.training.core import export
from tests import models

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")

INSTALLERS = export.installers()
CLASSES = sorted(INSTALLERS.values(), key=lambda cls: cls.__name__)
# Required arguments of each class, for constructing one.
REQUIRED = {"embedding_name": "emb", "weight": 0.1}


def _installer_of(cls):
    return next(f for f, c in INSTALLERS.items() if c is cls)


def _required(cls):
    parameters = list(inspect.signature(cls).parameters.values())
    return {p.name: REQUIRED[p.name] for p in parameters if p.default is p.empty}


def _error(call):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            call()
        except Exception as error:  # noqa: BLE001 - compared below
            return type(error), str(error)
    return None


def test_every_regulariser_is_exported_with_an_installer():
    names = {cls.__name__ for cls in CLASSES}
    assert names == {
        "AWP",
        "FGM",
        "FreeFGM",
        "FreeLB",
        "FreeVAT",
        "GradientPenalty",
        "InputGradientPenalty",
        "LossBalancing",
        "NoiseTraining",
        "PGD",
        "ParameterGradientPenalty",
        "RDrop",
        "SAM",
        "VAT",
    }
    for name in (
        "adversarial_training",
        "virtual_adversarial_training",
        "gradient_penalty",
        "parameter_gradient_penalty",
        "input_gradient_penalty",
        "noise_training",
        "r_drop",
        "sharpness_aware_minimization",
        "awp",
        "balance_losses",
        "fgm",
        "pgd",
        "freelb",
        "free_fgm",
    ):
        assert callable(getattr(keras_reg, name)), name


def test_all_is_the_registry_plus_the_core_names():
    core = {
        "TrainingRegularizer",
        "callbacks",
        "constraints",
        "install_regularizer",
        "installed_regularizer",
        "layers",
        "losses",
        "metrics",
        "regularizers",
        "remove_regularization",
    }
    assert set(keras_reg.__all__) == core | set(export.public())
    assert len(keras_reg.__all__) == len(set(keras_reg.__all__))
    for name in keras_reg.__all__:
        assert getattr(keras_reg, name) is not None, name
    for name, target in export.public().items():
        assert getattr(keras_reg, name) is target
        assert getattr(keras_reg.training, name) is target
        if isinstance(target, type):
            registered = keras.saving.get_registered_object(f"keras_reg>{name}")
            assert registered is target, name


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_installer_takes_exactly_the_class_parameters(cls):
    function = _installer_of(cls)
    parameters = list(inspect.signature(function).parameters.values())
    assert parameters[0].name == "model"
    assert parameters[1:] == list(inspect.signature(cls).parameters.values())
    doc = inspect.getdoc(function)
    assert doc.splitlines()[0] == inspect.getdoc(cls).splitlines()[0]
    assert "Example:" in doc and "    model:" in doc


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_installer_and_class_fail_alike(cls):
    function = _installer_of(cls)
    required = _required(cls)
    parameters = inspect.signature(cls).parameters
    misspelt = next(iter(parameters))[:-1] + "q"
    bad_calls = [{misspelt: 1.0}]
    for name, parameter in parameters.items():
        if isinstance(parameter.default, float) or name in ("weight",):
            bad_calls += [{name: -1.0}, {name: "big"}, {name: float("nan")}]
    for bad in bad_calls:
        arguments = {**required, **bad}
        from_class = _error(functools.partial(cls, **arguments))
        if from_class is None:
            continue  # a value the class accepts (e.g. a negative exponent)
        assert from_function_error(function, arguments) == from_class, bad
    assert _error(lambda: cls(**{**required, misspelt: 1.0}))[0] is ValueError
    too_many = (None,) * (len(parameters) + 1)
    assert _error(lambda: function(None, *too_many))[0] is TypeError


def from_function_error(function, arguments):
    return _error(lambda: function(None, **arguments))


def test_a_misspelt_keyword_names_the_option():
    message = r"FGM\(\) got an unknown option 'epsion' \(did you mean 'epsilon'\?\)"
    with pytest.raises(ValueError, match=message):
        keras_reg.FGM("emb", epsion=1.0)
    with pytest.raises(ValueError, match=message):
        keras_reg.fgm(None, "emb", epsion=1.0)


def test_installer_installs_the_class(rng):
    model = models.build("functional")
    model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
    assert keras_reg.fgm(model, "emb", epsilon=1) is model
    installed = keras_reg.installed_regularizer(model)
    assert type(installed) is keras_reg.FGM
    assert installed.get_config() == keras_reg.FGM("emb", epsilon=1).get_config()
    for function, cls in [
        (keras_reg.pgd, keras_reg.PGD),
        (keras_reg.freelb, keras_reg.FreeLB),
        (keras_reg.free_fgm, keras_reg.FreeFGM),
    ]:
        with pytest.warns(UserWarning, match="Replacing"):
            function(model, "emb", epsilon=0.5)
        assert type(keras_reg.installed_regularizer(model)) is cls
    x, y, _ = models.batch(rng)
    assert "adversarial_loss" in model.fit(x, y, verbose=0).history


# ---- deprecated names: one check each ----------------------------------------


@pytest.mark.parametrize(
    "make, new, value",
    [
        (lambda: keras_reg.GradientPenalty("emb", epsilon=2.0), "weight", 2.0),
        (lambda: keras_reg.RDrop(alpha=3.0), "weight", 3.0),
        (
            lambda: keras_reg.GradientPenalty.from_config(
                {"embedding_name": "emb", "epsilon": 2.0, "per": "row"}
            ),
            "weight",
            2.0,
        ),
        (
            lambda: keras.saving.deserialize_keras_object(
                {
                    "module": None,
                    "class_name": "RDrop",
                    "registered_name": "keras_reg>RDrop",
                    "config": {"alpha": 3.0, "predictions": None},
                }
            ),
            "weight",
            3.0,
        ),
    ],
    ids=["gp-epsilon", "rdrop-alpha", "gp-old-config", "rdrop-old-config"],
)
def test_renamed_arguments_still_work_with_a_deprecation_warning(make, new, value):
    removed = r"deprecated and will be removed in 0.3"
    with pytest.warns(DeprecationWarning, match=removed):
        regularizer = make()
    assert regularizer.get_config()[new] == value


def test_renamed_argument_through_the_installer_warns_at_the_caller():
    model = models.build("functional")
    model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
    with pytest.warns(DeprecationWarning, match="weight=2.0") as record:
        keras_reg.gradient_penalty(model, "emb", epsilon=2.0)
    assert record[0].filename == __file__
    assert keras_reg.installed_regularizer(model).weight == 2.0


def test_old_and_new_name_together_are_refused():
    with pytest.raises(ValueError, match="both `weight` and its deprecated name"):
        keras_reg.RDrop(weight=1.0, alpha=2.0)


def test_awp_start_epoch_is_deprecated_onto_the_scope():
    with pytest.warns(DeprecationWarning, match=r"RegularizationScope\(AWP"):
        awp = keras_reg.AWP(start_epoch=np.int64(2))
    assert awp.start_epoch == 2
    scope = keras_reg.callbacks.RegularizationScope(awp)
    assert scope.start_epoch == 2
    scope = keras_reg.callbacks.RegularizationScope(
        keras_reg.AWP(), start_epoch=np.int64(1)
    )
    assert scope.start_epoch == 1
    with pytest.raises(ValueError, match="disagree"):
        keras_reg.callbacks.RegularizationScope(awp, start_epoch=1)
