"""NumPy references for PGD, FreeLB and FreeFGM on the bag-of-embeddings model.

The model and loss are fgm_reference's: e = E[x] (+ delta, FreeLB's
perturbation of the embedded sequence); h = mean over length; logits = h @ W
+ b; loss = sum_i w_i CE_i / batch + l2 * sum(E**2). Gradients by hand.
"""

import numpy as np

from tests import fgm_reference


def embedded_loss_and_gradients(E, W, b, x, y, w, delta, l2=0.0):
    """Returns (loss, dE, dW, db, d delta) with ``delta`` added to E[x]."""
    E, W, b, delta = (np.asarray(a, np.float64) for a in (E, W, b, delta))
    batch, length = x.shape
    w = np.ones(batch) if w is None else np.asarray(w, np.float64)
    h = (E[x] + delta).mean(axis=1)
    z = h @ W + b
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    onehot = np.eye(W.shape[1])[y]
    loss = np.sum(w * -np.log(p[np.arange(batch), y])) / batch + l2 * np.sum(E**2)
    dlogits = (p - onehot) * w[:, None] / batch
    de = np.repeat((dlogits @ W.T)[:, None, :] / length, length, axis=1)
    dE = np.zeros_like(E)
    np.add.at(dE, x.reshape(-1), de.reshape(-1, E.shape[1]))
    return loss, dE + 2 * l2 * E, h.T @ dlogits, dlogits.sum(axis=0), de


def pgd_sgd_step(
    E, W, b, x, y, lr, epsilon, alpha, steps, w=None, l2=0.0, add_clean=True
):
    """Returns ((E, W, b) after one SGD step of PGD, projection_was_active)."""
    grad = fgm_reference.loss_and_gradients
    _, g, _, _ = grad(E, W, b, x, y, w, l2)
    r = min(alpha, epsilon) * g / np.linalg.norm(g)
    active = False
    for _ in range(steps - 1):
        _, g, _, _ = grad(E + r, W, b, x, y, w, l2)
        r = r + alpha * g / np.linalg.norm(g)
        norm = np.linalg.norm(r)
        if norm > epsilon:
            r, active = r * epsilon / norm, True
    _, dE, dW, db = grad(E + r, W, b, x, y, w, l2)
    if add_clean:
        _, cE, cW, cb = grad(E, W, b, x, y, w, l2)
        dE, dW, db = dE + cE, dW + cW, db + cb
    return (E - lr * dE, W - lr * dW, b - lr * db), active


def freelb_sgd_step(E, W, b, x, y, lr, epsilon, alpha, steps, w=None, l2=0.0):
    """Returns ((E, W, b) after one SGD step of FreeLB from delta_0 = 0, active)."""
    delta = np.zeros(x.shape + (E.shape[1],))
    total = [np.zeros_like(a, dtype=np.float64) for a in (E, W, b)]
    active = False
    for t in range(steps):
        _, dE, dW, db, dd = embedded_loss_and_gradients(E, W, b, x, y, w, delta, l2)
        total = [s + g / steps for s, g in zip(total, (dE, dW, db))]
        if t == steps - 1:
            break
        norm = np.sqrt((dd**2).sum(axis=(1, 2)))[:, None, None]
        delta = delta + alpha * dd / norm
        size = np.sqrt((delta**2).sum(axis=(1, 2)))[:, None, None]
        active = active or bool(np.any(size > epsilon))
        delta = np.where(size > epsilon, delta * epsilon / size, delta)
    return tuple(a - lr * g for a, g in zip((E, W, b), total)), active


def free_fgm_sgd_steps(E, W, b, x, y, lr, epsilon, steps, w=None, l2=0.0):
    """Returns (E, W, b) after ``steps`` SGD steps of FreeFGM on one batch."""
    delta = np.zeros_like(E, dtype=np.float64)
    for _ in range(steps):
        _, dE, dW, db = fgm_reference.loss_and_gradients(E + delta, W, b, x, y, w, l2)
        E, W, b = E - lr * dE, W - lr * dW, b - lr * db
        delta = epsilon * dE / np.linalg.norm(dE)
    return E, W, b
