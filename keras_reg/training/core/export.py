"""One decorator for the public regularisers: serialisation, public list, installer.

``@export("fgm")`` on a `TrainingRegularizer` subclass

- registers the class for Keras serialisation under the package ``keras_reg``
  (``keras.saving.deserialize_keras_object`` finds ``"keras_reg>FGM"``);
- records it, and its installer, as public: ``keras_reg.__all__`` and
  ``keras_reg.training.__all__`` are built from this record (`public`);
- generates the installer function ``fgm(model, *args, **kwargs)``, which is
  ``keras_reg.install_regularizer(model, FGM(*args, **kwargs))``: the class's
  parameters and defaults, its docstring's summary, arguments and example,
  and the class's own errors, since the function only constructs the class;
- checks the class's keyword arguments: a misspelt one raises a
  ``ValueError`` that names the options and the closest one, and a renamed
  argument (``renamed={"epsilon": "weight"}``) still works, with a
  ``DeprecationWarning``, also through ``from_config`` of an old config.

A plain function (``adversarial_training``) is recorded with
``@export()``.
"""

import functools
import inspect
import os
import sys
import warnings

from keras_reg._compat import keras
from keras_reg.validation import unknown_option_message

# Public name -> class or function, in the order they were exported.
_PUBLIC = {}
# Installer function -> the class it installs.
_INSTALLS = {}
_PACKAGE_DIRECTORY = (
    os.path.dirname(os.path.dirname(os.path.dirname(__file__))) + os.sep
)
_REMOVAL = "0.3"


def export(installer=None, renamed=None):
    """Returns a decorator that makes a class (or function) public.

    Args:
        installer: For a regulariser class: the name of the installer
            function to generate (e.g. ``"fgm"``), set in the class's module
            and made public beside the class. None: no installer.
        renamed: ``{old_name: new_name}`` of constructor arguments that were
            renamed; the old name keeps working, with a ``DeprecationWarning``.

    Returns:
        A decorator returning the class (registered) or the function.

    Example:
        >>> @export("fgm")
        ... class FGM(TrainingRegularizer):
        ...     ...
    """
    renamed = dict(renamed or {})

    def decorate(target):
        if not isinstance(target, type):
            _record(target.__name__, target)
            return target
        target.__init__ = _checked_init(target, renamed)
        keras.saving.register_keras_serializable(package="keras_reg")(target)
        _record(target.__name__, target)
        if installer is not None:
            function = installer_function(target, installer)
            setattr(sys.modules[target.__module__], installer, function)
            _record(installer, function)
        return target

    return decorate


def public():
    """Returns ``{name: object}`` of everything exported, in export order."""
    return dict(_PUBLIC)


def installers():
    """Returns ``{installer function: the class it installs}``."""
    return dict(_INSTALLS)


def _record(name, target):
    previous = _PUBLIC.get(name)
    if (
        previous is not None
        and previous is not target
        and (
            getattr(previous, "__qualname__", None)
            != getattr(target, "__qualname__", 0)
            or previous.__module__ != target.__module__
        )
    ):
        raise ValueError(
            f"Two public objects named {name!r}: {previous!r} and {target!r}."
        )
    _PUBLIC[name] = target


def warn_deprecated(message):
    """Emits ``message`` as a DeprecationWarning attributed to the caller's code.

    The warning points at the first frame outside keras_reg, so Python's
    default filters show it to the user who wrote the call.
    """
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIRECTORY):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, DeprecationWarning, stacklevel=level)


def _checked_init(cls, renamed):
    """Wraps ``cls.__init__``: renamed arguments, then unknown keywords."""
    init = cls.__init__
    parameters = list(inspect.signature(init).parameters.values())[1:]
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return init
    known = [p.name for p in parameters if p.kind is not p.VAR_POSITIONAL]

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        for old, new in renamed.items():
            if old not in kwargs:
                continue
            if new in kwargs:
                raise ValueError(
                    f"{cls.__name__}() received both `{new}` and its deprecated "
                    f"name `{old}` ({new}={kwargs[new]!r}, {old}={kwargs[old]!r}). "
                    f"Pass only {new}=."
                )
            warn_deprecated(
                f"{cls.__name__}({old}=...) is deprecated and will be removed in "
                f"{_REMOVAL}: pass {new}={kwargs[old]!r} instead."
            )
            kwargs[new] = kwargs.pop(old)
        for name in kwargs:
            if name not in known:
                raise ValueError(unknown_option_message(cls.__name__, name, known))
        init(self, *args, **kwargs)

    return __init__


def installer_function(cls, name):
    """Returns ``name(model, *args, **kwargs)``: installs ``cls(*args, **kwargs)``.

    Its signature is the class's, after ``model``; its docstring is built from
    the class's (summary, arguments, example).
    """

    def install(model, *args, **kwargs):
        # Imported here: the installer imports the composition, an export.
        from keras_reg.training.core import installer

        return installer.install(model, cls(*args, **kwargs))

    signature = inspect.signature(cls.__init__)
    model = inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    parameters = list(signature.parameters.values())[1:]
    install.__signature__ = signature.replace(parameters=[model, *parameters])
    install.__name__ = install.__qualname__ = name
    install.__module__ = cls.__module__
    install.__doc__ = _installer_doc(cls, name)
    _INSTALLS[install] = cls
    return install


def _sections(doc):
    """Splits a Google-style docstring into ``(summary, {section: lines})``."""
    lines = inspect.cleandoc(doc or "").splitlines()
    summary = lines[0] if lines else ""
    sections, current = {}, None
    for line in lines[1:]:
        header = line.rstrip()
        if header.endswith(":") and header[:-1] in (
            "Args",
            "Arguments",
            "Example",
            "Examples",
            "Raises",
            "Returns",
            "References",
            "Reference",
        ):
            current = header[:-1]
            sections[current] = []
        elif current is not None:
            if line and not line.startswith(" "):
                current = None
            else:
                sections[current].append(line)
    for lines in sections.values():
        while lines and not lines[-1].strip():
            lines.pop()
    return summary, sections


def _installer_doc(cls, name):
    summary, sections = _sections(cls.__doc__)
    arguments = sections.get("Args", [])
    example = (
        sections.get("Example")
        or sections.get("Examples")
        or [f"    >>> keras_reg.{name}(model)"]
    )
    text = [
        summary,
        "",
        f"Installs `keras_reg.{cls.__name__}` on a compiled model, after "
        "``compile``: ``fit`` then",
        f"trains with it. ``{name}(model, ...)`` is "
        f"``keras_reg.install_regularizer(model, {cls.__name__}(...))``:",
        "the same arguments, defaults and errors. Calling it again replaces",
        "the regulariser; `keras_reg.remove_regularization` restores the plain step.",
        "",
        "Args:",
        "    model: A compiled Keras 3 (TensorFlow, JAX or PyTorch) or tf_keras",
        "        model.",
        *arguments,
        "",
        "Returns:",
        "    ``model``.",
        "",
        "Raises:",
        "    ValueError: A bad argument (named in the message), or a model that",
        f"        does not suit `{cls.__name__}`.",
        "",
        "Example:",
        *example,
    ]
    while text and not text[-1].strip():
        text.pop()
    return "\n".join(text) + "\n"
