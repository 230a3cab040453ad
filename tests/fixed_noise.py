"""Replaces VAT's d ~ N(0, I) by `vat_reference.fixed_direction`, inside the graph."""

from keras_reg._compat import keras

ops = keras.ops


def _normal(shape, *args, **kwargs):
    n = ops.prod(ops.convert_to_tensor(shape))
    flat = ops.cos(ops.cast(ops.arange(n), "float32") * 1.7 + 0.3)
    return ops.reshape(flat, shape)


def install(monkeypatch):
    """Patches ``keras.random.normal`` for the duration of one test."""
    monkeypatch.setattr(keras.random, "normal", _normal)
