"""Random +-1 projections: one gradient instead of one per output.

For vectors a_1..a_K, E_eta ||sum_k eta_k a_k||^2 = sum_k ||a_k||^2 when the
eta_k are independent signs (+1 or -1 with probability 1/2): the cross terms
vanish because E[eta_j eta_k] = 0 for j != k. So the squared norm of ONE
gradient, of sum_k eta_k c_k g_k with the weights c_k held constant, is an
unbiased estimate of sum_k c_k^2 ||grad g_k||^2 -- the quantity the noise and
input-gradient penalties need -- at the cost of one extra backward pass.
"""

from keras_reg._compat import keras
from keras_reg.training.core.divergence import log_probabilities

ops = keras.ops


def signs(shape, seed, step=None):
    """Returns independent +-1 values (float32) of ``shape`` (batch first).

    With ``step``, the rows of a draw over the global batch that belong to
    this replica (`keras_reg.backend.base.Step.draw_per_example`).
    """

    def draw(shape):
        return ops.cast(keras.random.randint(shape, 0, 2, seed=seed), "float32") * 2 - 1

    return draw(shape) if step is None else step.draw_per_example(draw, shape)


def fisher_projection(y_pred, kind, seed, sample_weight=None, step=None):
    """Returns sum_{i,k} eta_ik sqrt(w_i p_ik) log p_ik, sqrt(w p) held constant.

    Its gradient's squared norm estimates sum_i w_i sum_k p_ik ||grad log p_ik||^2,
    the trace of the Fisher information of the predicted distribution (the
    Gauss-Newton curvature of a cross-entropy loss, whatever the label).

    Args:
        y_pred: Class probabilities or logits (batch first, classes last).
        kind: ``"probabilities"`` or ``"logits"``.
        seed: Seed of the signs.
        sample_weight: Optional per-example weights.
        step: The step in progress, for draws over the global batch (`signs`).
    """
    log_p = log_probabilities(y_pred, kind)
    weight = ops.exp(log_p)
    if sample_weight is not None:
        weight = weight * _per_example(sample_weight, log_p)
    weight = ops.stop_gradient(ops.sqrt(weight))
    return ops.sum(signs(ops.shape(log_p), seed, step) * weight * log_p)


def squared_error_projection(y_pred, seed, sample_weight=None, step=None):
    """Returns sum_{i,k} eta_ik sqrt(2 w_i / K) f_ik for K outputs per example.

    Its gradient's squared norm estimates sum_i w_i (2 / K) sum_k ||grad f_ik||^2,
    the Gauss-Newton curvature of Keras's mean squared error (a mean over the
    last axis); exact (no sign noise) for one output per example.
    """
    y_pred = ops.cast(y_pred, "float32")
    units = y_pred.shape[-1] if len(y_pred.shape) > 1 else 1
    weight = ops.full(ops.shape(y_pred), 2.0 / units)
    if sample_weight is not None:
        weight = weight * _per_example(sample_weight, y_pred)
    weight = ops.stop_gradient(ops.sqrt(weight))
    return ops.sum(signs(ops.shape(y_pred), seed, step) * weight * y_pred)


def output_projection(y_pred, seed, step=None):
    """Returns sum_{i,k} eta_ik f_ik; exactly sum_i f_i for one output per example.

    Its gradient's squared norm per example estimates the squared Frobenius
    norm of that example's Jacobian.
    """
    y_pred = ops.cast(y_pred, "float32")
    if len(y_pred.shape) == 1 or y_pred.shape[-1] == 1:
        return ops.sum(y_pred)
    return ops.sum(signs(ops.shape(y_pred), seed, step) * y_pred)


def _per_example(sample_weight, like):
    """Sample weights (batch,) broadcast against ``like`` (batch, ...)."""
    weight = ops.cast(ops.reshape(sample_weight, (-1,)), "float32")
    return ops.reshape(weight, (-1,) + (1,) * (len(like.shape) - 1))
