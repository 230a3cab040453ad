"""Float64 references for compositions on the bag-of-embeddings model.

A composition optimizes ``r_1 + sum_{i > 1} (r_i - L)``: the members' terms
added to the clean loss L. The model and its hand-derived gradients are those
of `tests.fgm_reference`; a gradient penalty's own gradient (second
derivatives) is taken by central finite differences
(`tests.gradient_penalty_reference`).
"""

import numpy as np

from tests import gradient_penalty_reference as penalties
from tests.fgm_reference import loss_and_gradients


def fgm_delta(E, W, b, x, y, w, epsilon):
    """FGM's perturbation of E at (E, W, b): epsilon g / ||g||, g = dL/dE."""
    _, g, _, _ = loss_and_gradients(E, W, b, x, y, w)
    return epsilon * g / np.linalg.norm(g)


def fgm_gradients(E, W, b, x, y, w, epsilon):
    """d L(E + delta, W, b) / d (E, W, b), delta held constant (FGM's gradient)."""
    delta = fgm_delta(E, W, b, x, y, w, epsilon)
    return list(loss_and_gradients(E + delta, W, b, x, y, w)[1:])


def penalty_gradients(kind, strength, E, W, b, x, y, w):
    """The gradient of a penalty's term alone: d (P - L) / d (E, W, b)."""

    def term(E_, W_, b_):
        return penalties.penalized_loss(
            kind, strength, E_, W_, b_, x, y, w
        ) - penalties.penalized_loss("none", 0.0, E_, W_, b_, x, y, w)

    return penalties.numeric_gradients(term, (E, W, b))


def fgm_plus_penalty_step(E, W, b, x, y, w, lr, epsilon, kind, strength):
    """One SGD step on L(E + delta) + the penalty's term."""
    fgm = fgm_gradients(E, W, b, x, y, w, epsilon)
    penalty = penalty_gradients(kind, strength, E, W, b, x, y, w)
    return [p - lr * (f + q) for p, f, q in zip((E, W, b), fgm, penalty)]


def sam_around_fgm_step(E, W, b, x, y, w, lr, rho, epsilon):
    """One SGD step of SAM wrapping FGM.

    C(w) = L(E + delta(w), W, b), delta(w) FGM's perturbation at w (constant
    when C is differentiated). SAM's e = rho g / ||g|| with g = dC/dw at w;
    the step applies dC/dw at w + e, FGM's delta taken at w + e too.
    """
    g = fgm_gradients(E, W, b, x, y, w, epsilon)
    norm = np.sqrt(sum(np.sum(gi**2) for gi in g))
    e = [rho * gi / norm for gi in g]
    moved = [p + ei for p, ei in zip((np.float64(E), np.float64(W), np.float64(b)), e)]
    final = fgm_gradients(*moved, x, y, w, epsilon)
    return [p - lr * f for p, f in zip((E, W, b), final)]
