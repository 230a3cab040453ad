"""Compositions of regularisers on tf_keras models (tests/composition_checks.py).

Runs in its own process with TF_KERAS=1 and TF_USE_LEGACY_KERAS=1.
"""

import os

import pytest

if os.environ.get("TF_KERAS") != "1":
    pytest.skip("tf_keras tests run in their own process", allow_module_level=True)

import bert4keras.models  # noqa: E402, F401
import tf_keras  # noqa: E402

from tests import composition_checks  # noqa: E402


class TestCompositionTfKeras(composition_checks.Checks):
    keras = tf_keras
