"""Replaces VAT's d ~ N(0, I) by `vat_reference.fixed_direction`, inside the graph."""

from keras_reg._compat import keras

ops = keras.ops


def _size(shape):
    """Returns the number of elements: a Python int where the shape is static.

    JAX traces need a static ``arange`` length; TF graphs may have dynamic dims.
    """
    if all(isinstance(dim, int) for dim in shape):
        size = 1
        for dim in shape:
            size *= dim
        return size
    return ops.prod(ops.convert_to_tensor(shape))


def _normal(shape, *args, **kwargs):
    flat = ops.cos(ops.cast(ops.arange(_size(shape)), "float32") * 1.7 + 0.3)
    return ops.reshape(flat, shape)


def install(monkeypatch):
    """Patches ``keras.random.normal`` for the duration of one test."""
    monkeypatch.setattr(keras.random, "normal", _normal)
