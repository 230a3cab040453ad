"""NumPy reference for one VAT step, with gradients by central differences (float64).

Models (as in tests/models.py): a bag of embeddings, q = softmax(mean(E[x]) W + b),
perturbed at the embedding output ("output") or matrix ("matrix"); and a dense
softmax classifier q = softmax(x W + b), perturbed at its input ("input").
"""

import numpy as np


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def probabilities(params, x, site, delta=None):
    if site == "input":
        W, b = params
        return _softmax((x if delta is None else x + delta) @ W + b)
    E, W, b = params
    if site == "matrix" and delta is not None:
        E = E + delta
    e = E[x]
    if site == "output" and delta is not None:
        e = e + delta
    return _softmax(e.mean(axis=1) @ W + b)


def kl(p, q):
    return np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=-1))


def entropy(p):
    return -np.mean(np.sum(p * np.log(p), axis=-1))


def cross_entropy(q, y, w):
    return np.sum(w * -np.log(q[np.arange(len(y)), y])) / len(y)


def numerical_gradient(function, array, step=1e-6):
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + step
        up = function()
        array[index] = saved - step
        down = function()
        array[index] = saved
        grad[index] = (up - down) / (2 * step)
    return grad


def normalize(d, norm):
    if norm == "batch":
        return d / np.linalg.norm(d)
    axes = tuple(range(1, d.ndim))
    return d / np.sqrt(np.sum(d**2, axis=axes, keepdims=True))


def vat_sgd_step(
    params,
    x,
    y,
    w,
    d0,
    site,
    lr,
    epsilon,
    xi,
    iters,
    weight,
    norm,
    supervised=True,
    entropy_weight=0.0,
):
    """Returns the parameters after one SGD step on supervised + weight * VAT."""
    params = [np.asarray(p, np.float64).copy() for p in params]
    p = probabilities(params, x, site)
    d = np.asarray(d0, np.float64).copy()
    for _ in range(iters):
        probe = xi * normalize(d, norm)
        d = numerical_gradient(
            lambda probe=probe: kl(p, probabilities(params, x, site, probe)), probe
        )
    r = epsilon * normalize(d, norm)

    def total():
        loss = weight * kl(p, probabilities(params, x, site, r))
        if supervised:
            loss += cross_entropy(probabilities(params, x, site), y, w)
        return loss + entropy_weight * entropy(probabilities(params, x, site))

    grads = [numerical_gradient(total, q) for q in params]
    return [q - lr * g for q, g in zip(params, grads)]


def fixed_direction(shape):
    """The deterministic stand-in for d ~ N(0, I) used by the tests."""
    n = int(np.prod(shape))
    return np.cos(np.arange(n) * 1.7 + 0.3).reshape(shape)


def fixed_uniform(shape):
    """The stand-in for a uniform draw in [0, 1] (tests/fixed_noise.py's)."""
    n = int(np.prod(shape))
    return (0.5 + 0.5 * np.sin(np.arange(n) * 2.3 + 0.1)).reshape(shape)


def initial_direction(site, x, vocab, dim):
    """The d0 keras_reg starts from under the fixed noise, as an array for `site`.

    For ``"matrix"`` keras_reg draws one row per token occurrence and uses slot k
    for the k-th smallest distinct id; the reference places it at that row of a
    ``vocab x dim`` matrix (the other rows are zero).
    """
    if site == "input":
        return fixed_direction(x.shape)
    if site == "output":
        return fixed_direction((*x.shape, dim))
    slots = fixed_direction((x.size, dim))
    d0 = np.zeros((vocab, dim))
    for slot, token in enumerate(np.unique(x)):
        d0[token] = slots[slot]
    return d0


def free_vat_sgd_step(params, x, y, w, x_u, d, site, lr, epsilon, weight, norm):
    """One SGD step of FreeVAT given the carried direction ``d`` of ``x_u``.

    Returns ``(parameters after the step, the direction it carries)``: the
    gradient of KL(p || model at r) with respect to r, at the old parameters.
    """
    params = [np.asarray(q, np.float64).copy() for q in params]
    p = probabilities(params, x_u, site)
    r = epsilon * normalize(np.asarray(d, np.float64), norm)

    def vat():
        return kl(p, probabilities(params, x_u, site, r))

    def total():
        return weight * vat() + cross_entropy(probabilities(params, x, site), y, w)

    carried = numerical_gradient(vat, r)
    grads = [numerical_gradient(total, q) for q in params]
    return [q - lr * g for q, g in zip(params, grads)], carried


def free_vat_matrix_two_steps(params, x, y, w, first, second, lr, epsilon, weight):
    """Parameters after two FreeVAT steps on matrix rows (unlabelled draws given).

    Step 1 starts from `initial_direction`; step 2 carries step 1's rows of the
    tokens both draws share (none for the others), times the one sign drawn
    (`fixed_uniform`'s stand-in: -1 where it is at least 0.5).
    """
    vocab, dim = np.shape(params[0])
    d0 = initial_direction("matrix", first, vocab, dim)
    params, carried = free_vat_sgd_step(
        params, x, y, w, first, d0, "matrix", lr, epsilon, weight, "batch"
    )
    shared = np.zeros((vocab, 1))
    shared[np.intersect1d(first, second)] = 1.0
    sign = 1.0 if fixed_uniform(()) < 0.5 else -1.0
    expected, _ = free_vat_sgd_step(
        params,
        x,
        y,
        w,
        second,
        carried * shared * sign,
        "matrix",
        lr,
        epsilon,
        weight,
        "batch",
    )
    return expected
