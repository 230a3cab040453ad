"""The one place that installs a regularised training step on a compiled model.

Installing sets two instance attributes on the model, leaving its class alone:

- ``train_step``: enters the backend's step scope (a gradient tape that
  records the forward pass on TensorFlow; the step's state on JAX), then runs
  the model's own ``train_step``;
- ``compute_loss``: computes the model's own loss, then, once per training step,
  hands it to the regulariser, whose returned loss is what the step optimizes.

Everything else -- metrics, sample weights, loss scaling, the optimizer,
distribution -- stays the framework's own code. The cached train function is
reset so that the next ``fit`` traces the new step (Keras 3 binds
``train_step`` when it builds the function).
"""

import inspect
import types
import warnings

from keras_reg import backend

_ATTRIBUTES = ("train_step", "compute_loss")


class _Installation:
    """The regulariser installed on one model, and what to restore on removal."""

    def __init__(self, model, regularizer):
        self.model = model
        self.regularizer = regularizer
        self.backend = backend.for_model(model)
        self.saved = {name: model.__dict__.get(name) for name in _ATTRIBUTES}
        self.plain_train_step = self._plain("train_step")
        self.plain_compute_loss = self._plain("compute_loss")
        self.loss_parameters = list(
            inspect.signature(self.plain_compute_loss).parameters
        )
        self.recorder = None

    def _plain(self, name):
        """Returns the model's own method: an instance override, else its class's."""
        if self.saved[name] is not None:
            return self.saved[name]
        return types.MethodType(getattr(type(self.model), name), self.model)

    def train_step(self, *args, **kwargs):
        variables = self.regularizer.watched_variables(self.model)
        with self.backend.step_scope(self.model, variables, args) as recorder:
            self.recorder = recorder
            try:
                return self.plain_train_step(*args, **kwargs)
            finally:
                self.recorder = None

    def compute_loss(self, *args, **kwargs):
        recorder, self.recorder = self.recorder, None
        if recorder is None or not kwargs.get("training", True):
            # Evaluation, predict, or a second call in one step.
            return self.plain_compute_loss(*args, **kwargs)
        bound = dict(zip(self.loss_parameters, args), **kwargs)
        loss = self._clean_loss(args, kwargs)
        step = self.backend.Step(
            model=self.model,
            recorder=recorder,
            x=bound.get("x"),
            y=bound.get("y"),
            sample_weight=bound.get("sample_weight"),
            loss=loss,
            compute_loss=self.plain_compute_loss,
        )
        return self.regularizer.regularized_loss(step)

    def _clean_loss(self, args, kwargs):
        """The model's own loss; only its added losses if compiled without one.

        A model compiled with no loss (the source's VAT set-up: unlabelled data
        and the regulariser's loss only) has nothing for Keras to compute.
        """
        if getattr(self.model, "loss", None) is None:
            losses = list(self.model.losses)
            return sum(losses) if losses else 0.0
        return self.plain_compute_loss(*args, **kwargs)


def _check_compiled(model):
    if getattr(model, "optimizer", None) is None:
        raise ValueError(
            f"Model {getattr(model, 'name', model)!r} is not compiled. Call "
            "`model.compile(optimizer=..., loss=...)` before installing a "
            "keras_reg regulariser."
        )


def _reset_train_function(model):
    if hasattr(model, "train_function"):
        model.train_function = None


def installed_regularizer(model):
    """Returns the regulariser installed on ``model``, or None."""
    installation = getattr(model.__dict__.get("train_step"), "__self__", None)
    if isinstance(installation, _Installation):
        return installation.regularizer
    return None


def install(model, regularizer):
    """Installs ``regularizer`` on a compiled ``model`` and returns the model.

    A regulariser already installed is replaced (with a warning), never stacked.

    Args:
        model: A compiled Keras 3 or tf_keras model.
        regularizer: A `keras_reg.training.TrainingRegularizer`.

    Returns:
        ``model``, now training with ``regularizer``.

    Raises:
        ValueError: The model is not compiled, or does not suit the regulariser.
    """
    _check_compiled(model)
    regularizer.validate(model)
    previous = installed_regularizer(model)
    if previous is not None:
        warnings.warn(
            f"Replacing {previous!r} on model {model.name!r} with {regularizer!r}.",
            stacklevel=3,
        )
        remove(model)
    installation = _Installation(model, regularizer)
    for name in _ATTRIBUTES:
        setattr(model, name, getattr(installation, name))
    _reset_train_function(model)
    return model


def remove(model):
    """Removes the installed regulariser, restoring the model's own step.

    Args:
        model: A model, with or without a regulariser installed.

    Returns:
        ``model``.
    """
    installation = getattr(model.__dict__.get("train_step"), "__self__", None)
    if not isinstance(installation, _Installation):
        return model
    for name, original in installation.saved.items():
        if original is None:
            delattr(model, name)
        else:
            setattr(model, name, original)
    _reset_train_function(model)
    return model
