"""Runs every regulariser for 3 SGD steps on one device and on 2 replicas.

Run as a program in a process of its own (the devices must be configured
before the framework starts)::

    python -m tests.replica_check MODE [NAME ...]

MODE is ``mirrored`` (TensorFlow, 2 logical CPU devices), ``multiworker``
(TensorFlow, one worker of a 2-worker cluster: TF_CONFIG must be set),
``data-parallel`` (JAX, ``keras.distribution.DataParallel`` over 2 host CPU
devices) or ``tf-keras-mirrored`` (tf_keras, 2 logical CPU devices).

Prints one JSON object: case name -> the largest absolute difference between
the weights after the single-device run and after the 2-replica run, on the
same global batches (or the error the 2-replica run raised).
"""

import contextlib
import gc
import json
import os
import sys
import traceback

import numpy as np

GLOBAL_BATCH, STEPS, LR = 8, 3, 0.5


def _configure(mode):
    if mode == "data-parallel":
        os.environ["KERAS_BACKEND"] = "jax"
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        return
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if mode == "tf-keras-mirrored":
        os.environ["TF_KERAS"] = os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf

    if mode == "multiworker":
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )


def _strategy(mode):
    """Returns a context manager factory: the 2-replica scope of ``mode``."""
    if mode == "data-parallel":
        import jax

        from keras_reg._compat import keras

        devices = jax.devices("cpu")
        assert len(devices) == 2, devices
        distribution = keras.distribution.DataParallel(devices=devices)
        return distribution.scope, 2
    import tensorflow as tf

    if mode == "multiworker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    return strategy.scope, 2


def _data():
    from tests import models

    rng = np.random.default_rng(3)
    x, y, w = models.batch(rng, size=GLOBAL_BATCH * STEPS)
    return x, y, w


def _plain_model(keras, loss="sparse_categorical_crossentropy", **kwargs):
    from tests import models

    model = models.build("functional")
    models.set_weights(model, *models.initial_weights(np.random.default_rng(1)))
    model.compile(loss=loss, optimizer=keras.optimizers.SGD(LR), **kwargs)
    return model, _data()


def _case_model(keras, name):
    """The model of the shared suite's case ``name``, and its global batches."""
    from tests import conformance_cases as suite

    model = suite.compiled(suite.Framework(keras), name)
    return model, suite.batch(name, seed=3, size=GLOBAL_BATCH * STEPS)


# Cases besides the shared suite's (tests/conformance_cases.py).
EXTRA_CASES = (
    "plain",
    "flooding",
    "balance-realtime",
    "balance-pareto",
    "noise-input",
    "fgm-relative",
    "freelb-relative",
    "vat-output-relative",
    "noise-integrated-relative",
)


def cases():
    """Returns name -> ``build(keras) -> (model, data, regulariser or None)``."""
    import keras_reg
    from tests.conformance_cases import CASES

    def of_suite(name, factory, model_of=None):
        def build(keras):
            model, data = _case_model(keras, model_of or name)
            return model, data, factory()

        return build

    def flooding(keras):
        # Between the first shard's loss (1.456) and the global batch's
        # (1.482) at the first step: flooding each shard would ascend on one
        # replica and descend on the other.
        loss = keras_reg.losses.Flooding("sparse_categorical_crossentropy", 1.47)
        model, data = _plain_model(keras, loss=loss)
        return model, data, None

    built = {"plain": of_suite("fgm", lambda: None), "flooding": flooding}
    built.update({name: of_suite(name, case.make) for name, case in CASES.items()})
    built["noise-input"] = of_suite(
        "input-gp", lambda: keras_reg.NoiseTraining(stddev=0.3, seed=3)
    )
    built["balance-realtime"] = of_suite(
        "balance-gradient", lambda: keras_reg.LossBalancing("realtime")
    )
    built["balance-pareto"] = of_suite(
        "balance-gradient",
        lambda: keras_reg.LossBalancing("pareto", shared_layer="shared"),
    )
    # Relative strengths: their scales are global norms (rows, per example, RMS).
    relative = keras_reg.relative
    built["fgm-relative"] = of_suite(
        "fgm", lambda: keras_reg.FGM("emb", epsilon=relative(0.3))
    )
    built["freelb-relative"] = of_suite(
        "freelb",
        lambda: keras_reg.FreeLB("emb", epsilon=relative(0.3), alpha=relative(0.2)),
    )
    built["vat-output-relative"] = of_suite(
        "vat-output",
        lambda: keras_reg.VAT("emb", epsilon=relative(0.3), perturb="output", seed=1),
    )
    built["noise-integrated-relative"] = of_suite(
        "noise-integrated",
        lambda: keras_reg.NoiseTraining("emb", relative(0.2), integrated=True, seed=2),
    )
    assert set(EXTRA_CASES) <= set(built)
    return built


def run(mode, names=(), timeout=600, env=None):
    """Runs this program in a subprocess; returns (results or None, output).

    Args:
        mode: See the module docstring.
        names: Cases to run (all if empty).
        timeout: Seconds before the subprocess is killed.
        env: Extra environment variables.
    """
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environment = dict(os.environ, PYTHONPATH=root, **(env or {}))
    environment.pop("XLA_FLAGS", None)
    command = [sys.executable, "-m", "tests.replica_check", mode, *names]
    process = subprocess.run(
        command, cwd=root, env=environment, capture_output=True, text=True,
        timeout=timeout,
    )
    return parse(process.stdout), process.stdout[-3000:] + process.stderr[-3000:]


def parse(output):
    """Returns the results printed by `main`, or None if there are none."""
    for line in output.splitlines():
        if line.startswith("RESULTS "):
            return json.loads(line[len("RESULTS "):])
    return None


def tf_keras_cases():
    """The tf_keras (Keras 2) cases: name -> ``build(keras) -> (model, data, reg)``."""
    import tf_keras

    from tests import conformance_cases as suite

    def of_suite(name):
        def build(keras):
            del keras
            model, data = _case_model(tf_keras, name)
            return model, data, suite.CASES[name].make()

        return build

    def plain(keras):
        model, data, _ = of_suite("fgm")(keras)
        return model, data, None

    names = ("fgm", "gp-row", "vat-matrix", "free-fgm-rows")
    return {"plain": plain, **{name: of_suite(name) for name in names}}


def _weights(keras, model):
    return [np.array(keras.ops.convert_to_numpy(v)) for v in model.trainable_weights]


def _train(keras, build, scope):
    import keras_reg

    with scope():
        model, (x, y, w), regularizer = build(keras)
        if regularizer is not None:
            keras_reg.install_regularizer(model, regularizer)
        if os.environ.get("TF_CONFIG"):
            _build_before_fit(model, x, y, w)
    # A TF model keeps the strategy it was built under (fit inside the scope
    # fails under MultiWorkerMirroredStrategy); JAX reads the distribution
    # when fit starts.
    with scope() if keras.backend.backend() == "jax" else contextlib.nullcontext():
        model.fit(
            x, y, sample_weight=w, batch_size=GLOBAL_BATCH, epochs=1,
            shuffle=False, verbose=0,
        )
        _check_distributed(keras, model)
    return _weights(keras, model)


def _build_before_fit(model, x, y, w):
    """Works around two Keras 3.15 bugs of fit under MultiWorkerMirroredStrategy.

    Both hit a plain model too. (1) ``fit`` first builds the model on a batch
    averaged over the replicas with ``strategy.reduce``, which raises (a
    PerReplica value cannot be converted to a tensor): build on a local batch
    instead and skip that build. (2) The step's scalar logs are reduced with
    ``strategy.reduce("MEAN", v, axis=0)``, which raises for a scalar: the
    step returns them as vectors of one element.
    """
    import tensorflow as tf

    first = slice(0, GLOBAL_BATCH // 2)
    y = [t[first] for t in y] if isinstance(y, list) else y[first]
    model._symbolic_build(data_batch=(x[first], y, None if w is None else w[first]))
    model._maybe_symbolic_build = lambda *args, **kwargs: None
    step = model.train_step

    def train_step(data):
        return {k: tf.reshape(v, [1]) for k, v in step(data).items()}

    model.train_step = train_step
    model.train_function = None


def _check_distributed(keras, model):
    """Raises unless the model really trained on 2 replicas / devices."""
    if keras.backend.backend() == "jax":
        distribution = keras.distribution.distribution()
        if distribution is None:
            return
        devices = {d for v in model.trainable_weights for d in v.value.devices()}
        assert len(devices) == 2, devices
        return
    import tensorflow as tf

    strategy = getattr(model, "distribute_strategy", None)
    if strategy is None or strategy.num_replicas_in_sync == 1:
        # tf_keras models keep theirs in _distribution_strategy.
        if tf.distribute.has_strategy() or not hasattr(model, "_distribution_strategy"):
            return
        strategy = model._distribution_strategy
        if strategy is None or strategy.num_replicas_in_sync == 1:
            return
    assert strategy.num_replicas_in_sync == 2


def main(mode, names):
    """Trains each case on one device and on 2 replicas; prints the differences."""
    _configure(mode)
    from keras_reg._compat import keras

    scope, _ = _strategy(mode)
    keras.config.disable_traceback_filtering()
    results = {}
    every = tf_keras_cases() if mode == "tf-keras-mirrored" else cases()
    for name, build in every.items():
        if names and name not in names:
            continue
        try:
            keras.utils.set_random_seed(11)
            one = _train(keras, build, contextlib.nullcontext)
            keras.utils.set_random_seed(11)
            two = _train(keras, build, scope)
            results[name] = max(float(np.max(np.abs(a - b))) for a, b in zip(one, two))
        except Exception:  # noqa: BLE001  (reported to the test, which fails)
            results[name] = traceback.format_exc()
        keras.backend.clear_session()
        # What survives a case (the framework's objects) stays out of the next
        # case's collection.
        gc.freeze()
    print("RESULTS " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])


def _free_ports(count):
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for each in sockets:
            each.bind(("127.0.0.1", 0))
        return [each.getsockname()[1] for each in sockets]
    finally:
        for each in sockets:
            each.close()


def run_multiworker(names=(), timeout=600):
    """Runs the ``multiworker`` mode as 2 worker processes on 127.0.0.1.

    Starts both workers (TF_CONFIG with two free ports), waits at most
    ``timeout`` seconds in all, and kills any worker still running.

    Returns:
        (each worker's results or None, the workers' output tails).
    """
    import subprocess
    import time

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cluster = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    workers = []
    for index in range(2):
        config = {
            "cluster": {"worker": cluster},
            "task": {"type": "worker", "index": index},
        }
        environment = dict(
            os.environ, PYTHONPATH=root, TF_CONFIG=json.dumps(config),
            KERAS_BACKEND="tensorflow",
        )
        command = [sys.executable, "-m", "tests.replica_check", "multiworker", *names]
        workers.append(
            subprocess.Popen(
                command, cwd=root, env=environment, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True,
            )
        )
    deadline = time.monotonic() + timeout
    outputs = []
    for worker in workers:
        try:
            left = max(1.0, deadline - time.monotonic())
            output, _ = worker.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            for each in workers:
                each.kill()
            output, _ = worker.communicate()
            output += f"\n[killed after {timeout} s]"
        outputs.append(output)
    return [parse(o) for o in outputs], [o[-3000:] for o in outputs]
