"""Strengths that change during training: a number, or a schedule of the step.

Every strength of a regulariser (a perturbation radius ``epsilon``, a loss
term's ``weight``, an ascent step ``alpha``, SAM's ``rho``, AWP's ``gamma``,
a noise ``stddev``) may be a schedule, e.g. to ramp it up over the first
steps instead of starting at full strength. A schedule is any
``keras.optimizers.schedules.LearningRateSchedule`` (e.g.
``PolynomialDecay(0.0, 1000, end_learning_rate=1.0)``: a linear ramp from 0 to
1 over 1,000 steps, then 1) or a serialisable callable of the step count; the
step count is the optimizer's iteration counter (0 at the first step).

A schedule is checked when it is given: it must be an instance (not the
class), take the step count, and return a number >= 0 at step 0. A value
it returns later that is negative or not finite (NaN) would make an
adversary lower the loss, or every weight NaN; such a value is replaced by
0 at that step (no perturbation: the step is the plain one), and a
``RuntimeWarning`` says so once per strength at the end of the epoch,
naming the first such value and its step (see
`keras_reg.training.core.schedule_check`). Clipping is the one response that
works inside a compiled step on every backend (a graph cannot raise at the
step where it happens); check a schedule's values with
``[schedule(step) for step in range(steps)]`` before training.
"""

import numpy as np

from keras_reg._compat import keras
from keras_reg.validation import non_negative_number, positive_number, squarable


def strength(name, value, example, zero=False, squared=True):
    """Returns ``value``: a positive float, or a schedule kept as it is.

    Args:
        name: The argument's name, for error messages.
        value: A number, or a schedule of the step count.
        example: A sensible number to suggest in error messages.
        zero: Accept 0 too (a term that 0 turns off).
        squared: Whether the value is a radius the step squares (its norm
            is compared with others): a number whose square overflows
            float32 (above ~1.8e19) is then refused, since the step could
            only give NaN weights. An ascent step size (``alpha``) is only
            ever projected back onto the radius, which is computed stably,
            so any finite value works there.

    Raises:
        TypeError: ``value`` is a schedule class, or a callable that does not
            take the step count.
        ValueError: ``value`` is neither a positive number nor callable, its
            square overflows float32, or the schedule's value at step 0 is not
            a number >= 0.
    """
    if getattr(value, "is_relative_strength", False):
        raise TypeError(
            f"`{name}` does not take a relative strength, received {name}="
            f"{value!r}: only perturbation radii (epsilon, PGD's and FreeLB's "
            f"alpha, noise's stddev) do. Pass a number, e.g. {name}={example}."
        )
    if isinstance(value, type):
        raise TypeError(
            f"`{name}` received the class {value.__name__}, not a schedule. "
            f"Create one with its arguments, e.g. {name}=keras.optimizers."
            f"schedules.PolynomialDecay(0.0, 1000, end_learning_rate={example})."
        )
    if callable(value):
        return _checked_schedule(name, value, example)
    check = non_negative_number if zero else positive_number
    try:
        number = check(name, value, example)
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
    return squarable(name, number, example) if squared else number


def _checked_schedule(name, value, example):
    """Returns ``value`` after calling it at step 0 (see the module docstring)."""
    try:
        first = value(0)
    except TypeError as error:
        raise TypeError(
            f"`{name}` must be a schedule of the training step: a callable "
            f"taking the step count, received {name}={value!r}, which fails "
            f"when called with the step ({error}). Pass e.g. {name}=lambda "
            f"step: {example}, or a keras.optimizers.schedules."
            "LearningRateSchedule instance."
        ) from error
    try:
        first = float(np.asarray(first))
    except (TypeError, ValueError):
        raise TypeError(
            f"`{name}`'s schedule must return a number, received "
            f"{name}(0)={first!r}."
        ) from None
    if not first >= 0:  # NaN too
        raise ValueError(
            f"`{name}`'s schedule must return a number >= 0, but {name}(0)="
            f"{first!r} at step 0. Check the schedule's arguments."
        )
    return value


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
    ops = keras.ops
    value = ops.cast(value(step.iteration()), "float32")
    # A negative or non-finite value is no perturbation (module docstring).
    usable = ops.logical_and(ops.isfinite(value), value >= 0)
    return ops.where(usable, value, ops.zeros_like(value))


def serialize(value):
    """Returns ``value`` for ``get_config``: a number, or a schedule's config.

    Another strength object with a ``get_config`` (`keras_reg.relative`) is
    serialised as a schedule is.
    """
    if not is_scheduled(value) and not hasattr(value, "get_config"):
        return value
    return keras.saving.serialize_keras_object(value)


def deserialize(value):
    """Inverts `serialize`: a serialised schedule back to a schedule, else ``value``."""
    if isinstance(value, dict) and "class_name" in value:
        return keras.saving.deserialize_keras_object(value)
    return value
