"""Side-by-side step timing: variants interleaved in rounds, medians compared."""

import json
import os
import time

import numpy as np


def interleaved_medians(variants, x, y, steps, rounds):
    """Returns {name: median seconds per step} of ``train_on_batch``-like callables.

    Each variant runs twice first (tracing, compilation); then every round runs
    ``steps`` steps of each variant in turn, so drifts of the machine hit all
    variants alike.
    """
    for run in variants.values():
        run(x, y)
        run(x, y)
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            for _ in range(steps):
                run(x, y)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: float(np.median(t)) for name, t in times.items()}


def summary(times, mode):
    """Medians, fastest rounds and their ratios to ``plain`` (milliseconds).

    Args:
        times: ``{name: [seconds per step of each round]}``, with ``plain``.
        mode: A label for the backend and mode.
    """
    result = {"mode": mode}
    medians = {name: float(np.median(t)) for name, t in times.items()}
    fastest = {name: float(np.min(t)) for name, t in times.items()}
    for name in times:
        result[f"{name}_ms"] = 1e3 * medians[name]
        result[f"{name}_min_ms"] = 1e3 * fastest[name]
    for name in times:
        if name != "plain":
            result[f"{name}_ratio"] = medians[name] / medians["plain"]
            result[f"{name}_min_ratio"] = fastest[name] / fastest["plain"]
    return result


def modes(backend, choice=None):
    """Returns the ``jit_compile`` values to time on ``backend``.

    TensorFlow: graph mode and XLA (``choice`` "graph" or "jit" picks one);
    JAX: jit; PyTorch: eager.
    """
    if backend == "tensorflow" and choice in ("graph", "jit"):
        return (choice == "jit",)
    return {"tensorflow": (False, True), "jax": (True,), "torch": (False,)}[backend]


def write_report(report, output):
    """Prints ``report`` as JSON and writes it to ``output`` (folders made)."""
    print(json.dumps(report, indent=2))
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    with open(output, "w") as f:
        json.dump(report, f, indent=2)
