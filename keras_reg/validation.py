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
                    raise ValueError(
                        unknown_option_message(function.__name__, name, known)
                    )
        return function(*args, **kwargs)

    return wrapper


def unknown_option_message(owner, name, known):
    """Returns the message for an unknown keyword ``name`` of ``owner()``.

    Args:
        owner: The function's or class's name.
        name: The keyword received.
        known: The keywords ``owner`` takes.
    """
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        f"{owner}() got an unknown option {name!r}{hint}. "
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


# The largest float32 x whose square is finite.
_SQUARABLE = float(np.sqrt(np.finfo(np.float32).max))


def squarable(name, value, example):
    """Returns ``value`` after checking that its square is a finite float32.

    A radius is squared in the step (to compare norms); past ~1.8e19 its
    square overflows to inf and the step can only produce NaN weights.

    Raises:
        ValueError: Naming the value, the bound and an example.
    """
    if abs(value) > _SQUARABLE:
        raise ValueError(
            f"`{name}` must be at most {_SQUARABLE:.3g} (its square must be a "
            f"finite float32), received {name}={value!r}. Pass for example "
            f"{name}={example}."
        )
    return value


def non_negative_number(name, value, example):
    """Like `positive_number`, but 0 (which turns a term off) is accepted too."""
    if not (_is_finite_real(value) and value >= 0):
        raise ValueError(
            f"`{name}` must be a number >= 0, received {name}={value!r}. "
            f"Pass for example {name}={example}, or 0 to turn it off."
        )
    return float(value)


def has_loss(model):
    """Whether ``model`` was compiled with a loss (Keras 3 or tf_keras).

    tf_keras records a compile without a loss as an empty container.
    """
    loss = getattr(model, "loss", None)
    if loss is None:
        return False
    try:
        return len(loss) > 0
    except TypeError:  # a loss function or object
        return True


def require_loss(owner, model, example="sparse_categorical_crossentropy"):
    """Raises a ValueError naming the fix unless ``model`` was compiled with a loss.

    Args:
        owner: The regulariser's name, used in the error message.
        model: The compiled model.
        example: A loss to suggest.
    """
    if not has_loss(model):
        raise ValueError(
            f"{owner} needs the model's training loss, but model "
            f"{getattr(model, 'name', model)!r} was compiled without one. "
            "Compile with a loss, e.g. `model.compile(optimizer='adam', "
            f"loss={example!r})`."
        )


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


def boolean(name, value, hint=None):
    """Returns ``value`` as a Python bool after checking that it is a real boolean.

    Only ``True``, ``False`` and NumPy booleans are accepted: a string such as
    ``"False"`` or ``"no"`` is truthy and an integer flag is ambiguous, so both
    are rejected instead of being read as a truth value.

    Args:
        name: The argument's name, used in the error message.
        value: The value received.
        hint: What each setting means, appended to the error message
            (default: "Pass name=True or name=False.").

    Returns:
        ``bool(value)``.

    Raises:
        ValueError: ``value`` is not a boolean.
    """
    if hint is None:
        hint = f"Pass {name}=True or {name}=False."
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(
            f"`{name}` must be True or False, received {name}={value!r} "
            f"(type {type(value).__name__}). {hint}"
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


def static_shape(x):
    """Returns the static shape of a tensor as a tuple (None for unknown sizes).

    Args:
        x: A tensor of any backend (or anything with a ``shape``).

    Returns:
        A tuple of ints and Nones, or None when even the rank is unknown.
    """
    shape = getattr(x, "shape", None)
    if shape is None or getattr(shape, "rank", 0) is None:
        return None
    return tuple(None if size is None else int(size) for size in shape)


def shapes_match(shape_a, shape_b):
    """Whether two static shapes can be equal: same rank, same known sizes."""
    if shape_a is None or shape_b is None:
        return True
    if len(shape_a) != len(shape_b):
        return False
    return all(a is None or b is None or a == b for a, b in zip(shape_a, shape_b))


def same_shape(owner, y_true, y_pred, hint=""):
    """Checks that ``y_true`` and ``y_pred`` have the same static shape.

    Element-wise losses and metrics would otherwise broadcast labels of the wrong
    shape (e.g. ``(batch, 1)`` against ``(batch, num_classes)``) and return a
    wrong value without an error. Sizes unknown at trace time are not checked.

    Args:
        owner: The name of the loss or metric, used in the error message.
        y_true: The labels, as a tensor.
        y_pred: The predictions, as a tensor.
        hint: Appended to the error message (e.g. which function to use instead).

    Raises:
        ValueError: The static shapes differ.
    """
    true_shape, pred_shape = static_shape(y_true), static_shape(y_pred)
    if not shapes_match(true_shape, pred_shape):
        raise ValueError(
            f"{owner} expects y_true and y_pred of the same shape "
            f"(..., num_classes); they would broadcast to a wrong value. "
            f"Received: y_true.shape={true_shape}, y_pred.shape={pred_shape}."
            + (f" {hint}" if hint else "")
        )
