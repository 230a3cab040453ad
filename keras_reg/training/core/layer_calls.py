"""Checking that the layers a regulariser acts on are called by the forward pass.

A regulariser that perturbs or penalises a named layer (an embedding matrix,
the kernels of some layers) does nothing at all when the model's forward pass
never calls that layer (a layer owned by a subclassed model but not used in
its ``call``): its gradient is zero or missing, and the step silently equals
the plain one on some backends, fails deep inside on others. The step records
which of those layers its own forward pass calls (at trace time, so under
``jit_compile`` too) and refuses the step, before the regulariser runs, when
one was never called.
"""

import contextlib

from keras_reg.backend.base import NO_LOOKUP, is_lookup
from keras_reg.backend.interception import transformed_output

NOT_CALLED = (
    "Layer {name!r} was not called in the step's forward pass, so {regularizer} "
    "has nothing to act on there (its weights do not enter the loss). Name a "
    "layer the model's `call` uses (layers={layers!r})."
)


@contextlib.contextmanager
def recorded_calls(required):
    """Records, inside the block, which of the ``required`` layers are called.

    Args:
        required: ``(layer, lookup)`` pairs, see
            `TrainingRegularizer.required_layers`.

    Yields:
        A dict ``{id(layer): True}`` filled as the layers are called (for a
        lookup layer, only by a call mapping ids to vectors).
    """
    calls = {}
    with contextlib.ExitStack() as stack:
        for layer, lookup in required:

            def record(output, inputs, layer=layer, lookup=lookup):
                if not lookup or is_lookup(output, inputs):
                    calls[id(layer)] = True
                return output

            stack.enter_context(transformed_output(layer, record))
        yield calls


def check_called(required, calls, regularizer):
    """Raises the error for the first ``required`` layer missing from ``calls``.

    Raises:
        ValueError: Naming the layer and the fix.
    """
    for layer, lookup in required:
        if calls.get(id(layer)):
            continue
        if lookup:
            raise ValueError(NO_LOOKUP.format(name=layer.name))
        raise ValueError(
            NOT_CALLED.format(
                name=layer.name,
                regularizer=type(regularizer).__name__,
                layers=getattr(regularizer, "layers", None),
            )
        )
