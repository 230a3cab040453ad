"""Side-by-side step timing: variants interleaved in rounds, medians compared."""

import json
import os
import time

import numpy as np


def interleaved_medians(variants, x, y, steps, rounds):
    """Returns {name: median seconds per step} (see `interleaved_times`)."""
    times = interleaved_times(variants, x, y, steps, rounds)
    return {name: float(np.median(t)) for name, t in times.items()}


def flops_ratios(variants, x, y):
    """JAX: each variant's XLA FLOP count over the plain step's (no load noise)."""
    from benchmarks import xla_cost

    flops = {
        name: xla_cost.train_step_cost(run.__self__, x, y)["flops"]
        for name, run in variants.items()
    }
    return {
        f"{name}_flops_ratio": flops[name] / flops["plain"]
        for name in flops
        if name != "plain"
    }


def interleaved_times(variants, x, y, steps, rounds):
    """Returns {name: [seconds per step of each round]} of ``train_on_batch``-likes.

    Each variant runs twice first (tracing, compilation); then every round runs
    ``steps`` steps of each variant in turn, so drifts of the machine hit all
    variants alike. Kept per round: on a shared machine load only ever adds
    time, so the fastest round is worth reporting beside the median.
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
    return times


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


def write_report(report, output, echo=True):
    """Writes ``report`` as JSON to ``output`` (folders made), printing it if ``echo``.

    Args:
        report: A JSON-serialisable dict.
        output: The file to write.
        echo: Also print the report (False where its rows were printed as
            they were measured).
    """
    if echo:
        print(json.dumps(report, indent=2))
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    with open(output, "w") as f:
        json.dump(report, f, indent=2)
