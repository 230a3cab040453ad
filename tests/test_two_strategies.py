"""Several MirroredStrategy objects in one process (a notebook re-running a cell).

TensorFlow numbers the collective operations of every new MirroredStrategy
from the same keys (group 1, instance 100, ...), and remembers each key's
operation for the whole process: a second strategy whose collectives differ
from the first one's in kind, dtype or shape fails ("Collective instance 100
expected type ..." or "Shape mismatch in the collective instance 100"). Plain
Keras fails the same way when the second strategy trains a different model.
The library's collectives are the strategy's own (``ReplicaContext.all_reduce``
and ``all_gather``), so what works is what TensorFlow allows: the same model
trained again under a new strategy, or a new strategy that reduces without
collective operations (``cross_device_ops=tf.distribute.ReductionToOneDevice()``).
"""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.backends("tensorflow")


def _run(*runs):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environment = dict(os.environ, PYTHONPATH=root, KERAS_BACKEND="tensorflow")
    process = subprocess.run(
        [sys.executable, "-m", "tests.two_strategies_check", *runs],
        cwd=root, env=environment, capture_output=True, text=True, timeout=600,
    )
    lines = [
        line for line in process.stdout.splitlines()
        if line.startswith(("RUN ", "ERROR "))
    ]
    assert lines, process.stdout[-2000:] + process.stderr[-2000:]
    return lines


def test_fgm_trains_under_two_strategies_one_after_the_other():
    lines = _run("fgm", "fgm")
    assert [line.split()[:2] for line in lines] == [["RUN", "fgm"]] * 2, lines


def test_fgm_after_plain_training_with_a_strategy_without_collectives():
    lines = _run("plain", "fgm:one-device", "fgm:one-device")
    assert [line.split()[1] for line in lines] == [
        "plain", "fgm:one-device", "fgm:one-device"
    ], lines


def test_fgm_after_plain_training_under_default_strategies_explains_the_clash():
    # TensorFlow's limitation (so a fix in TensorFlow shows here): the error
    # says what happened and the three fixes.
    lines = _run("plain", "fgm")
    assert lines[0].startswith("RUN plain")
    assert lines[1].startswith(
        "ERROR RuntimeError TensorFlow's collective operations of two "
        "tf.distribute strategies clashed in this process (Collective instance"
    ), lines
    for fix in ("create the strategy once", "its own process", "ReductionToOneDevice"):
        assert fix in lines[1], lines


def test_the_clash_is_explained_under_a_regularization_scope_too():
    lines = _run("plain", "fgm:scope")
    assert lines[1].startswith("ERROR RuntimeError TensorFlow's collective"), lines
