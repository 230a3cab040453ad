"""TensorFlow under XLA: an embedding gradient's rows summed without densifying."""

import numpy as np
import pytest

pytestmark = pytest.mark.backends("tensorflow")


def _gradient(tf, vocab=1000):
    rng = np.random.default_rng(0)
    indices = np.array([7, 3, 7, 999, 3, 7, 0], "int32")
    values = rng.normal(size=(len(indices), 4)).astype("float32")
    return tf.IndexedSlices(
        tf.constant(values), tf.constant(indices), tf.constant([vocab, 4])
    ), indices, values


def test_sorted_rows_sum_repeats_in_one_row_per_occurrence_under_xla():
    import tensorflow as tf

    from keras_reg.backend import tensorflow as backend

    gradient, indices, values = _gradient(tf)
    summed = tf.function(backend.sum_sorted_rows, jit_compile=True)(gradient)
    rows, sums = summed.rows.numpy(), summed.values.numpy()
    unique = np.unique(indices)
    assert rows.shape == (len(indices),)  # the occurrences, not the vocabulary
    np.testing.assert_array_equal(rows[: len(unique)], unique)
    assert (rows[len(unique):] == backend.PAD_ROW).all()
    for row, total in zip(unique, sums):
        np.testing.assert_array_equal(total, values[indices == row].sum(axis=0))
    assert not sums[len(unique):].any()


def test_scale_to_norm_under_xla_keeps_the_rows_and_the_dense_maths():
    import tensorflow as tf

    from keras_reg.backend import tensorflow as backend

    gradient, _, _ = _gradient(tf)
    direction = tf.function(
        lambda g: backend.scale_to_norm(g, 0.7, static_shapes=True), jit_compile=True
    )(gradient)
    assert isinstance(direction, backend.SparseRows)
    dense = tf.convert_to_tensor(gradient).numpy()
    expected = 0.7 * dense / np.linalg.norm(dense)
    looked_up = backend.lookup(direction, tf.range(1000)).numpy()
    np.testing.assert_allclose(looked_up, expected, rtol=1e-6, atol=1e-7)
