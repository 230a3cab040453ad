"""Shared fixtures. Keras 3 tests run once per backend (KERAS_BACKEND) by the runner.

tests/tf_keras/ runs in a process of its own (TF_KERAS=1, TF_USE_LEGACY_KERAS=1)
where bert4keras must be imported before anything imports Keras 3, as a
bert4keras user would; this file then leaves Keras 3 alone.
"""

import gc
import os

import numpy as np
import pytest

LEGACY = os.environ.get("TF_KERAS") == "1"
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

if LEGACY:
    import bert4keras.models  # noqa: F401  (rebinds `import keras` to tf_keras)
else:
    from keras_reg._compat import keras


def pytest_collection_modifyitems(config, items):
    """Skips tests marked ``backends(...)`` that do not list the active backend."""
    if LEGACY:
        return
    active = keras.backend.backend()
    for item in items:
        marker = item.get_closest_marker("backends")
        if marker is not None and active not in marker.args:
            reason = marker.kwargs.get("reason", f"not supported on {active}")
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "backends(*names, reason=None): run only on these Keras 3 backends",
    )


# Every test ends with ``clear_session()``, whose ``gc.collect()`` walks every
# object the garbage collector tracks: the hundreds of thousands TensorFlow,
# JAX or PyTorch create at import and first use, a few tenths of a second a
# test. What survives a test is frozen (left out of later collections) after
# it; every FULL_COLLECTION_EVERY tests everything is unfrozen and collected
# once, so a cycle that became garbage after it was frozen is still freed.
FULL_COLLECTION_EVERY = 50
_finished = [0]


def pytest_collection_finish(session):
    gc.collect()
    gc.freeze()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield
    _finished[0] += 1
    if _finished[0] % FULL_COLLECTION_EVERY == 0:
        gc.unfreeze()
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    if LEGACY:
        yield
        return
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(1234)
    yield
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session()


@pytest.fixture
def rng():
    return np.random.default_rng(0)
