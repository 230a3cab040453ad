"""Whether outputs read as class probabilities were probabilities, batch by batch.

VAT and R-Drop take a KL divergence of the model's outputs, read as
probabilities unless the compiled loss (``from_logits=True``) or
``predictions="logits"`` says logits. A model that outputs logits or a
regression value without saying so (a subclassed model, whose output layer
cannot be read at install time) gives a wrong divergence, often 0: the term
trains nothing, silently. The step records, without leaving the device,
whether any output it read as probabilities had a negative value or a row not
summing to 1 (a value outside [0, 1] for a single sigmoid unit); at the end
of the epoch the host reads the record and warns once with the fix.
"""

import warnings

import numpy as np

from keras_reg._compat import keras

ops = keras.ops

_SUFFIX = "_outputs_not_probabilities"


def state_name(who):
    """The carried state's name for regulariser ``who`` (unique per regulariser)."""
    return f"{who.lower()}{_SUFFIX}"


def is_record(name):
    """Whether carried state ``name`` is such a record (a flag, not a carry)."""
    return name.endswith(_SUFFIX)

# A softmax row of a float16 or bfloat16 model sums to 1 within ~1e-2.
_TOLERANCE = 1e-2

_MESSAGE = (
    "{who} reads model {model!r}'s outputs as class probabilities ({why}), but "
    "the outputs of a training batch this epoch were not probabilities (a "
    "negative value, or a row not summing to 1): they look like logits or a "
    "regression output, and the {who} divergence is then wrong, often 0 "
    "(the term trains nothing). If the model outputs logits, pass "
    "predictions='logits' (or compile the loss with from_logits=True); for "
    "probabilities, end the model with a softmax."
)


def carried_state(kind, who):
    """Returns the state `record` needs (for outputs read as probabilities)."""
    return {state_name(who): ()} if kind == "probabilities" else {}


def _not_probabilities(output):
    output = ops.cast(output, "float32")
    negative = ops.any(output < -_TOLERANCE)
    if output.shape[-1] == 1:
        return ops.logical_or(negative, ops.any(output > 1.0 + _TOLERANCE))
    off = ops.abs(ops.sum(output, axis=-1) - 1.0) > _TOLERANCE
    return ops.logical_or(negative, ops.any(off))


def record(step, outputs, who):
    """Records in the step's state whether ``outputs`` were not probabilities.

    Args:
        step: The `keras_reg.backend.base.Step` in progress (its regulariser
            declared `carried_state`).
        outputs: The model's output (or a structure of outputs), as read.
        who: The regulariser's name.
    """
    flags = [_not_probabilities(o) for o in keras.tree.flatten(outputs)]
    flag = flags[0]
    for other in flags[1:]:
        flag = ops.logical_or(flag, other)
    state = step.state(state_name(who))
    state.assign(ops.maximum(ops.convert_to_tensor(state), ops.cast(flag, "float32")))


def warn_once(warned, states, who, model_name, predictions):
    """Warns (once per installation) when `record` saw non-probabilities.

    Args:
        warned: The installation's set of what was warned about (this
            record's name is added to it).
        states: ``{name: value}`` of the carried states, read on the host.
        who: The regulariser's name, for the message.
        model_name: The model's name.
        predictions: The user's ``predictions`` argument (None: inferred).
    """
    name = state_name(who)
    value = states.get(name)
    if value is None or name in warned or not np.any(np.asarray(value) > 0):
        return
    warned.add(name)
    why = (
        "predictions='probabilities'"
        if predictions is not None
        else "inferred from the compiled loss, or no loss"
    )
    warnings.warn(
        _MESSAGE.format(who=who, model=model_name, why=why),
        RuntimeWarning,
        stacklevel=3,
    )
