"""NumPy (float64) closed forms for loss balancing on a two-head linear model.

    h = x W0 + b0                       (the shared layer, "shared")
    p = softmax(h W1 + b1)              (head "cls": sparse categorical CE)
    r = h W2 + b2                       (head "reg": scale * mean squared error)

Losses as Keras reduces them: L = sum_n sw_n * loss_n / N. One SGD step on
sum_i c_i L_i (+ l2 * ||W0||^2, the shared kernel's L2 regulariser) with the
factors c_i of each balancing method.
"""

import numpy as np

IN, HIDDEN, CLASSES = 3, 4, 3


def initial_weights(rng):
    """Returns [W0, b0, W1, b1, W2, b2] (float32) with a non-trivial scale."""
    shapes = [(IN, HIDDEN), (HIDDEN,), (HIDDEN, CLASSES), (CLASSES,), (HIDDEN, 1), (1,)]
    return [rng.normal(size=shape).astype("float32") * 0.5 for shape in shapes]


def batch(rng, size=8, target_scale=30.0):
    """Returns x, y_cls, y_reg (float32 / int32) and sample weights."""
    x = rng.normal(size=(size, IN)).astype("float32")
    y_cls = rng.integers(0, CLASSES, size=(size,)).astype("int32")
    y_reg = (target_scale * rng.normal(size=(size, 1)) + 10.0).astype("float32")
    w = rng.uniform(0.5, 2.0, size=(size,)).astype("float32")
    return x, y_cls, y_reg, w


def forward(weights, x):
    W0, b0, W1, b1, W2, b2 = [np.asarray(v, np.float64) for v in weights]
    h = np.asarray(x, np.float64) @ W0 + b0
    z = h @ W1 + b1
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return h, p, h @ W2 + b2


def task_losses(weights, x, y_cls, y_reg, sw=None, scale=1.0, shift=0.0):
    """Returns (L_cls, L_reg) and their gradients with respect to the head logits."""
    n = len(x)
    sw = np.ones(n) if sw is None else np.asarray(sw, np.float64)
    _, p, r = forward(weights, x)
    onehot = np.eye(CLASSES)[y_cls]
    l_cls = np.sum(sw * -np.log(p[np.arange(n), y_cls])) / n
    residual = r[:, 0] - np.asarray(y_reg, np.float64)[:, 0]
    l_reg = scale * np.sum(sw * (residual**2 + shift)) / n
    d_cls = sw[:, None] * (p - onehot) / n
    d_reg = scale * 2.0 * (sw * residual)[:, None] / n
    return (l_cls, l_reg), (d_cls, d_reg)


def representation_gradients(weights, d_logits):
    """Returns grad_h L_cls and grad_h L_reg, from the logit gradients."""
    W1, W2 = np.asarray(weights[2], np.float64), np.asarray(weights[4], np.float64)
    return d_logits[0] @ W1.T, d_logits[1] @ W2.T


def min_norm_2(g1, g2):
    """Returns (a, 1 - a) minimising ||a g1 + (1 - a) g2|| (two tasks, exact)."""
    diff = (g1 - g2).ravel()
    a = np.clip(np.dot((g2 - g1).ravel(), g2.ravel()) / np.dot(diff, diff), 0, 1)
    return np.array([a, 1.0 - a])


def factors(method, weights, x, y_cls, y_reg, sw=None, scale=1.0, shift=0.0,
            gamma=0.0, references=None, loss_weights=(1.0, 1.0)):
    """Returns the effective factors w_i * a_i of each task for one batch."""
    losses, d_logits = task_losses(weights, x, y_cls, y_reg, sw, scale, shift)
    losses = np.array(losses)
    if method == "plain":
        a = np.ones(2)
    elif method == "realtime":
        a = losses ** (gamma - 1.0)
    elif method in ("initial", "prior"):
        a = 1.0 / np.asarray(references, np.float64)
    else:
        g = representation_gradients(weights, d_logits)
        if method == "gradient":
            a = np.array([1.0 / np.linalg.norm(gi) for gi in g])
        else:
            a = min_norm_2(loss_weights[0] * g[0], loss_weights[1] * g[1])
    return np.asarray(loss_weights, np.float64) * a


def sgd_step(weights, x, y_cls, y_reg, lr, c, sw=None, scale=1.0, shift=0.0, l2=0.0):
    """Returns the weights after one SGD step on c_0 L_cls + c_1 L_reg (+ L2)."""
    W0, b0, W1, b1, W2, b2 = [np.asarray(v, np.float64) for v in weights]
    h, _, _ = forward(weights, x)
    _, (d_cls, d_reg) = task_losses(weights, x, y_cls, y_reg, sw, scale, shift)
    dz1, dz2 = c[0] * d_cls, c[1] * d_reg
    dh = dz1 @ W1.T + dz2 @ W2.T
    grads = [
        np.asarray(x, np.float64).T @ dh + 2.0 * l2 * W0,
        dh.sum(axis=0),
        h.T @ dz1,
        dz1.sum(axis=0),
        h.T @ dz2,
        dz2.sum(axis=0),
    ]
    params = [W0, b0, W1, b1, W2, b2]
    return [w - lr * g for w, g in zip(params, grads)]


def prior_losses(y_cls, y_reg, sw=None):
    """Returns the losses of predicting the label frequencies and the mean target.

    Reduced as Keras reduces (sum of sw * loss over N); without sample weights
    they are the entropy of the class frequencies and the variance of the targets.
    """
    n = len(y_cls)
    sw = np.ones(n) if sw is None else np.asarray(sw, np.float64)
    freq = np.bincount(y_cls, weights=sw, minlength=CLASSES) / sw.sum()
    y = np.asarray(y_reg, np.float64)[:, 0]
    mean = np.sum(sw * y) / sw.sum()
    return np.sum(sw * -np.log(freq[y_cls])) / n, np.sum(sw * (y - mean) ** 2) / n
