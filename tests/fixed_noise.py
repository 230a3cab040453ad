"""Fixed stand-ins for random draws inside the graph (XLA draws other numbers).

VAT's d ~ N(0, I) becomes `vat_reference.fixed_direction`'s pattern; uniform
draws (FreeLB's random start) a fixed pattern in [minval, maxval].
"""

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


def _uniform(shape, minval=0.0, maxval=1.0, *args, **kwargs):
    index = ops.cast(ops.arange(_size(shape)), "float32")
    flat = 0.5 + 0.5 * ops.sin(index * 2.3 + 0.1)
    return ops.reshape(minval + (maxval - minval) * flat, shape)


def install(monkeypatch):
    """Patches the step's draws and ``keras.random``'s for one test."""
    monkeypatch.setattr(keras.random, "normal", _normal)
    monkeypatch.setattr(keras.random, "uniform", _uniform)
    from keras_reg.backend import base

    steps = [base.Step]
    if keras.backend.backend() == "tensorflow":
        from keras_reg.backend import tensorflow

        steps.append(tensorflow.Step)  # its own draws under XLA
    for step in steps:
        monkeypatch.setattr(step, "normal", lambda self, shape, seed: _normal(shape))
        monkeypatch.setattr(
            step,
            "uniform",
            lambda self, shape, seed, minval=0.0, maxval=1.0: _uniform(
                shape, minval, maxval
            ),
        )


class ShiftedDraws:
    """Patches ``keras.random.randint``: n draws are ``(arange(n) + start) % maxval``.

    The unlabelled examples a step draws are then known; set ``start`` and
    trace the step again (`two_steps`) to draw others.
    """

    def __init__(self, monkeypatch):
        self.start = 0
        monkeypatch.setattr(keras.random, "randint", self.randint)

    def randint(self, shape, minval, maxval, seed=None, dtype="int32"):
        return (ops.arange(shape[0], dtype="int32") + self.start) % maxval


def two_steps(model, fit_one, draws, shift):
    """Runs ``fit_one()`` on draw 0, then, the step traced again, on draw ``shift``."""
    fit_one()
    draws.start = shift
    if keras.backend.backend() == "jax":  # jax.jit reuses a trace of the same step
        import jax

        jax.clear_caches()
    model.make_train_function(force=True)
    fit_one()
