"""tf_keras (Keras 2) backend, e.g. for bert4keras models.

Same mechanics as the Keras 3 TensorFlow backend; only the framework's
spelling differs: its variables are plain `tf.Variable`s, its loss scaling is
``LossScaleOptimizer.get_scaled_loss``, its ``compute_loss`` takes no
``training`` argument, and its compiled loss (not the train step) updates the
``loss`` shown by ``fit``: every call of it would be averaged in, so the
step's own calls are kept quiet and the loss being optimized is reported once.
"""

import contextlib

import tensorflow as tf

from keras_reg.backend import keras_internals, tensorflow, tracking
from keras_reg.backend.tensorflow import step_scope

__all__ = [
    "Step",
    "attach_metric",
    "attach_state",
    "detach_metric",
    "detach_state",
    "quiet_loss_metrics",
    "report_loss",
    "step_scope",
]


def attach_metric(model, name):
    """Attaches a tf_keras ``Mean`` called ``name`` to ``model``'s metrics.

    Appended to the model's own metric list, which ``model.metrics`` (hence
    ``fit``'s logs and resets) reads: a tf_keras metric is a layer, and one
    assigned as an attribute would become a sub-layer whose variables join
    ``model.weights`` (and ``get_weights`` / checkpoints).
    """
    import tf_keras

    metric = tf_keras.metrics.Mean(name=name)
    keras_internals.tf_keras_metric_list(model).append(metric)
    return metric


def detach_metric(model, metric):
    """Removes a metric attached by `attach_metric`."""
    metrics = keras_internals.tf_keras_metric_list(model)
    metrics[:] = [m for m in metrics if m is not metric]


def attach_state(model, name, shape, dtype="float32"):
    """Attaches a carried state (see `keras_reg.backend.base.Step.state`).

    A tf_keras metric in the model's own metric list (never among its weights)
    whose reset at every epoch keeps the value; ``carried`` is its variable.
    """
    import tf_keras

    class CarriedState(tf_keras.metrics.Metric):
        def __init__(self):
            super().__init__(name="state_" + name, dtype="float32")
            self.carried = self.add_weight(
                "carried", shape=tuple(shape), initializer="zeros", dtype=dtype
            )

        def update_state(self, value):
            self.carried.assign(value)

        def reset_state(self):
            pass

        def result(self):
            return {}

    state = CarriedState()
    keras_internals.tf_keras_metric_list(model).append(state)
    return state


def detach_state(model, state):
    """Removes a state attached by `attach_state`."""
    detach_metric(model, state)


@contextlib.contextmanager
def quiet_loss_metrics(model, keep_per_output=False):
    """Keeps the block's compiled-loss calls from updating ``fit``'s loss logs.

    Args:
        model: The tf_keras model being trained.
        keep_per_output: Quiet only the total ``loss`` tracker (the clean pass
            still updates the per-output losses of a multi-output model).
    """
    compiled = getattr(model, "compiled_loss", None)
    metrics = list(getattr(compiled, "metrics", None) or [])
    if keep_per_output:
        total = keras_internals.tf_keras_total_loss_tracker(model)
        metrics = [m for m in metrics if m is total]
    with tracking.quiet(metrics):
        yield


def report_loss(model, loss, x):
    """Adds the loss being optimized to the ``loss`` that ``fit`` shows."""
    tracker = keras_internals.tf_keras_total_loss_tracker(model)
    if tracker is None:
        return
    batch = tf.shape(tf.nest.flatten(x)[0])[0]
    tracker.update_state(loss, sample_weight=batch)


class Step(tensorflow.Step):
    """`keras_reg.backend.base.Step` for tf_keras models."""

    def scale_loss(self, loss):
        optimizer = self.model.optimizer
        scale = getattr(optimizer, "get_scaled_loss", None)
        return scale(loss) if scale is not None else loss

    def _constant(self, value):
        return tf.stop_gradient(tf.cast(value, tf.float32))

    def _embedding_class(self):
        import tf_keras

        return tf_keras.layers.Embedding

    def _perturbed_loss(self, y_pred, x):
        with quiet_loss_metrics(self.model):
            return self._compute_loss(x, self.y, y_pred, self.sample_weight)
