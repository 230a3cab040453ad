"""Trains under several `tf.distribute.MirroredStrategy` objects, one after another.

Run as a program in a process of its own (2 logical CPU devices)::

    python -m tests.two_strategies_check RUN [RUN ...]

Each RUN is ``plain`` or ``fgm``, optionally suffixed ``:one-device`` (the
strategy reduces with ``tf.distribute.ReductionToOneDevice()``, no collective
operations) or ``:scope`` (FGM given as a ``RegularizationScope``). Each run
builds a new strategy, the same model in its scope, trains it for one epoch of
2 steps and prints ``RUN <name> <loss>``; an error ends the program and is
printed as ``ERROR <type> <message>``.
"""

import os
import sys


def main(runs):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    import keras_reg
    from keras_reg._compat import keras
    from tests import models

    x, y, _ = models.batch(np.random.default_rng(3), size=16)
    for run in runs:
        kind, _, option = run.partition(":")
        reduction = option
        cross_device_ops = (
            tf.distribute.ReductionToOneDevice() if reduction == "one-device" else None
        )
        strategy = tf.distribute.MirroredStrategy(
            ["/cpu:0", "/cpu:1"], cross_device_ops=cross_device_ops
        )
        with strategy.scope():
            model = models.build("functional")
            model.compile(
                loss="sparse_categorical_crossentropy",
                optimizer=keras.optimizers.SGD(0.5),
            )
            if kind == "fgm" and option != "scope":
                keras_reg.adversarial_training(model, "emb", epsilon=0.5)
        callbacks = []
        if option == "scope":
            fgm = keras_reg.FGM("emb", epsilon=0.5)
            callbacks = [keras_reg.callbacks.RegularizationScope(fgm)]
        try:
            history = model.fit(
                x, y, batch_size=8, epochs=1, verbose=0, callbacks=callbacks
            )
        except Exception as error:  # noqa: BLE001 - reported to the parent
            message = " ".join(str(error).split())
            print("ERROR", type(error).__name__, message[:1200], flush=True)
            return
        print("RUN", run, history.history["loss"][0], flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
