"""Spectral norms of weight tensors in ``keras.ops``, backend-neutral.

The maths shared by `constraints.SpectralNorm`,
`regularizers.SpectralNormRegularizer` and `layers.SpectralNormalization`.

A weight of shape ``(..., n)`` is read as the matrix ``reshape(w, (-1, n))``:
a ``Dense`` kernel ``(in, out)`` as it is, a convolution kernel
``(kh, kw, in, out)`` as ``(kh * kw * in, out)``, the reshaping of Miyato et al.
(2018), which bounds each output position's map but is not the operator norm
of the convolution itself.

Two ways to get sigma, the largest singular value:

* `power_iteration`: the paper's persistent-vector method. One step costs two
  matrix-vector products; the estimate is a lower bound that is only as good as
  the vector carried over from earlier steps.
* `spectral_norm_bounds`: no state. The Gram matrix ``G = M^T M`` of the smaller
  side is squared ``k`` times (trace-normalised, so nothing overflows). This is
  power iteration with ``2^k`` steps done in ``k`` matrix products, and it also
  gives a certified upper bound: ``trace(G^p)^(1/p) >= lambda_max(G)`` for any
  ``p``, and it exceeds it by at most a factor ``d^(1/p)`` (``d`` = the Gram
  size), so ``k`` is chosen from ``d`` to make that factor ``<= 1 + tolerance``.
  Cost ``k * d^3`` multiply-adds with ``d = min(m, n)``, matmuls only (jit and
  XLA friendly), the same numbers on every backend from the same weights.
"""

import math

import numpy as np

from keras_reg._compat import keras

ops = keras.ops

_TINY = 1e-30
_EPSILON = 1e-12


def as_matrix(weight):
    """Returns ``weight`` reshaped to ``(-1, weight.shape[-1])``."""
    weight = ops.convert_to_tensor(weight)
    if len(weight.shape) < 2:
        raise ValueError(
            "A spectral norm needs a weight with at least 2 dimensions "
            f"(a matrix or a kernel); received shape {tuple(weight.shape)}."
        )
    return ops.reshape(weight, (-1, weight.shape[-1]))


def at_least_float32(x):
    """Computes in float32 at least (float16/bfloat16 weights are upcast)."""
    if keras.backend.standardize_dtype(x.dtype) in ("float16", "bfloat16"):
        return ops.cast(x, "float32")
    return x


def l2_normalize(x):
    """Returns ``x / max(||x||, 1e-12)`` over all its entries."""
    return x / ops.maximum(ops.sqrt(ops.sum(ops.square(x))), _EPSILON)


def initial_vector(size):
    """A fixed, generic unit vector of length ``size`` (a NumPy array).

    Drawn once from a seeded NumPy generator, so it is the same on every
    backend (Keras' random ops are not) and almost surely not orthogonal to the
    top singular vector, as a constant vector could be for structured weights.
    """
    vector = np.random.default_rng(20180216).normal(size=size)
    return (vector / np.linalg.norm(vector)).astype("float32")


def power_iteration(matrix, u, iterations):
    """Runs ``iterations`` steps of power iteration on ``matrix`` (m, n).

    Args:
        matrix: The weight as an ``(m, n)`` matrix.
        u: The current estimate of the top right singular vector, shape (n,).
        iterations: Number of steps (>= 1).

    Returns:
        ``(u, v)``: the new right and left vectors, gradients stopped, so that
        ``sigma = v^T matrix u`` is the estimate of Miyato et al., whose gradient
        with respect to the matrix is ``v u^T``.
    """
    matrix = ops.stop_gradient(ops.convert_to_tensor(matrix))
    u = ops.stop_gradient(ops.cast(u, matrix.dtype))
    v = None
    for _ in range(iterations):
        v = l2_normalize(ops.matmul(matrix, u))
        u = l2_normalize(ops.matmul(ops.transpose(matrix), v))
    return ops.stop_gradient(u), ops.stop_gradient(v)


def sigma_from_vectors(matrix, u, v):
    """Returns ``v^T matrix u`` (differentiable in ``matrix``)."""
    return ops.sum(v * ops.matmul(matrix, u))


def squarings_for(size, tolerance):
    """The number of Gram squarings k with ``size^(1 / 2^(k+1)) <= 1 + tolerance``.

    ``2^k`` is the power of the Gram matrix; its root ``1 / 2^(k+1)`` on sigma.
    """
    if size <= 1:
        return 1
    needed = math.log(size) / math.log1p(tolerance)
    return max(1, math.ceil(math.log2(needed)) - 1)


def spectral_norm_bounds(weight, tolerance=1e-3):
    """Returns ``(lower, upper)`` bounds on the largest singular value.

    ``lower = ||M u||`` for the unit vector ``u`` that repeated squaring of the
    Gram matrix leaves (``u`` held constant, so ``lower`` is differentiable with
    gradient ``v u^T``, as for power iteration); ``upper = trace(G^p)^(1/(2p))``.
    In exact arithmetic ``lower <= sigma <= upper <= sigma * (1 + tolerance)``;
    ``lower`` equals sigma to rounding unless singular values lie within a
    relative ``~1 / 2^k`` below the top one; even then its deficit is at most
    ``1 / (4 e 2^k)`` (``k >= 9``: 2e-4) times the start vector's weight on them
    relative to its weight on the top vector.

    Args:
        weight: A weight tensor with at least 2 dimensions (see `as_matrix`).
        tolerance: Largest relative over-estimate allowed for ``upper``.

    Returns:
        Two scalar tensors (float32 at least).
    """
    matrix = at_least_float32(as_matrix(weight))
    rows, cols = matrix.shape
    if rows is not None and cols is not None and rows < cols:
        matrix = ops.transpose(matrix)  # sigma(M) = sigma(M^T): Gram of size min
    size = matrix.shape[1]
    # Scale out the Frobenius norm first: G then has trace 1 and no power of it
    # overflows; sigma(W) = ||W||_F * sigma(W / ||W||_F). The largest entry is
    # divided out before squaring, so tiny weights do not underflow to a zero
    # norm (which would blow the scaled matrix up); W = 0 stays 0.
    constant = ops.stop_gradient(matrix)
    peak = ops.maximum(ops.max(ops.abs(constant)), _TINY)
    frobenius = peak * ops.sqrt(ops.sum(ops.square(constant / peak)))
    scaled = constant / ops.maximum(frobenius, _TINY)
    power = ops.matmul(ops.transpose(scaled), scaled)
    log_lambda = 0.0
    for j in range(1, squarings_for(size, tolerance) + 1):
        power = ops.matmul(power, power)
        trace = ops.maximum(ops.trace(power), _TINY)
        power = power / trace
        log_lambda = log_lambda + ops.log(trace) / 2.0**j
    upper = frobenius * ops.exp(0.5 * log_lambda)
    start = ops.convert_to_tensor(initial_vector(size), dtype=power.dtype)
    u = ops.stop_gradient(l2_normalize(ops.matmul(power, start)))
    lower = ops.sqrt(ops.maximum(ops.sum(ops.square(ops.matmul(matrix, u))), _TINY))
    return lower, upper
