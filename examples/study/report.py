"""Builds the study's markdown tables and plot from the cached runs only."""

import os
import time

import numpy as np

from study.methods import METHODS
from study.runner import result_path, strength_slug


def t_interval(differences, confidence=0.95):
    """(mean, half width) of the t-interval of the mean; half width None if n < 2."""
    values = np.asarray(differences, float)
    if len(values) < 2:
        return float(values.mean()), None
    from scipy import stats

    quantile = stats.t.ppf(0.5 + confidence / 2, len(values) - 1)
    return float(values.mean()), float(
        quantile * values.std(ddof=1) / np.sqrt(len(values))
    )


def paired_difference(seeds, plain):
    """(mean, half width, seeds) of the test-accuracy differences to plain.

    Paired by seed over the seeds both have (see `t_interval`).
    """
    common = sorted(set(seeds) & set(plain))
    differences = [
        seeds[s]["test_accuracy"] - plain[s]["test_accuracy"] for s in common
    ]
    return (*t_interval(differences), len(common))


def collect(study, task, method):
    """(chosen strength, {grid value: val acc}, {seed: result}) from the cache."""
    grid = {}
    for value in study.grid(method, task):
        path = result_path(study.root, task, method, value, 0)
        if os.path.exists(path):
            grid[value] = _read(path)["val_accuracy"]
    chosen = study.chosen(task, method)
    seeds = {}
    if chosen is not None:
        strength = None if chosen == "default" else chosen
        for seed in range(study.seeds):
            path = result_path(study.root, task, method, strength, seed)
            if os.path.exists(path):
                seeds[seed] = _read(path)
    return chosen, grid, seeds


def _read(path):
    import json

    with open(path) as f:
        return json.load(f)


def _seconds(results):
    """(wall, CPU) seconds per epoch: medians over epochs, means over seeds."""
    results = list(results)
    wall = np.mean([r["seconds_per_epoch"] for r in results])
    return wall, np.mean([r["cpu_seconds_per_epoch"] for r in results])


def _strength_text(method, chosen, grid_values):
    entry = METHODS[method]
    if chosen in (None, "default"):
        return "-" if chosen else "(grid not finished)"
    if entry.parts:
        return ", ".join(
            f"{METHODS[p].strength}={v:g}" for p, v in zip(entry.parts, chosen)
        )
    edge = " (grid edge)" if chosen in (grid_values[0], grid_values[-1]) else ""
    return f"{entry.strength}={chosen:g}{edge}"


def task_table(study, task):
    """Markdown lines for one task, and the plotted points."""
    lines, points = [], []
    _, _, plain = collect(study, task, "plain")
    plain_time = _seconds(plain.values())[1] if plain else None
    description = next(iter(plain.values()))["description"] if plain else task
    settings = study.settings(task)
    lines += [
        f"### {task}",
        "",
        f"{description}; {settings['epochs']} epochs, Adam "
        f"{settings['learning_rate']:g}, batch {settings['batch_size']}.",
        "",
        "| method | strength (picked on validation) | validation accuracy over the "
        "grid (seed 0) | test accuracy, mean +- std (seeds) | paired difference "
        "to plain, 95% t-interval | CPU s / epoch (x plain) | wall s / epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    missing = []
    for method in study.planned(task):
        entry = METHODS[method]
        if not entry.available():
            lines.append(f"| {method} | needs a newer keras_reg | | | | | |")
            missing.append(method)
            continue
        chosen, grid, seeds = collect(study, task, method)
        values = study.grid(method, task)
        grid_text = ", ".join(
            f"{v:g}: {grid[v]:.3f}" if v in grid else f"{v:g}: -" for v in values
        )
        if len(seeds) < study.seeds:
            missing.append(method)
        if not seeds:
            lines.append(
                f"| {method} | {_strength_text(method, chosen, values)} "
                f"| {grid_text} | not run yet | | | |"
            )
            continue
        accuracy = np.array([r["test_accuracy"] for r in seeds.values()])
        std = accuracy.std(ddof=1) if len(accuracy) > 1 else 0.0
        if method == "plain" or not set(seeds) & set(plain):
            difference = "" if method == "plain" else "no plain run yet"
        else:
            mean, half, paired = paired_difference(seeds, plain)
            difference = (
                f"{mean:+.4f} ({paired} seed)"
                if half is None
                else f"{mean:+.4f} [{mean - half:+.4f}, {mean + half:+.4f}] "
                f"({paired} seeds)"
            )
        wall, cpu = _seconds(seeds.values())
        ratio = f" ({cpu / plain_time:.1f}x)" if plain_time else ""
        lines.append(
            f"| {method} | {_strength_text(method, chosen, values)} | {grid_text} "
            f"| {accuracy.mean():.4f} +- {std:.4f} ({len(accuracy)}) "
            f"| {difference} | {cpu:.2f}{ratio} | {wall:.2f} |"
        )
        points.append((method, cpu, accuracy.mean(), std))
    lines.append("")
    return lines, points, missing


def _summary_cell(study, task, method, plain):
    """One summary cell: plain's accuracy, or the paired difference in points."""
    if task not in METHODS[method].tasks or not METHODS[method].available():
        return ""
    _, _, seeds = collect(study, task, method)
    if len(seeds) < study.seeds or not plain:
        return "not run yet"
    if method == "plain":
        accuracy = np.mean([r["test_accuracy"] for r in seeds.values()])
        return f"{accuracy:.3f}"
    mean, half, _ = paired_difference(seeds, plain)
    _, cpu = _seconds(seeds.values())
    _, plain_cpu = _seconds(plain.values())
    cost = f"({cpu / plain_cpu:.1f}x)"
    if half is None:  # one seed: no interval
        return f"{100 * mean:+.1f} (1 seed) {cost}"
    mark = "**" if mean - half > 0 else ""
    return (
        f"{mark}{100 * mean:+.1f} [{100 * (mean - half):+.1f}, "
        f"{100 * (mean + half):+.1f}]{mark} {cost}"
    )


def summary_table(study):
    """Markdown: every method's paired difference to plain, one column per task.

    Plain's row holds its test accuracy; every other cell the mean paired
    difference in accuracy points with its 95% t-interval (bold where the
    interval is above 0) and the CPU time per epoch over plain's.
    """
    plains = {t: collect(study, t, "plain")[2] for t in study.tasks}
    methods = [
        m for m in study.methods if any(t in METHODS[m].tasks for t in study.tasks)
    ]
    lines = [
        "| method | " + " | ".join(study.tasks) + " |",
        "|---|" + "---|" * len(study.tasks),
    ]
    for method in methods:
        cells = [_summary_cell(study, t, method, plains[t]) for t in study.tasks]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


# The same FGM at one strength on both supervised tasks: absolute and relative.
TRANSFER_METHODS = ("FGM", "FGM (relative epsilon)")
TRANSFER_TASKS = ("digits", "sentiment")


def transfer_table(study):
    """Markdown: each FGM strength on both models, validation accuracy vs plain.

    For every value in both tasks' grids (seed 0, as the grid was run): the
    validation accuracy minus plain training's, in points. One absolute
    epsilon means a different move on each model; one relative value should
    land on the useful side on both.
    """
    if not all(t in study.tasks for t in TRANSFER_TASKS):
        return []
    plain = {}
    for task in TRANSFER_TASKS:
        path = result_path(study.root, task, "plain", None, 0)
        if not os.path.exists(path):
            return []
        plain[task] = _read(path)["val_accuracy"]
    lines = [
        "### One strength on both models",
        "",
        "FGM's validation accuracy minus plain training's (seed 0, points) at "
        "each strength in both tasks' grids: an absolute epsilon against a "
        "relative one (a fraction of the norm of the embedding rows moved).",
        "",
        "| method | strength | " + " | ".join(TRANSFER_TASKS) + " |",
        "|---|---|" + "---|" * len(TRANSFER_TASKS),
    ]
    for method in TRANSFER_METHODS:
        if method not in study.methods:
            continue
        grids = [study.grid(method, task) for task in TRANSFER_TASKS]
        shared = [v for v in grids[0] if all(v in g for g in grids[1:])]
        for value in shared:
            cells = []
            for task in TRANSFER_TASKS:
                path = result_path(study.root, task, method, value, 0)
                if os.path.exists(path):
                    gain = 100 * (_read(path)["val_accuracy"] - plain[task])
                    cells.append(f"{gain:+.1f}")
                else:
                    cells.append("-")
            name = METHODS[method].strength
            lines.append(f"| {method} | {name}={value:g} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def build(study, plot_path):
    """Returns the report's markdown (and writes the plot to ``plot_path``)."""
    sections, panels, missing = [], {}, {}
    for task in study.tasks:
        lines, points, left = task_table(study, task)
        sections += lines
        panels[task] = points
        if left:
            missing[task] = left
    sections += transfer_table(study)
    head = [
        "Generated by `examples/regularizer_study.py --report` from the cached "
        f"runs ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
        "",
    ]
    if missing:
        head += [
            '!!! warning "Partial results"',
            "    The run is not finished: rows with fewer than "
            f"{study.seeds} seed(s) or no result are incomplete "
            + "; ".join(f"{t}: {', '.join(m)}" for t, m in missing.items())
            + ".",
            "",
        ]
    head += [
        "Summary: plain training's test accuracy, and each method's paired "
        "difference to it in accuracy points (mean over seeds, 95% "
        "t-interval; bold: the interval is above 0) with its CPU time per "
        "epoch over plain's. The tables below hold the strengths, the grids "
        "and the accuracies.",
        "",
        *summary_table(study),
        "",
        f"Each method's strength is the grid value with the best validation "
        f"accuracy on seed 0; then {study.seeds} seeds at that value (seed k: "
        "the same labelled examples, initial weights and data order for every "
        "method) give the test accuracy. The paired difference is method minus "
        "plain on the same seed, with a 95% t-interval over the seeds. "
        "Seconds per epoch: median over epochs, mean over seeds; CPU seconds "
        "(all threads of the process) are what the ratio and the plot use, "
        "since the machine was shared with other jobs and the wall-clock "
        "time followed their load (compare within a task).",
        "",
    ]
    plot(panels, plot_path)
    return "\n".join(head + sections)


def plot(panels, path):
    """Test accuracy (mean +- std over seeds) against seconds per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t, p in panels.items() if p]
    if not tasks:
        return
    figure, axes = plt.subplots(
        1, len(tasks), figsize=(4.5 * len(tasks), 4), squeeze=False
    )
    for axis, task in zip(axes[0], tasks):
        for method, seconds, mean, std in panels[task]:
            color = "black" if method == "plain" else None
            axis.errorbar(seconds, mean, yerr=std, fmt="o", color=color, capsize=3)
            axis.annotate(
                method,
                (seconds, mean),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
            if method == "plain":
                axis.axhline(mean, color="gray", linestyle="--", linewidth=0.8)
        axis.margins(x=0.15)
        axis.set(
            title=task,
            xlabel="CPU seconds per epoch",
            ylabel="test accuracy (mean +- std over seeds)",
        )
    figure.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


__all__ = ["build", "summary_table", "t_interval", "strength_slug", "transfer_table"]
