"""FGM with the embedding matrix sharded over 2 JAX devices (ModelParallel).

Run as a program in a process of its own (the devices must be configured
before JAX starts)::

    python -m tests.sharded_embedding_check

Trains a bag-of-embeddings classifier with FGM for 3 SGD steps twice: on one
device, and under `keras.distribution.ModelParallel` with a layout map that
splits the embedding matrix's vocabulary axis over the 2 host CPU devices.
With an ``embeddings_regularizer`` (the matrix's gradient, hence FGM's
perturbation, is dense) it records, from inside the compiled step, the
sharding the compiler gave the perturbation (`jax.debug.inspect_array_sharding`);
without one (a plain lookup) the perturbation is `SparseRows`, and it records
their shape. Prints one JSON object: the largest weight difference, the
matrix's and the perturbation's shape, the shape of the largest piece of each
that one device holds, and the shapes of the rows.
"""

import json
import os
import sys

import numpy as np

VOCAB, DIM, CLASSES, LENGTH, BATCH, STEPS = 16, 4, 3, 5, 8, 3
L2 = 1e-3  # the embeddings regularizer that makes the matrix gradient dense


def _model(keras, l2):
    inputs = keras.Input((LENGTH,), dtype="int32")
    regularizer = keras.regularizers.L2(l2) if l2 else None
    h = keras.layers.Embedding(
        VOCAB, DIM, name="emb", embeddings_regularizer=regularizer
    )(inputs)
    h = keras.layers.GlobalAveragePooling1D()(h)
    outputs = keras.layers.Dense(CLASSES, activation="softmax", name="out")(h)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(1)
    for variable in model.weights:
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    model.compile(
        loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.SGD(0.5)
    )
    return model


def _train(keras, keras_reg, data, l2):
    model = _model(keras, l2)
    keras_reg.adversarial_training(model, "emb", epsilon=0.7)
    x, y = data
    model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
    return model


def main():
    """Trains unsharded and sharded; prints the comparison as JSON."""
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax

    import keras_reg
    from keras_reg._compat import keras
    from keras_reg.backend import rows, stateless

    seen, seen_rows = [], []
    scale_to_norm = stateless.Step.scale_to_norm

    def recording(self, gradient, epsilon):
        delta = scale_to_norm(self, gradient, epsilon)
        if rows.is_rows(delta):
            seen_rows.append(tuple(delta.values.shape))
        else:
            jax.debug.inspect_array_sharding(
                delta, callback=lambda sharding: seen.append(sharding)
            )
        return delta

    stateless.Step.scale_to_norm = recording

    rng = np.random.default_rng(2)
    data = (
        rng.integers(0, VOCAB, size=(BATCH * STEPS, LENGTH)).astype("int32"),
        rng.integers(0, CLASSES, size=(BATCH * STEPS,)).astype("int32"),
    )
    one = _train(keras, keras_reg, data, L2)
    one_rows = _train(keras, keras_reg, data, 0.0)
    unsharded = list(seen)
    seen.clear()
    seen_rows.clear()

    devices = jax.devices("cpu")
    mesh = keras.distribution.DeviceMesh((1, 2), ["batch", "model"], devices)
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map["emb/embeddings"] = ("model", None)  # rows split over devices
    distribution = keras.distribution.ModelParallel(
        layout_map=layout_map, batch_dim_name="batch"
    )
    with distribution.scope():
        two = _train(keras, keras_reg, data, L2)
        two_rows = _train(keras, keras_reg, data, 0.0)
    matrix = two.get_layer("emb").embeddings.value
    shape = tuple(matrix.shape)
    result = {
        "difference": max(
            float(np.max(np.abs(keras.ops.convert_to_numpy(a) - np.asarray(b))))
            for pair in ((one, two), (one_rows, two_rows))
            for a, b in zip(pair[0].trainable_weights, pair[1].trainable_weights)
        ),
        "rows_shapes": seen_rows,
        "matrix_shape": shape,
        "matrix_piece": tuple(matrix.sharding.shard_shape(shape)),
        "matrix_devices": len(matrix.sharding.device_set),
        "unsharded_perturbation_piece": [
            tuple(s.shard_shape(shape)) for s in unsharded
        ],
        "perturbation_pieces": [tuple(s.shard_shape(shape)) for s in seen],
        "perturbation_devices": [len(s.device_set) for s in seen],
    }
    print("RESULTS " + json.dumps(result), flush=True)


def run(timeout=600):
    """Runs this program in a subprocess; returns (results or None, output)."""
    import subprocess

    from tests import replica_check

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environment = dict(os.environ, PYTHONPATH=root)
    process = subprocess.run(
        [sys.executable, "-m", "tests.sharded_embedding_check"],
        cwd=root, env=environment, capture_output=True, text=True, timeout=timeout,
    )
    output = process.stdout[-3000:] + process.stderr[-3000:]
    return replica_check.parse(process.stdout), output


if __name__ == "__main__":
    main()
