"""tf_keras (Keras 2) backend, e.g. for bert4keras models.

Same mechanics as the Keras 3 TensorFlow backend; only the framework's
spelling differs: its variables are plain `tf.Variable`s, its loss scaling is
``LossScaleOptimizer.get_scaled_loss``, and its ``compute_loss`` takes no
``training`` argument.
"""

from keras_reg.backend import tensorflow
from keras_reg.backend.tensorflow import step_scope

__all__ = ["Step", "step_scope"]


class Step(tensorflow.Step):
    """`keras_reg.backend.base.Step` for tf_keras models."""

    def scale_loss(self, loss):
        optimizer = self.model.optimizer
        scale = getattr(optimizer, "get_scaled_loss", None)
        return scale(loss) if scale is not None else loss

    def _embedding_class(self):
        import tf_keras

        return tf_keras.layers.Embedding

    def _perturbed_loss(self, y_pred):
        return self._compute_loss(self.x, self.y, y_pred, self.sample_weight)
