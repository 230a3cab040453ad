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

from keras_reg.backend import tensorflow, tracking
from keras_reg.backend.tensorflow import step_scope

__all__ = [
    "Step",
    "attach_metric",
    "detach_metric",
    "quiet_loss_metrics",
    "report_loss",
    "step_scope",
]


def attach_metric(model, name):
    """Attaches a tf_keras ``Mean`` called ``name`` to ``model`` (see tracking.py)."""
    import tf_keras

    return tracking.attach_metric(model, name, tf_keras.metrics.Mean)


detach_metric = tracking.detach_metric


def _total_loss_tracker(model):
    return getattr(getattr(model, "compiled_loss", None), "_total_loss_mean", None)


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
        metrics = [m for m in metrics if m is _total_loss_tracker(model)]
    with tracking.quiet(metrics):
        yield


def report_loss(model, loss, x):
    """Adds the loss being optimized to the ``loss`` that ``fit`` shows."""
    tracker = _total_loss_tracker(model)
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
