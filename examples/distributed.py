"""FGM on several devices with tf.distribute.MirroredStrategy: step time vs plain.

Runs unchanged on a machine with several GPUs (one replica per GPU) and on a
CPU-only machine, where the CPU is split into 2 logical devices (2 replicas).
The regulariser is installed the usual way, on a model built and compiled
inside ``strategy.scope()``; keras_reg takes its norms over the global batch
(the embedding gradient is all-reduced before normalising), so the training
is the one a single device would do on the same global batch.

Prints the median step time of the plain model and of FGM (rounds
alternate between the two, so both see the same machine load) and their
ratio.

    KERAS_BACKEND=tensorflow python examples/distributed.py [--steps 20] [--rounds 7]
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

VOCAB, DIM, LENGTH, CLASSES, GLOBAL_BATCH = 20000, 128, 64, 2, 128


def strategy():
    """MirroredStrategy over all GPUs, or over 2 logical CPU devices."""
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) >= 2:
        return tf.distribute.MirroredStrategy()
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def build(keras):
    """A small text classifier: embedding, convolution, pooling, softmax."""
    inputs = keras.Input((LENGTH,), dtype="int32")
    h = keras.layers.Embedding(VOCAB, DIM, name="embedding")(inputs)
    h = keras.layers.Conv1D(128, 3, activation="relu")(h)
    h = keras.layers.GlobalMaxPooling1D()(h)
    outputs = keras.layers.Dense(CLASSES, activation="softmax")(h)
    model = keras.Model(inputs, outputs)
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
    return model


class StepTimes:
    """A Keras callback recording the wall time of every training batch."""

    def __init__(self, keras):
        times = self.times = []

        class Callback(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                self.start = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                times.append(time.perf_counter() - self.start)

        self.callback = Callback()


def main():
    """Times plain and FGM steps under MirroredStrategy; prints the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="steps per round")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds each")
    args = parser.parse_args()

    mirrored = strategy()
    import keras_reg
    from keras_reg._compat import keras

    rng = np.random.default_rng(0)
    size = GLOBAL_BATCH * args.steps
    x = rng.integers(0, VOCAB, size=(size, LENGTH)).astype("int32")
    y = (x[:, :8].sum(axis=1) % CLASSES).astype("int32")

    models = {}
    with mirrored.scope():
        models["plain"] = build(keras)
        models["fgm"] = keras_reg.adversarial_training(
            build(keras), "embedding", epsilon=1.0
        )
    print(
        f"{mirrored.num_replicas_in_sync} replicas "
        f"({', '.join(d for d in mirrored.extended.worker_devices)}), "
        f"global batch {GLOBAL_BATCH}"
    )
    timers = {name: StepTimes(keras) for name in models}
    for model in models.values():  # trace and warm up
        model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, verbose=0)
    for _ in range(args.rounds):
        for name, model in models.items():
            model.fit(
                x, y, batch_size=GLOBAL_BATCH, epochs=1, verbose=0,
                callbacks=[timers[name].callback],
            )
    medians = {name: float(np.median(t.times)) for name, t in timers.items()}
    for name, median in medians.items():
        print(f"{name:>5}: median step {1000 * median:.1f} ms "
              f"({len(timers[name].times)} steps)")
    print(f"FGM / plain step time: {medians['fgm'] / medians['plain']:.2f}")


if __name__ == "__main__":
    main()
