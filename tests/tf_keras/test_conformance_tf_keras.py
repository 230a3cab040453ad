"""The shared conformance suite (tests/conformance_suite.py) on tf_keras models.

Runs in its own process with TF_KERAS=1 and TF_USE_LEGACY_KERAS=1; every
regulariser the README lists for tf_keras (all of them; the input gradient
penalty on float inputs) passes the same checks as on Keras 3. Two replicas
against one device: tests/tf_keras/test_replicas_tf_keras.py.
"""

import os

import pytest

if os.environ.get("TF_KERAS") != "1":
    pytest.skip("tf_keras tests run in their own process", allow_module_level=True)

import bert4keras.models  # noqa: E402, F401
import tf_keras  # noqa: E402

from tests import conformance_cases, conformance_suite  # noqa: E402


class TestConformanceTfKeras(conformance_suite.Checks):
    framework = conformance_cases.Framework(tf_keras)
