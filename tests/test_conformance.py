"""The shared conformance suite (tests/conformance_suite.py) on the active Keras 3
backend (TensorFlow, JAX, PyTorch), plus the checks only Keras 3 has: several
devices, XLA against the graph. tests/tf_keras/test_conformance_tf_keras.py
runs the same suite on tf_keras.
"""

import numpy as np
import pytest

from keras_reg._compat import keras
from tests import conformance_cases as cases
from tests import conformance_suite as suite
from tests import fixed_noise, replica_check, sharded_embedding_check

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")
KERAS3 = cases.Framework(keras)
NAMES = cases.NAMES


class TestConformance(suite.Checks):
    framework = KERAS3


def test_every_public_regularizer_has_a_case():
    covered = {type(case.make()) for case in cases.CASES.values()}
    missing = cases.public_regularizer_classes() - covered
    assert not missing, f"add an entry to conformance_cases.CASES for {missing}"


# ---- several devices: 2 replicas train like one device ---------------------------
# One subprocess per backend (the devices must be set before the framework
# starts) trains every case of tests/replica_check.py -- each case of the
# suite plus flooding, other balancing methods and input noise -- for 3 SGD steps on one
# device and on 2, on the same global batches of 8.
REPLICA_MODES = {"tensorflow": "mirrored", "jax": "data-parallel"}
REPLICA_CASES = sorted(set(NAMES) | set(replica_check.EXTRA_CASES))
REPLICA_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def replica_results():
    results, output = replica_check.run(REPLICA_MODES[keras.backend.backend()])
    assert results is not None, output
    return results


def _assert_replicas_agree(results, name):
    assert name in results, f"{name!r} did not run: {sorted(results)}"
    difference = results[name]
    assert isinstance(difference, float), difference  # else the error raised
    assert difference < REPLICA_TOLERANCE, (name, difference)


@pytest.mark.backends("tensorflow", "jax")
@pytest.mark.parametrize("name", REPLICA_CASES)
def test_two_replicas_train_like_one_device(name, replica_results):
    """TF: MirroredStrategy on 2 logical CPUs; JAX: DataParallel on 2 CPU devices."""
    _assert_replicas_agree(replica_results, name)


# Across processes: FGM, VAT and every gradient penalty, and
# flooding. They exercise each mechanism of the Step API (the all-reduced loss
# gradient, the gathered sparse penalty gradient, the all-reduced weight
# gradients, the gathered VAT slots and the global per-example norm,
# flooding's global loss); the other regularisers make the same replica-context
# calls and are checked by MirroredStrategy above. Two workers cost about a
# minute of CPU each.
MULTIWORKER_CASES = [
    "plain",
    "fgm",
    "gp-occurrence",
    "gp-row",
    "parameter-gp",
    "noise-integrated",
    "vat-matrix",
    "vat-output",
    "flooding",
]


@pytest.mark.backends("tensorflow")
def test_two_workers_train_like_one_device():
    """MultiWorkerMirroredStrategy: 2 worker processes on 127.0.0.1."""
    results, outputs = replica_check.run_multiworker(MULTIWORKER_CASES, timeout=540)
    for worker, output in zip(results, outputs):
        assert worker is not None, output
    assert results[0] == results[1]  # both workers hold the same weights
    for name in MULTIWORKER_CASES:
        _assert_replicas_agree(results[0], name)


@pytest.mark.backends("jax")
def test_fgm_on_an_embedding_sharded_over_two_devices():
    """ModelParallel: the matrix's rows split over 2 devices; FGM's direction too.

    A dense direction (an embeddings_regularizer reads the matrix) is split
    like the matrix; a plain lookup's is the batch's rows (`SparseRows`).
    """
    result, output = sharded_embedding_check.run()
    assert result is not None, output
    assert result["difference"] < REPLICA_TOLERANCE  # equals the unsharded run
    batch_tokens = sharded_embedding_check.BATCH * sharded_embedding_check.LENGTH
    assert result["rows_shapes"]
    for shape in result["rows_shapes"]:
        assert shape == [batch_tokens, sharded_embedding_check.DIM]
    vocabulary, dim = result["matrix_shape"]
    assert result["matrix_piece"] == [vocabulary // 2, dim]
    assert result["unsharded_perturbation_piece"] == [[vocabulary, dim]]
    # Traced in the sharded step: no device holds the whole direction.
    assert result["perturbation_pieces"]
    for piece, devices in zip(
        result["perturbation_pieces"], result["perturbation_devices"]
    ):
        assert devices == 2
        assert piece == [vocabulary // 2, dim]


# ---- XLA -------------------------------------------------------------------------
def _fixed_randint(shape, minval, maxval, *args, **kwargs):
    """Deterministic stand-in for keras.random.randint (XLA draws differ on TF)."""
    del args, kwargs
    flat = keras.ops.arange(fixed_noise._size(shape)) * 7 + 3
    span = keras.ops.cast(maxval - minval, flat.dtype)
    return keras.ops.reshape(flat % span + minval, shape)


@pytest.mark.backends("tensorflow", "jax")
@pytest.mark.parametrize("name", suite.params("jit", KERAS3))
def test_jit_compile_trains_like_the_graph(name, monkeypatch):
    # TensorFlow's random ops draw other numbers under XLA: fixed draws.
    fixed_noise.install(monkeypatch)
    monkeypatch.setattr(keras.random, "randint", _fixed_randint)
    graph = suite.three_steps(KERAS3, name, jit_compile=False)
    jitted = suite.three_steps(KERAS3, name, jit_compile=True)
    for got, want in zip(jitted, graph):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
