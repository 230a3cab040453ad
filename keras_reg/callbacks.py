"""Callbacks: install a regulariser for the duration of one ``fit``."""

import sys

from keras_reg._compat import keras
from keras_reg.training import step


class _ScopeMixin:
    """Installs the regulariser when ``fit`` begins and removes it when it ends."""

    def __init__(self, regularizer):
        super().__init__()
        self.regularizer = regularizer
        self._previous = None

    def on_train_begin(self, logs=None):
        self._previous = step.installed_regularizer(self.model)
        step.install(self.model, self.regularizer)
        # fit() has already made its train function: make it again, now.
        self.model.make_train_function(force=True)

    def on_train_end(self, logs=None):
        step.remove(self.model)
        if self._previous is not None:
            step.install(self.model, self._previous)
        self._previous = None


class RegularizationScope(_ScopeMixin, keras.callbacks.Callback):
    """Trains with ``regularizer`` during one ``fit`` only.

    At the end of ``fit`` the model's previous step (plain, or the regulariser
    installed before) is back. In a process where ``import keras`` is tf_keras
    (bert4keras with ``TF_KERAS=1``), this builds a tf_keras callback instead.

    Args:
        regularizer: A `keras_reg.TrainingRegularizer`, e.g. `keras_reg.FGM`.

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
