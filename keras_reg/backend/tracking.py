"""What ``fit`` logs during a regularised step (Keras 3).

A regulariser's own terms appear in ``fit``'s logs as metrics; the compiled
loss's own trackers count only the step's clean pass.

A ``keras.metrics.Mean`` assigned as an attribute of the model is tracked by
it: ``model.metrics`` lists it, so ``fit`` resets it every epoch and reports
its result beside ``loss``, and on JAX its variables are part of the train
step's state (updates made inside ``compute_loss`` are kept). Removing it uses
Keras's tracker, since deleting the attribute does not untrack it.
"""

import contextlib

from keras_reg._compat import keras
from keras_reg.backend import keras_internals

_PREFIX = "_keras_reg_term_"


class LoggedTerm(keras.metrics.Mean):
    """The running mean of a term a regulariser logs (``step.log``).

    It is one of ``model.metrics``, so a custom ``train_step`` written as in
    the Keras guide updates it with ``update_state(y, y_pred)`` (as every
    metric but the loss tracker): that call is not a term's value, and is
    ignored; the term is still in the returned logs.
    """

    def update_state(self, values, *args, **kwargs):
        if args or kwargs:  # (y, y_pred[, sample_weight]) from a metrics loop
            return None
        return super().update_state(values)


def attach_metric(model, name):
    """Attaches a ``Mean`` metric called ``name`` to ``model`` and returns it.

    Args:
        model: The model being trained.
        name: The log key, e.g. ``'vat_loss'``.
    """
    metric = LoggedTerm(name=name)
    # A built Keras 3 layer locks its tracker against new state: a metric is
    # not model state (it is never saved), so let this one in.
    with keras_internals.tracker_unlocked(model):
        setattr(model, _PREFIX + name, metric)
    return metric


class CarriedState(keras.metrics.Metric):
    """A variable (float32 unless said) kept from one training step to the next.

    Attached to the model as a metric: on JAX the train step then threads its
    value through its state (metric variables are part of it), on TensorFlow
    and PyTorch it is an ordinary variable. It is not one of the model's
    weights (metrics are not). ``fit``'s reset of the metrics at every epoch
    leaves it alone, and it adds nothing to the logs.

    Attributes:
        carried: The variable, zero when attached.
    """

    def __init__(self, name, shape, dtype="float32"):
        super().__init__(name=name, dtype="float32")
        self.carried = self.add_variable(
            shape=tuple(shape), initializer="zeros", dtype=dtype, name=name
        )

    def update_state(self, value, *args, **kwargs):
        if args or kwargs:  # (y, y_pred) from a guide's loop over the metrics
            return
        self.carried.assign(value)

    def reset_state(self):
        """Keeps the value: the state outlives the epoch."""

    def result(self):
        return {}


def attach_state(model, name, shape, dtype="float32"):
    """Attaches a `CarriedState` of ``shape`` to ``model`` and returns it."""
    state = CarriedState("state_" + name, shape, dtype)
    with keras_internals.tracker_unlocked(model):
        setattr(model, _PREFIX + "state_" + name, state)
    return state


def detach_state(model, state):
    """Removes a state attached by `attach_state`."""
    detach_metric(model, state)


def detach_metric(model, metric):
    """Removes a metric attached by `attach_metric` from ``model``."""
    keras_internals.untrack(model, metric)
    attribute = _PREFIX + metric.name
    if attribute in model.__dict__:
        object.__delattr__(model, attribute)


def _loss_trackers(model):
    """Returns the per-output loss trackers of Keras 3's compiled loss."""
    compiled = keras_internals.compile_loss(model)
    return list(getattr(compiled, "metrics", None) or [])


@contextlib.contextmanager
def quiet_loss_metrics(model, keep_per_output=False):
    """Keeps the block's ``compute_loss`` calls from updating the loss trackers.

    An extra forward pass (FGM's perturbed pass) calls the compiled loss again;
    its per-output losses must not be averaged into the logs of the clean pass.
    Keras 3 updates the total ``loss`` tracker in its train step, with the loss
    the regulariser returns, so only the per-output trackers are concerned.

    Args:
        model: The model being trained.
        keep_per_output: Leave the per-output trackers alone (the clean pass).
    """
    trackers = [] if keep_per_output else _loss_trackers(model)
    with quiet(trackers):
        yield


@contextlib.contextmanager
def quiet(metrics):
    """Makes ``update_state`` of each metric a no-op inside the block."""
    with updates_replaced(metrics, lambda metric: _no_update):
        yield


@contextlib.contextmanager
def updates_replaced(metrics, replacement):
    """Replaces each metric's ``update_state`` by ``replacement(metric)`` in the block.

    tf_keras metrics hold a wrapped ``update_state`` in their instance
    dictionary: it is put back as it was.

    Args:
        metrics: Keras 3 or tf_keras metrics.
        replacement: ``replacement(metric) -> update_state function``.
    """
    saved = [metric.__dict__.get("update_state") for metric in metrics]
    for metric in metrics:
        object.__setattr__(metric, "update_state", replacement(metric))
    try:
        yield
    finally:
        for metric, own in zip(metrics, saved):
            if own is None:
                object.__delattr__(metric, "update_state")
            else:
                object.__setattr__(metric, "update_state", own)


def _no_update(*args, **kwargs):
    del args, kwargs


def report_loss(model, loss, x):
    """Records the optimized loss in ``fit``'s logs (Keras 3's step does it)."""
    del model, loss, x
