"""Callbacks: install a regulariser for the duration of one ``fit``."""

import sys
import weakref

from keras_reg._compat import keras
from keras_reg.training import step

# Model -> the RegularizationScope whose fit is running on it.
_ACTIVE = weakref.WeakKeyDictionary()


def _ends_an_epoch(error):
    """Whether ``error`` is how a train function says its data ran out."""
    return isinstance(error, StopIteration) or type(error).__name__ == (
        "OutOfRangeError"
    )


class _ScopeMixin:
    """Installs the regulariser when ``fit`` begins and restores the model after.

    The model's previous state (plain, or the regulariser installed before)
    comes back when ``fit`` ends; when a training step raises (the exception
    passes through the train function, which the scope wraps); and otherwise
    -- an exception raised by another callback, which no callback can see --
    at the start of the model's next ``fit`` or ``train_on_batch``, before its
    first step (the scope wraps ``make_train_function``, which both call).
    """

    def __init__(self, regularizer):
        super().__init__()
        step.check_regularizer(regularizer)
        self.regularizer = regularizer
        self._previous = None
        self._installed_on = None
        self._own_call = False

    def on_train_begin(self, logs=None):
        model = self.model
        other = _ACTIVE.get(model)
        if other is not None and other is not self:
            other._restore()
            raise ValueError(
                "Two RegularizationScope callbacks were given to one fit on model "
                f"{model.name!r} ({other.regularizer!r} and {self.regularizer!r}). "
                "A model trains with one regulariser at a time: pass one scope."
            )
        self._previous = step.installed_regularizer(model)
        step.install(model, self.regularizer)
        self._installed_on = model
        _ACTIVE[model] = self
        model.make_train_function = self._make_train_function
        # fit() has already made its train function: make it again, now.
        self._own_call = True
        try:
            self._make_train_function(force=True)
        finally:
            self._own_call = False

    def on_train_end(self, logs=None):
        self._restore()

    def _make_train_function(self, *args, **kwargs):
        model = self._installed_on
        if not self._own_call:
            # A new fit (or train_on_batch) began: this scope's fit is over.
            self._restore()
            return model.make_train_function(*args, **kwargs)
        type(model).make_train_function(model, *args, **kwargs)
        model.train_function = self._guarded(model.train_function)
        return model.train_function

    def _guarded(self, function):
        def train_function(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except BaseException as error:
                if not _ends_an_epoch(error):
                    self._restore()
                raise

        return train_function

    def _restore(self):
        """Puts the model back as it was before this scope's fit, once."""
        model, self._installed_on = self._installed_on, None
        if model is None:
            return
        if model.__dict__.get("make_train_function") == self._make_train_function:
            del model.make_train_function
        if _ACTIVE.get(model) is self:
            del _ACTIVE[model]
        step.remove(model)
        if self._previous is not None:
            step.install(model, self._previous)
        self._previous = None


class RegularizationScope(_ScopeMixin, keras.callbacks.Callback):
    """Trains with ``regularizer`` during one ``fit`` only.

    At the end of ``fit`` the model's previous step (plain, or the regulariser
    installed before) is back, also when a training step raises. In a process
    where ``import keras`` is tf_keras (bert4keras with ``TF_KERAS=1``), this
    builds a tf_keras callback instead; elsewhere use `tf_keras_scope` for a
    tf_keras model.

    Args:
        regularizer: A `keras_reg.TrainingRegularizer` instance, e.g.
            `keras_reg.FGM`.

    Raises:
        TypeError: ``regularizer`` is not a regulariser instance (a name or a
            class).

    Example:
        >>> scope = keras_reg.callbacks.RegularizationScope(
        ...     keras_reg.FGM("Embedding-Token", epsilon=1.0))
        >>> model.fit(x, y, callbacks=[scope])   # adversarial training
        >>> model.fit(x, y)                      # plain training again
    """

    def __new__(cls, *args, **kwargs):
        if cls is RegularizationScope and _legacy_keras_active():
            instance = object.__new__(_tf_keras_scope_class())
            instance.__init__(*args, **kwargs)
            return instance
        return super().__new__(cls)

    def set_model(self, model):
        if _is_tf_keras(model):
            raise TypeError(
                f"Model {model.name!r} is a tf_keras model, and this "
                "RegularizationScope is a Keras 3 callback. Create the scope with "
                "`keras_reg.callbacks.tf_keras_scope(regularizer)` instead."
            )
        super().set_model(model)


def tf_keras_scope(regularizer):
    """Returns a `RegularizationScope` that is a tf_keras callback.

    For a tf_keras model in a process where ``import keras`` is Keras 3 (in a
    bert4keras process `RegularizationScope` already is one).

    Args:
        regularizer: A `keras_reg.TrainingRegularizer` instance.
    """
    instance = object.__new__(_tf_keras_scope_class())
    instance.__init__(regularizer)
    return instance


def _is_tf_keras(model):
    return any(c.__module__.startswith("tf_keras.") for c in type(model).__mro__)


def _legacy_keras_active():
    active = sys.modules.get("keras")
    return active is not None and active.__name__.startswith("tf_keras")


_TF_KERAS_SCOPE = []


def _tf_keras_scope_class():
    if not _TF_KERAS_SCOPE:
        import tf_keras

        _TF_KERAS_SCOPE.append(
            type(
                "RegularizationScope",
                (_ScopeMixin, tf_keras.callbacks.Callback),
                {"__doc__": RegularizationScope.__doc__, "__module__": __name__},
            )
        )
    return _TF_KERAS_SCOPE[0]
