"""Compositions of regularisers on Keras 3 (TensorFlow, JAX, PyTorch).

The checks of tests/composition_checks.py, plus the module-level ones there
(errors, serialisation), and XLA against the float64 references.
"""

import pytest

from keras_reg._compat import keras
from tests import composition_checks
from tests.composition_checks import (  # noqa: F401  (collected here)
    test_config_round_trip_pickle_and_repr,
    test_nested_compositions_flatten_and_one_is_itself,
    test_refusals_name_both_and_the_fix,
    test_sam_refuses_a_member_that_needs_the_trainers_pass,
)

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")


class TestComposition(composition_checks.Checks):
    keras = keras


class TestCompositionSubclassed(composition_checks.Checks):
    keras = keras
    style = "subclassed"


@pytest.mark.backends("tensorflow", "jax")
class TestCompositionJit(composition_checks.Checks):
    """Every check with the train step compiled by XLA."""

    keras = keras

    @pytest.fixture(autouse=True)
    def _jit(self, monkeypatch):
        from tests import models

        compiled = models.compiled

        def jitted(*args, **kwargs):
            return compiled(*args, jit_compile=True, **kwargs)

        monkeypatch.setattr(models, "compiled", jitted)
