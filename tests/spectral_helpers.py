"""NumPy views of tensors and the SVD reference, shared by the spectral tests."""

import numpy as np

from keras_reg._compat import keras


def numpy(x):
    """A float64 NumPy copy of a tensor or variable of any backend."""
    return np.asarray(keras.ops.convert_to_numpy(x), np.float64)


def sigma_max(weight):
    """The largest singular value of ``weight`` read as ``(-1, shape[-1])``."""
    weight = numpy(weight)
    return np.linalg.svd(weight.reshape(-1, weight.shape[-1]), compute_uv=False)[0]
