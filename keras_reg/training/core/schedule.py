"""Strengths that change during training: a number, or a schedule of the step.

Every strength of a regulariser (a perturbation radius ``epsilon``, a loss
term's ``weight``, an ascent step ``alpha``, SAM's ``rho``, AWP's ``gamma``,
a noise ``stddev``) may be a schedule, e.g. to ramp it up over the first
steps instead of starting at full strength. A schedule is any
``keras.optimizers.schedules.LearningRateSchedule`` (e.g.
``PolynomialDecay(0.0, 1000, end_learning_rate=1.0)``: a linear ramp from 0 to
1 over 1,000 steps, then 1) or a serialisable callable of the step count; the
step count is the optimizer's iteration counter (0 at the first step).
"""

from keras_reg._compat import keras
from keras_reg.validation import non_negative_number, positive_number


def strength(name, value, example, zero=False):
    """Returns ``value``: a positive float, or a schedule kept as it is.

    Args:
        name: The argument's name, for the error message.
        value: The value received.
        example: A sensible value to suggest in the error message.
        zero: Accept 0 too (a term that 0 turns off).

    Raises:
        ValueError: ``value`` is neither a positive number nor callable.
    """
    if callable(value):
        return value
    check = non_negative_number if zero else positive_number
    try:
        return check(name, value, example)
    except ValueError:
        kind = "a number >= 0" if zero else "a positive number"
        raise ValueError(
            f"`{name}` must be {kind}, received {name}={value!r}, or a "
            "schedule of the training step (a keras.optimizers.schedules."
            f"LearningRateSchedule or a callable). Pass for example {name}="
            f"{example}, or {name}=keras.optimizers.schedules.PolynomialDecay("
            f"0.0, 1000, end_learning_rate={example}) to ramp it up over the "
            "first 1,000 steps."
        ) from None


def is_scheduled(value):
    """Whether ``value`` is a schedule (not a number)."""
    return callable(value)


def current(step, value):
    """Returns ``value`` at this training step: a float, or a float32 scalar tensor.

    Args:
        step: The `keras_reg.backend.base.Step` in progress.
        value: A number, or a schedule of the optimizer's iteration count.
    """
    if not is_scheduled(value):
        return value
    return keras.ops.cast(value(step.iteration()), "float32")


def serialize(value):
    """Returns ``value`` for ``get_config``: a number, or a schedule's config."""
    if not is_scheduled(value):
        return value
    return keras.saving.serialize_keras_object(value)


def deserialize(value):
    """Inverts `serialize`: a serialised schedule back to a schedule, else ``value``."""
    if isinstance(value, dict) and "class_name" in value:
        return keras.saving.deserialize_keras_object(value)
    return value
