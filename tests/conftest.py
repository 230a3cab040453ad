"""Shared fixtures. Keras 3 tests run once per backend (KERAS_BACKEND) by the runner."""

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from keras_reg._compat import keras  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Skips tests marked ``backends(...)`` that do not list the active backend."""
    active = keras.backend.backend()
    for item in items:
        marker = item.get_closest_marker("backends")
        if marker is not None and active not in marker.args:
            item.add_marker(pytest.mark.skip(reason=f"not supported on {active} (yet)"))


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "backends(*names): run only on these Keras 3 backends"
    )


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(1234)
    yield
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session()


@pytest.fixture
def rng():
    return np.random.default_rng(0)
