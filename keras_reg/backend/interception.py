"""Transforming a layer's output for the duration of one traced forward pass."""

import contextlib
import threading

_LOCK = threading.Lock()
# id(layer) -> [number of open blocks (all threads), the layer's own instance call]
_INSTALLED = {}
_LOCAL = threading.local()


def _transforms(layer):
    """This thread's transforms of ``layer``, innermost last."""
    if not hasattr(_LOCAL, "transforms"):
        _LOCAL.transforms = {}
    return _LOCAL.transforms.setdefault(id(layer), [])


@contextlib.contextmanager
def transformed_output(layer, transform):
    """Makes ``layer`` return ``transform(output, inputs)`` inside the block.

    The layer's ``call`` is replaced by an instance attribute while a block is
    open (at trace time in graph mode), so everything else about the layer --
    its ``__call__`` plumbing, masks, dtype policy, variables -- is untouched.
    Blocks nest (the inner transform applies to the outer one's result), and
    they are per thread: under ``tf.distribute.MirroredStrategy`` each replica
    traces its step in a thread of its own, and a replica's transform must not
    act on another replica's pass.

    Args:
        layer: A Keras 3 or tf_keras layer.
        transform: ``transform(output, inputs) -> new_output``.

    Yields:
        None.

    Example:
        >>> with transformed_output(embedding, lambda out, ids: out + noise):
        ...     y = model(x, training=True)
    """
    with _LOCK:
        entry = _INSTALLED.get(id(layer))
        if entry is None:
            own_call = layer.__dict__.get("call")
            plain_call = layer.call

            def call(inputs, *args, **kwargs):
                output = plain_call(inputs, *args, **kwargs)
                for each in list(_transforms(layer)):
                    output = each(output, inputs)
                return output

            layer.call = call
            entry = _INSTALLED[id(layer)] = [0, own_call]
        entry[0] += 1
    stack = _transforms(layer)
    stack.append(transform)
    try:
        yield
    finally:
        stack.pop()
        with _LOCK:
            entry[0] -= 1
            if entry[0] == 0:
                del _INSTALLED[id(layer)]
                if entry[1] is None:
                    delattr(layer, "call")
                else:
                    layer.call = entry[1]
