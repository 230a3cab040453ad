"""TensorFlow backend for Keras 3 models (tf_keras reuses it: see tf_keras.py).

Gradients of the clean loss come from a `tf.GradientTape` opened around the
whole train step, so the step's own forward pass is reused (no second clean
forward). Perturbations are applied to the variable in place and undone by
copying the saved values back:

- sparse (the default in graph mode): the embedding gradient is a
  `tf.IndexedSlices` with one row per token occurrence; repeated rows are summed
  (``unique`` + ``unsorted_segment_sum``) so the maths equals the dense
  matrix's, and only the touched rows are perturbed, saved and restored;
- dense (under XLA, ``jit_compile=True``): ``unique`` and scatters are slow in
  XLA on CPU (measured 12x), so the gradient is densified and the whole matrix
  is saved and restored.
"""

import contextlib
from typing import NamedTuple

import tensorflow as tf

from keras_reg.backend import base


class SparseRows(NamedTuple):
    """Rows ``rows`` of a matrix holding ``values``; every other row is zero."""

    rows: tf.Tensor
    values: tf.Tensor


@contextlib.contextmanager
def step_scope(model, variables):
    """Records the train step's forward pass for gradients w.r.t. ``variables``.

    Args:
        model: The model being trained (unused here; part of the interface).
        variables: The variables regularisers will differentiate with respect to.

    Yields:
        The `tf.GradientTape` recording the step.
    """
    del model
    tape = tf.GradientTape(watch_accessed_variables=False)
    with tape:
        for variable in variables:
            tape.watch(raw_variable(variable))
        yield tape


def raw_variable(variable):
    """Returns the `tf.Variable` behind a Keras 3 variable."""
    value = getattr(variable, "value", variable)
    return value if isinstance(value, tf.Variable) else variable


def sum_repeated_rows(gradient):
    """Sums the rows of a `tf.IndexedSlices` that share an index.

    Args:
        gradient: A `tf.IndexedSlices` with one row per occurrence.

    Returns:
        `SparseRows` with unique ``rows``.
    """
    rows, position = tf.unique(gradient.indices)
    values = tf.math.unsorted_segment_sum(
        gradient.values, position, num_segments=tf.shape(rows)[0]
    )
    return SparseRows(rows, values)


def scale_to_norm(gradient, epsilon, dense):
    """Returns ``epsilon * gradient / ||gradient||`` as `SparseRows` or a tensor.

    Args:
        gradient: A `tf.Tensor` or `tf.IndexedSlices`.
        epsilon: The norm of the result.
        dense: Densify a sparse gradient (the faster choice under XLA).
    """
    if isinstance(gradient, tf.IndexedSlices) and not dense:
        summed = sum_repeated_rows(gradient)
        scale = tf.math.divide_no_nan(
            tf.cast(epsilon, summed.values.dtype), tf.norm(summed.values)
        )
        return SparseRows(summed.rows, summed.values * scale)
    gradient = tf.convert_to_tensor(gradient)
    scale = tf.math.divide_no_nan(tf.cast(epsilon, gradient.dtype), tf.norm(gradient))
    return gradient * scale


@contextlib.contextmanager
def perturbed(variable, perturbation):
    """Adds ``perturbation`` to ``variable`` in place, then restores it exactly.

    The saved values are copied back (never ``w + d - d``, which drifts by
    rounding). Reads taken inside the block keep their perturbed values after
    the restore (TF2 variables have value semantics), so gradients computed
    later through them are the gradients at the perturbed point.

    Args:
        variable: A `tf.Variable`.
        perturbation: `SparseRows` (only those rows change) or a dense tensor.
    """
    if isinstance(perturbation, SparseRows):
        saved = tf.gather(variable, perturbation.rows)
        variable.scatter_add(
            tf.IndexedSlices(
                tf.cast(perturbation.values, variable.dtype), perturbation.rows
            )
        )
        try:
            yield
        finally:
            variable.scatter_update(tf.IndexedSlices(saved, perturbation.rows))
    else:
        saved = tf.identity(variable)
        variable.assign_add(tf.cast(perturbation, variable.dtype))
        try:
            yield
        finally:
            variable.assign(saved)


class Step(base.Step):
    """`keras_reg.backend.base.Step` for Keras 3 models on TensorFlow."""

    def gradient(self, loss, variable):
        gradient = self._recorder.gradient(loss, raw_variable(variable))
        if gradient is None:
            raise ValueError(
                f"The training loss does not depend on variable {variable.name!r}: "
                "is the layer used by the model's forward pass?"
            )
        return gradient

    def scale_loss(self, loss):
        optimizer = self.model.optimizer
        return optimizer.scale_loss(loss) if optimizer is not None else loss

    def scale_to_norm(self, gradient, epsilon):
        return scale_to_norm(gradient, epsilon, dense=self._dense())

    def loss_with_perturbation(self, variable, perturbation):
        with perturbed(raw_variable(variable), perturbation):
            y_pred = self.model(self.x, training=True)
            return self._perturbed_loss(y_pred)

    def _dense(self):
        return bool(getattr(self.model, "jit_compile", False))

    def _perturbed_loss(self, y_pred):
        return self._compute_loss(
            self.x, self.y, y_pred, self.sample_weight, training=True
        )
