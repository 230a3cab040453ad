"""Warns once when a strength schedule returned a value the step replaced by 0.

A compiled step cannot raise or warn at the step where a schedule returns a
negative or NaN strength, so `keras_reg.training.core.schedule.current`
replaces such a value by 0 there (no perturbation, no term). This module
finds those steps afterwards, on the host, without touching the step: a
schedule is a pure function of the optimizer's step count, so the values the
step saw are recomputed from the schedule itself for the steps run since the
last check. `keras_reg.training.core.installer` calls `ScheduleCheck.check`
where ``fit`` reads the model's metrics at the end of every epoch.
"""

import inspect
import warnings

import numpy as np

from keras_reg.training.core import schedule

_MESSAGE = (
    "{owner}'s `{name}` schedule returned {value!r} at step {step} "
    "({count} of the steps {start}-{stop} gave a negative or NaN value). A "
    "strength must be >= 0: each such step used {name}=0 instead (no "
    "perturbation and no term at that step). Check the schedule's arguments, "
    "e.g. with [schedule(step) for step in range(steps)]."
)


def scheduled_strengths(regularizer):
    """Returns ``[(owner, name, schedule)]`` for every scheduled strength.

    ``owner`` is the regulariser holding it (a composition's members are
    searched too), ``name`` the argument's name.
    """
    found = []
    for name in inspect.signature(type(regularizer).__init__).parameters:
        value = getattr(regularizer, name, None)
        if schedule.is_scheduled(value) and not isinstance(value, type):
            found.append((regularizer, name, value))
    for member in getattr(regularizer, "regularizers", ()):
        found.extend(scheduled_strengths(member))
    return found


def _values(function, start, stop):
    """The schedule's values at steps ``start .. stop - 1``, as float64."""
    steps = np.arange(start, stop, dtype="float32")
    try:
        values = np.asarray(function(steps), dtype="float64")
    except Exception:  # noqa: BLE001 (a schedule of one scalar step only)
        values = None
    if values is None or values.shape not in ((), steps.shape):
        values = np.array(
            [float(np.asarray(function(step))) for step in steps], dtype="float64"
        )
    return np.broadcast_to(values, steps.shape)


class ScheduleCheck:
    """Checks a regulariser's scheduled strengths over the steps run so far.

    Args:
        regularizer: The installed regulariser.
        start: Returns the optimizer's step count (read when installed, only
            where a strength is scheduled): the earlier steps did not use it.
        warned: The installation's set of what was already warned about
            (``(id(owner), strength name)`` is added to it).
    """

    def __init__(self, regularizer, start, warned):
        self.strengths = scheduled_strengths(regularizer)
        # The first step not yet checked.
        self.checked = int(start()) if self.strengths else 0
        self.warned = warned

    def check(self, iterations):
        """Warns once per strength about values < 0 or NaN before ``iterations``.

        Args:
            iterations: The optimizer's step count now (steps 0 ..
                ``iterations - 1`` have run).
        """
        start, stop = self.checked, int(iterations)
        self.checked = max(stop, start)
        for owner, name, function in self.strengths:
            if stop <= start or (id(owner), name) in self.warned:
                continue
            values = _values(function, start, stop)
            unusable = ~(values >= 0)
            if unusable.any():
                first = int(np.argmax(unusable))
                self.warned.add((id(owner), name))
                warnings.warn(
                    _MESSAGE.format(
                        owner=type(owner).__name__,
                        name=name,
                        value=float(values[first]),
                        step=start + first,
                        count=int(unusable.sum()),
                        start=start,
                        stop=stop - 1,
                    ),
                    RuntimeWarning,
                    stacklevel=2,
                )
