"""Load-independent step costs on JAX: XLA's FLOP count of the compiled step.

Wall-clock ratios on a shared machine drift with other jobs; the FLOP count
of the optimized (post-CSE, post-DCE) HLO of a train step does not, and shows
whether a change removed work (e.g. a duplicated forward pass) or only moved
noise around.
"""

import re

import jax


def train_step_arguments(model, x, y):
    """Returns ``(state, data)``: the arguments of Keras's JAX ``train_step``.

    The model's trainable, non-trainable, optimizer and metrics values, and
    the batch. The model must have run one step already (so that the
    optimizer's and metrics' variables exist).
    """
    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in model.optimizer.variables],
        [v.value for v in model.metrics_variables],
    )
    return state, (jax.numpy.asarray(x), jax.numpy.asarray(y))


def train_step_cost(model, x, y):
    """Returns XLA's cost of one JAX train step of a compiled Keras model.

    The model must have run one step already (so that the optimizer's and
    metrics' variables exist).

    Args:
        model: A Keras 3 model on the JAX backend.
        x: A batch of inputs.
        y: The batch's targets.

    Returns:
        ``{"flops": float, "bytes": float, "dots": int}``: floating-point
        operations and bytes accessed as XLA's cost analysis counts them, and
        the number of dot (matrix product) instructions in the optimized HLO.

    Example:
        >>> model.train_on_batch(x, y)
        >>> train_step_cost(model, x, y)["flops"]  # doctest: +SKIP
    """
    compiled = jax.jit(model.train_step).lower(*train_step_arguments(model, x, y))
    compiled = compiled.compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    dots = len(re.findall(r"\bdot\(", compiled.as_text()))
    return {
        "flops": float(cost["flops"]),
        "bytes": float(cost.get("bytes accessed", 0.0)),
        "dots": dots,
    }
