"""Float64 references for the gradient penalties on the bag-of-embeddings model.

The penalised objective P(E, W, b) is written out with the hand-derived
gradients of fgm_reference.py; the step's gradient of P (second derivatives
included) is taken by central finite differences, independently of any
autodiff.
"""

import numpy as np

from tests import fgm_reference


def _occurrence_gradients(E, W, b, x, y, w):
    """dL/de for every token occurrence e = E[x[i, j]]: (batch, length, dim)."""
    batch, length = x.shape
    h = E[x].mean(axis=1)
    z = h @ W + b
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    dlogits = (p - np.eye(W.shape[1])[y]) * w[:, None] / batch
    dh = dlogits @ W.T
    return np.repeat(dh[:, None, :] / length, length, axis=1)


def penalized_loss(kind, strength, E, W, b, x, y, w):
    """The objective each penalty trains on, in float64."""
    w = np.ones(len(x)) if w is None else np.asarray(w, np.float64)
    loss, dE, dW, db = fgm_reference.loss_and_gradients(E, W, b, x, y, w)
    if kind == "occurrence":
        g = _occurrence_gradients(E, W, b, x, y, w)
        return loss + 0.5 * strength * np.sum(g**2)
    if kind == "row":
        return loss + 0.5 * strength * np.sum(dE**2)
    if kind == "parameter":
        return loss + strength * (np.sum(dE**2) + np.sum(dW**2) + np.sum(db**2))
    if kind == "none":
        return loss
    raise ValueError(kind)


def numeric_gradients(f, params, h=1e-5):
    """Central differences of f(*params) with respect to each array in params."""
    params = [np.asarray(p, np.float64) for p in params]
    gradients = []
    for k, value in enumerate(params):
        gradient = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            shifted = [p.copy() for p in params]
            shifted[k][index] += h
            up = f(*shifted)
            shifted[k][index] -= 2 * h
            gradient[index] = (up - f(*shifted)) / (2 * h)
        gradients.append(gradient)
    return gradients


def sgd_step(kind, strength, E, W, b, x, y, w, lr):
    """Returns (E, W, b) after one SGD step on the penalised objective."""

    def objective(E_, W_, b_):
        return penalized_loss(kind, strength, E_, W_, b_, x, y, w)

    gradients = numeric_gradients(objective, (E, W, b))
    return [p - lr * g for p, g in zip((E, W, b), gradients)]
