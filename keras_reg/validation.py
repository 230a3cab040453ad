"""Argument checks for the public API: each error names the bad value and the fix."""

import difflib
import functools
import inspect
import numbers

import numpy as np


def check_options(function):
    """Rejects unknown keyword arguments with a "did you mean" suggestion.

    Python's own ``TypeError`` for a misspelt keyword names the bad word but not
    the options that exist; this decorator raises a ``ValueError`` that does both.

    Args:
        function: A function whose keyword arguments should be checked.

    Returns:
        The wrapped function, with the same signature.

    Example:
        >>> @check_options
        ... def train(model, epsilon=1.0):
        ...     return epsilon
        >>> train(None, epsion=2.0)
        Traceback (most recent call last):
        ...
        ValueError: train() got an unknown option 'epsion' (did you mean ...
    """
    parameters = inspect.signature(function).parameters
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    known = [
        name
        for name, p in parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if not accepts_any:
            for name in kwargs:
                if name not in known:
                    raise ValueError(_unknown_option_message(function, name, known))
        return function(*args, **kwargs)

    return wrapper


def _unknown_option_message(function, name, known):
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        f"{function.__name__}() got an unknown option {name!r}{hint}. "
        f"Valid options: {', '.join(known)}."
    )


def _is_finite_real(value):
    return (
        not isinstance(value, bool)
        and isinstance(value, numbers.Real)
        and value == value  # not NaN
        and abs(value) != float("inf")
    )


def positive_number(name, value, example):
    """Returns ``value`` as a float after checking that it is a finite number > 0.

    Args:
        name: The argument's name, used in the error message.
        value: The value received.
        example: A sensible value to suggest in the error message.

    Returns:
        ``float(value)``.

    Raises:
        ValueError: ``value`` is not a positive finite number.
    """
    if not (_is_finite_real(value) and value > 0):
        raise ValueError(
            f"`{name}` must be a positive number, received {name}={value!r}. "
            f"Pass for example {name}={example}."
        )
    return float(value)


def non_negative_number(name, value, example):
    """Like `positive_number`, but 0 (which turns a term off) is accepted too."""
    if not (_is_finite_real(value) and value >= 0):
        raise ValueError(
            f"`{name}` must be a number >= 0, received {name}={value!r}. "
            f"Pass for example {name}={example}, or 0 to turn it off."
        )
    return float(value)


def choice(name, value, allowed):
    """Returns ``value`` after checking it is one of ``allowed``.

    Raises:
        ValueError: ``value`` is not in ``allowed``.
    """
    if value not in allowed:
        raise ValueError(
            f"`{name}` must be one of {', '.join(map(repr, allowed))}; "
            f"received {name}={value!r}."
        )
    return value


def boolean(name, value):
    """Returns ``value`` after checking it is a bool (not a string such as 'False').

    Raises:
        ValueError: ``value`` is not ``True`` or ``False``.
    """
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise ValueError(
            f"`{name}` must be True or False, received {name}={value!r} "
            f"({type(value).__name__}). Pass {name}=True or {name}=False."
        )
    return bool(value)


def integer_argument(name, value, minimum, example):
    """Returns ``value`` as an int after checking it is an integer >= ``minimum``.

    Python and NumPy integers are accepted; bools and floats (even ``2.0``) are
    not.

    Raises:
        ValueError: Naming the value received and an example of a valid one.
    """
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, numbers.Integral)
        or value < minimum
    ):
        raise ValueError(
            f"`{name}` must be an integer >= {minimum}, received {name}={value!r} "
            f"({type(value).__name__}). Pass for example {name}={example}."
        )
    return int(value)
