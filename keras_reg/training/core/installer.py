"""The one place that installs a regularised training step on a compiled model.

Installing sets three instance attributes on the model, leaving its class alone:

- ``train_step``: enters the backend's step scope (a gradient tape that
  records the forward pass on TensorFlow; the step's state on JAX), then runs
  the model's own ``train_step``;
- ``compute_loss``: computes the model's own loss, then, once per training step,
  hands it to the regulariser, whose returned loss is what the step optimizes;
- ``get_metrics_result``: the model's own, without the regulariser's logged
  terms outside a training step (``evaluate`` does not report them).

Everything else -- metrics, sample weights, loss scaling, the optimizer,
distribution -- stays the framework's own code. The terms a regulariser logs
(`TrainingRegularizer.logged_terms`, e.g. ``vat_loss``) are ``Mean`` metrics
attached to the model, so they appear in ``fit``'s logs and progress bar and
are reset every epoch like the model's own. The cached train function is reset
so that the next ``fit`` traces the new step (Keras 3 binds ``train_step``
when it builds the function).

A model's own ``train_step`` may be custom: it must call
``self.compute_loss(...)`` (the Keras guide's pattern, with or without ``x``:
a missing ``x`` is taken from the step's data); one that never does is
refused at its first step, since the regulariser would silently not run.
"""

import inspect
import threading
import types
import warnings

import numpy as np

from keras_reg import backend
from keras_reg._compat import keras
from keras_reg.backend import collective_clash, keras_internals
from keras_reg.training.core.composition import Composition, as_regularizer
from keras_reg.training.core.layer_calls import check_called, recorded_calls
from keras_reg.training.core.regularizer import TrainingRegularizer
from keras_reg.training.core.schedule_check import ScheduleCheck
from keras_reg.validation import has_loss

_ATTRIBUTES = ("train_step", "compute_loss", "get_metrics_result")
# Keras's JAX trainer: returns the forward pass's output with the loss.
_FORWARD = keras_internals.JAX_FORWARD


def _state_spec(spec):
    """``(shape, dtype)`` of a `carried_state` entry: a shape or (shape, dtype)."""
    if len(spec) == 2 and isinstance(spec[0], (tuple, list)):
        return tuple(spec[0]), spec[1]
    return tuple(spec), "float32"


class _Installation:
    """The regulariser installed on one model, and what to restore on removal."""

    def __init__(self, model, regularizer):
        self.model = model
        self.regularizer = regularizer
        self.backend = backend.for_model(model)
        self.saved = {name: model.__dict__.get(name) for name in self.attributes()}
        self.plain_train_step = self._plain("train_step")
        self.plain_compute_loss = self._plain("compute_loss")
        self.plain_get_metrics_result = self._plain("get_metrics_result")
        if _FORWARD in self.saved:
            self.plain_compute_loss_and_updates = self._plain(_FORWARD)
        self.loss_parameters = list(
            inspect.signature(self.plain_compute_loss).parameters
        )
        self.metrics = {
            name: self.backend.attach_metric(model, name)
            for name in regularizer.logged_terms()
        }
        self.states = {
            name: self.backend.attach_state(model, name, *_state_spec(spec))
            for name, spec in regularizer.carried_state(model).items()
        }
        # What the host checks already warned about (once per installation:
        # a reinstalled, copied or unpickled regulariser warns again).
        self.warned = set()
        self.schedule_check = ScheduleCheck(
            regularizer, lambda: _iterations(model), self.warned
        )
        # Per thread: under tf.distribute.MirroredStrategy each replica traces
        # its step in a thread of its own, on this one installation.
        self._local = threading.local()

    recorder = property(
        lambda self: getattr(self._local, "recorder", None),
        lambda self, value: setattr(self._local, "recorder", value),
        doc="The step scope's recorder until compute_loss takes it (per thread).",
    )
    step = property(
        lambda self: getattr(self._local, "step", None),
        lambda self, value: setattr(self._local, "step", value),
        doc="The regulariser's Step of the training step in progress (per thread).",
    )
    data = property(
        lambda self: getattr(self._local, "data", None),
        lambda self, value: setattr(self._local, "data", value),
        doc="The batch of the step in progress (per thread).",
    )
    calls = property(
        lambda self: getattr(self._local, "calls", None),
        lambda self, value: setattr(self._local, "calls", value),
        doc="The required layers called so far in the step's pass (per thread).",
    )
    training = property(
        lambda self: getattr(self._local, "training", False),
        lambda self, value: setattr(self._local, "training", value),
        doc="Whether a training step is in progress (per thread).",
    )

    def attributes(self):
        """The model's methods this installation overrides."""
        names = _ATTRIBUTES
        if hasattr(type(self.model), _FORWARD):
            names += (_FORWARD,)
        if collective_clash.several_replicas(self.model):
            names += ("make_train_function",)
        return names

    def make_train_function(self, *args, **kwargs):
        """The model's own, its train function explaining a collective clash.

        Only under a strategy with several replicas, see
        `keras_reg.backend.collective_clash`.
        """
        self._plain("make_train_function")(*args, **kwargs)
        function = collective_clash.guarded(self.model.train_function, self.model)
        self.model.train_function = function
        return function

    def _plain(self, name):
        """Returns the model's own method: an instance override, else its class's."""
        if self.saved[name] is not None:
            return self.saved[name]
        return types.MethodType(getattr(type(self.model), name), self.model)

    def detach(self):
        """Removes the logged-term metrics from the model."""
        for metric in self.metrics.values():
            self.backend.detach_metric(self.model, metric)
        for state in self.states.values():
            self.backend.detach_state(self.model, state)

    def train_step(self, *args, **kwargs):
        variables = self.regularizer.watched_variables(self.model)
        layers = self.regularizer.watched_outputs(self.model)
        # Keras's steps take the batch as their last positional argument:
        # train_step(data) on TensorFlow/torch, train_step(state, data) on JAX.
        self.data = kwargs.get("data", args[-1] if args else None)
        inputs = self.regularizer.watches_inputs(self.model)
        several = isinstance(self.regularizer, Composition)
        required = self.regularizer.required_layers(self.model)
        scope = self.backend.step_scope(
            self.model,
            variables,
            args,
            layers,
            inputs,
            several=several,
            lookups=self.regularizer.row_lookups(self.model),
        )
        with scope as recorder, recorded_calls(required) as calls:
            self.recorder = recorder
            self.calls = (required, calls)
            self.training = True
            try:
                logs = self.plain_train_step(*args, **kwargs)
                if self.recorder is not None:
                    raise RuntimeError(_NO_COMPUTE_LOSS.format(
                        model=self.model.name, regularizer=self.regularizer
                    ))
                return logs
            finally:
                self.recorder = None
                self.calls = None
                self.step = None
                self.data = None
                self.training = False

    def compute_loss_and_updates(self, *args, **kwargs):
        """Keras's JAX forward pass and loss, with the metrics' output swapped.

        Where the regulariser recomputed the clean pass (same inputs, weights
        and dropout mask) to differentiate it, its output replaces the
        trainer's ``y_pred`` for the metrics: the trainer's forward pass then
        feeds nothing and XLA removes it, where it would otherwise run twice
        whenever XLA fails to merge the two passes (measured: any model with
        LayerNormalization, see benchmarks/xla_cost.py).
        """
        self.step = None
        loss, aux = self.plain_compute_loss_and_updates(*args, **kwargs)
        step, self.step = self.step, None
        output = step.clean_output() if step is not None else None
        replaced = None
        if output is not None:
            replaced = keras_internals.jax_aux_with_output(aux, output)
        return loss, (aux if replaced is None else replaced)

    def get_metrics_result(self):
        # The logged terms belong to training: evaluate() does not report them.
        results = self.plain_get_metrics_result()
        if not self.training:
            for name in self.metrics:
                results.pop(name, None)
            if _on_host(self.model, self.states.values()):
                self._check_on_host()
        return results

    def _check_on_host(self):
        """Where fit reads the metrics at the end of an epoch: the host checks."""
        if self.schedule_check.strengths:
            self.schedule_check.check(_iterations(self.model))
        if self.states:
            self.regularizer.check_states(
                self.model,
                {n: _host_value(s.carried) for n, s in self.states.items()},
                self.warned,
            )

    def compute_loss(self, *args, **kwargs):
        recorder, self.recorder = self.recorder, None
        if recorder is None or not kwargs.get("training", True):
            # Evaluation, predict, or a second call in one step.
            return self.plain_compute_loss(*args, **kwargs)
        bound = dict(zip(self.loss_parameters, args), **kwargs)
        x = bound.get("x")
        if x is None and "x" in self.loss_parameters:
            # The Keras guide's custom train_step: compute_loss(y=, y_pred=).
            x = _inputs_of(self.data)
            bound["x"] = x
        if self.calls is not None:
            check_called(*self.calls, self.regularizer)
        loss = self._clean_loss(bound)
        step = self.backend.Step(
            model=self.model,
            recorder=recorder,
            x=x,
            y=bound.get("y"),
            sample_weight=bound.get("sample_weight"),
            y_pred=bound.get("y_pred"),
            loss=loss,
            compute_loss=self.plain_compute_loss,
            metrics=self.metrics,
            states={name: state.carried for name, state in self.states.items()},
        )
        total = self.regularizer.regularized_loss(step)
        self.step = step
        self.backend.report_loss(self.model, total, x)
        return total

    def _clean_loss(self, bound):
        """The model's own loss; only its added losses if compiled without one.

        A model compiled with no loss (the source's VAT set-up: unlabelled data
        and the regulariser's loss only) has nothing for Keras to compute.
        """
        if not has_loss(self.model):  # tf_keras: an empty loss container
            losses = list(self.model.losses)
            return sum(losses) if losses else 0.0
        with self.backend.quiet_loss_metrics(self.model, keep_per_output=True):
            return self.plain_compute_loss(**bound)


_NO_COMPUTE_LOSS = (
    "The train_step of model {model!r} never called `self.compute_loss(...)`, "
    "so {regularizer!r} could not act: keras_reg regularises the loss that "
    "`compute_loss` returns. In a custom train_step, compute the loss with "
    "`loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sw)` "
    "(Keras 3) or `self.compute_loss(x, y, y_pred, sw)` (tf_keras) instead of "
    "calling the loss function directly."
)


def _on_host(model, states):
    """Whether this code runs eagerly on the host, not in a traced step.

    ``get_metrics_result`` also runs inside an evaluation step (a
    ``tf.function``, or ``jax.jit``), where no value can be read.
    """
    framework = backend.framework(model)
    if framework in ("tensorflow", "tf_keras"):
        import tensorflow as tf

        return tf.executing_eagerly()
    if framework == "jax":
        import jax.core

        variables = [model.optimizer.iterations, *(s.carried for s in states)]
        return not any(
            isinstance(getattr(v, "value", v), jax.core.Tracer) for v in variables
        )
    return True


def _host_value(variable):
    """A variable's value as a NumPy array, read on the host."""
    value = variable.value if isinstance(variable, keras.Variable) else variable
    if type(value).__module__.startswith("tensorflow"):
        return np.asarray(value.numpy())  # a tf.Variable, maybe a MirroredVariable
    with warnings.catch_warnings():
        # Keras's torch conversion warns about NumPy 2's copy keyword.
        warnings.simplefilter("ignore", DeprecationWarning)
        return keras.ops.convert_to_numpy(value)


def _iterations(model):
    """The optimizer's step count, read on the host."""
    return int(_host_value(model.optimizer.iterations))


def _inputs_of(data):
    """Returns the inputs of a batch: ``x`` of ``(x,)``, ``(x, y)`` or ``(x, y, w)``."""
    if data is None:
        return None
    x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
    return x


def _check_model(model, action):
    if not hasattr(model, "train_step") or not hasattr(model, "compile"):
        raise TypeError(
            f"{action} expects a Keras model (keras.Model or tf_keras.Model) as "
            f"`model`, received model={model!r} ({type(model).__name__})."
        )


def _check_compiled(model):
    if getattr(model, "optimizer", None) is None:
        raise ValueError(
            f"Model {getattr(model, 'name', model)!r} is not compiled. Call "
            "`model.compile(optimizer=..., loss=...)` before installing a "
            "keras_reg regulariser."
        )


def check_regularizer(regularizer):
    """Returns ``regularizer`` as one regulariser instance, or raises a TypeError.

    A list (or tuple) of regularisers becomes a
    `keras_reg.training.core.composition.Composition` (a list of one: that
    regulariser).
    """
    regularizer = as_regularizer(regularizer)
    if isinstance(regularizer, TrainingRegularizer):
        return regularizer
    if isinstance(regularizer, type) and issubclass(regularizer, TrainingRegularizer):
        raise TypeError(
            f"Expected a regulariser instance, received the class "
            f"{regularizer.__name__}. Create one first, e.g. "
            f"`{regularizer.__name__}(...)` with its arguments."
        )
    raise TypeError(
        "Expected a keras_reg.TrainingRegularizer instance (e.g. "
        "`keras_reg.FGM('Embedding-Token', epsilon=1.0)`), received "
        f"{regularizer!r} ({type(regularizer).__name__})."
    )


def _check_framework_options(model):
    if backend.framework(model) == "torch" and getattr(model, "jit_compile", False):
        raise ValueError(
            f"Model {model.name!r} was compiled with jit_compile=True on the torch "
            "backend (torch.compile). keras_reg's regularised steps take extra "
            "gradients inside the step, which torch.compile does not trace. "
            "Compile with jit_compile=False (the torch default)."
        )


def _reset_train_function(model):
    if hasattr(model, "train_function"):
        model.train_function = None


def _installation(model):
    installation = getattr(model.__dict__.get("train_step"), "__self__", None)
    return installation if isinstance(installation, _Installation) else None


def installed_regularizer(model):
    """Returns the regulariser installed on ``model``, or None.

    Raises:
        TypeError: ``model`` is not a Keras model.
    """
    _check_model(model, "installed_regularizer()")
    installation = _installation(model)
    return installation.regularizer if installation is not None else None


def retrace(model):
    """Makes the next train function trace the installed step anew.

    For a regulariser whose step changes during ``fit`` (its
    `TrainingRegularizer.on_epoch_begin` returned True). Keras's JAX trainer
    re-jits ``model.train_step`` when the train function is remade, but
    ``jax.jit`` caches traces by function, and two bound methods of one object
    are equal: the old trace, with the old step, would be reused. The step
    gets a new function object here (same code, same installation), so the
    jitted function traces it again; TensorFlow and torch retrace anyway.

    Args:
        model: A model with a regulariser installed (else nothing happens).
    """
    installation = _installation(model)
    if installation is None:
        return
    method = _Installation.train_step
    fresh = types.FunctionType(
        method.__code__,
        method.__globals__,
        method.__name__,
        method.__defaults__,
        method.__closure__,
    )
    model.train_step = types.MethodType(fresh, installation)


def install(model, regularizer):
    """Installs ``regularizer`` on a compiled ``model`` and returns the model.

    A regulariser already installed is replaced (with a warning), never stacked
    with it; to train several together, pass them as a list (their terms add,
    see `keras_reg.Composition`).
    A regulariser is not saved with the model: after ``keras.models.load_model``
    install it again.

    Args:
        model: A compiled Keras 3 or tf_keras model.
        regularizer: A `keras_reg.training.TrainingRegularizer` instance, or
            a list of them (installed as one `keras_reg.Composition`).

    Returns:
        ``model``, now training with ``regularizer``.

    Raises:
        TypeError: ``model`` is not a Keras model, or ``regularizer`` is not a
            regulariser instance.
        ValueError: The model is not compiled, or does not suit the regulariser.
    """
    _check_model(model, "install_regularizer()")
    regularizer = check_regularizer(regularizer)
    _check_compiled(model)
    _check_framework_options(model)
    regularizer.validate(model)
    previous = installed_regularizer(model)
    if previous is not None:
        warnings.warn(
            f"Replacing {previous!r} on model {model.name!r} with {regularizer!r}.",
            stacklevel=3,
        )
        remove(model)
    installation = _Installation(model, regularizer)
    for name in installation.attributes():
        setattr(model, name, getattr(installation, name))
    _reset_train_function(model)
    return model


def remove(model):
    """Removes the installed regulariser, restoring the model's own step.

    Args:
        model: A model, with or without a regulariser installed.

    Returns:
        ``model``.

    Raises:
        TypeError: ``model`` is not a Keras model.
    """
    _check_model(model, "remove_regularization()")
    installation = _installation(model)
    if installation is None:
        return model
    for name, original in installation.saved.items():
        if original is None:
            if name in model.__dict__:  # a callback may have removed its own
                delattr(model, name)
        else:
            setattr(model, name, original)
    installation.detach()
    _reset_train_function(model)
    return model
