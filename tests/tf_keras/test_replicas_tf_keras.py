"""tf_keras under MirroredStrategy: 2 logical CPU devices train like one.

The devices must be set before TensorFlow starts, so the check runs in a
subprocess (`tests/replica_check.py`, mode ``tf-keras-mirrored``): FGM, the
matrix gradient penalty, VAT and FreeFGM's carried rows on a tf_keras model,
3 SGD steps, global batch 8, against one device.
"""

import os

import pytest

if os.environ.get("TF_KERAS") != "1":
    pytest.skip("tf_keras tests run in their own process", allow_module_level=True)

from tests import replica_check  # noqa: E402


def test_two_replicas_train_like_one_device():
    results, output = replica_check.run("tf-keras-mirrored")
    assert results is not None, output
    assert set(results) == {"plain", "fgm", "gp-row", "vat-matrix", "free-fgm-rows"}
    for name, difference in results.items():
        assert isinstance(difference, float), difference  # else the error raised
        assert difference < 1e-5, (name, difference)
