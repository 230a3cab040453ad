"""Transforming a layer's output for the duration of one traced forward pass."""

import contextlib


@contextlib.contextmanager
def transformed_output(layer, transform):
    """Makes ``layer`` return ``transform(output, inputs)`` inside the block.

    The layer's ``call`` is replaced by an instance attribute while the block
    runs (at trace time in graph mode), so everything else about the layer --
    its ``__call__`` plumbing, masks, dtype policy, variables -- is untouched.

    Args:
        layer: A Keras 3 or tf_keras layer.
        transform: ``transform(output, inputs) -> new_output``.

    Yields:
        None.

    Example:
        >>> with transformed_output(embedding, lambda out, ids: out + noise):
        ...     y = model(x, training=True)
    """
    own_call = layer.__dict__.get("call")
    plain_call = layer.call

    def call(inputs, *args, **kwargs):
        return transform(plain_call(inputs, *args, **kwargs), inputs)

    layer.call = call
    try:
        yield
    finally:
        if own_call is None:
            delattr(layer, "call")
        else:
            layer.call = own_call
