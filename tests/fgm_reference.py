"""NumPy reference for one FGM step on a bag-of-embeddings softmax classifier.

Model: e = E[x] (batch, length, dim); h = mean over length; logits = h @ W + b;
loss = sum_i w_i * CE(y_i, softmax(logits_i)) / batch  (Keras's default
"sum_over_batch_size" reduction) + l2 * sum(E**2) (an optional embeddings
regulariser). Gradients are written out by hand.
"""

import numpy as np


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def loss_and_gradients(E, W, b, x, y, w=None, l2=0.0):
    """Returns (loss, dE, dW, db) of the model above, in float64."""
    E, W, b = (np.asarray(a, np.float64) for a in (E, W, b))
    batch, length = x.shape
    w = np.ones(batch) if w is None else np.asarray(w, np.float64)
    h = E[x].mean(axis=1)
    p = _softmax(h @ W + b)
    onehot = np.eye(W.shape[1])[y]
    loss = np.sum(w * -np.log(p[np.arange(batch), y])) / batch + l2 * np.sum(E**2)
    dlogits = (p - onehot) * w[:, None] / batch
    dW = h.T @ dlogits
    db = dlogits.sum(axis=0)
    dh = dlogits @ W.T
    dE = np.zeros_like(E)
    np.add.at(dE, x.reshape(-1), np.repeat(dh / length, length, axis=0))
    return loss, dE + 2 * l2 * E, dW, db


def fgm_sgd_step(E, W, b, x, y, lr, epsilon, w=None, l2=0.0, add_clean=False):
    """Returns (E, W, b) after one SGD step of FGM, as the issue defines it."""
    _, g, _, _ = loss_and_gradients(E, W, b, x, y, w, l2)
    delta = epsilon * g / np.linalg.norm(g)
    _, dE, dW, db = loss_and_gradients(E + delta, W, b, x, y, w, l2)
    if add_clean:
        _, cE, cW, cb = loss_and_gradients(E, W, b, x, y, w, l2)
        dE, dW, db = dE + cE, dW + cW, db + cb
    return E - lr * dE, W - lr * dW, b - lr * db


def plain_sgd_step(E, W, b, x, y, lr, w=None, l2=0.0):
    """Returns (E, W, b) after one plain SGD step."""
    _, dE, dW, db = loss_and_gradients(E, W, b, x, y, w, l2)
    return E - lr * dE, W - lr * dW, b - lr * db
