"""NumPy references for SAM / ASAM and AWP steps on the bag-of-embeddings model.

The model and its gradients are those of `tests.fgm_reference` (weights E, W, b;
E and W have two axes, b is a bias). One SGD step applies to (E, W, b) the
gradient of the loss at (E, W, b) + e, with e as each paper defines it.
"""

import numpy as np

from tests.fgm_reference import loss_and_gradients


def sam_perturbation(E, W, b, x, y, w, rho, adaptive=False, eta=0.01):
    """Returns e = rho T^2 g / ||T g|| (T = 1, or |w| + eta except for b)."""
    _, *g = loss_and_gradients(E, W, b, x, y, w)
    if adaptive:
        t = [np.abs(np.float64(E)) + eta, np.abs(np.float64(W)) + eta, np.ones_like(b)]
    else:
        t = [np.ones_like(a, dtype=np.float64) for a in (E, W, b)]
    norm = np.sqrt(sum(np.sum((ti * gi) ** 2) for ti, gi in zip(t, g)))
    return [rho * ti**2 * gi / norm for ti, gi in zip(t, g)]


def awp_perturbation(E, W, b, x, y, w, gamma):
    """Returns e_l = gamma ||w_l|| g_l / ||g_l|| for E and W; 0 for the bias."""
    _, gE, gW, _ = loss_and_gradients(E, W, b, x, y, w)
    return [
        gamma * np.linalg.norm(np.float64(E)) * gE / np.linalg.norm(gE),
        gamma * np.linalg.norm(np.float64(W)) * gW / np.linalg.norm(gW),
        np.zeros(b.shape),
    ]


def perturbed_sgd_step(E, W, b, x, y, w, lr, e):
    """Returns (E, W, b) after SGD with the gradient at (E, W, b) + e."""
    _, dE, dW, db = loss_and_gradients(E + e[0], W + e[1], b + e[2], x, y, w)
    return E - lr * dE, W - lr * dW, b - lr * db


def sharpness(E, W, b, x, y, w, e):
    """Returns L(w + e) - L(w)."""
    perturbed = loss_and_gradients(E + e[0], W + e[1], b + e[2], x, y, w)[0]
    return perturbed - loss_and_gradients(E, W, b, x, y, w)[0]
