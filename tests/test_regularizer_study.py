"""examples/regularizer_study.py: the smoke run, its cache, and the report's maths."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples")
SCRIPT = os.path.join(EXAMPLES, "regularizer_study.py")
sys.path.insert(0, os.path.abspath(EXAMPLES))

from study import methods, report  # noqa: E402
from study.runner import Study, result_path  # noqa: E402


def _smoke(results_dir, *extra):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", PYTHONHASHSEED="0")
    process = subprocess.run(
        [sys.executable, SCRIPT, "--smoke", "--results-dir", str(results_dir), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    return process.stdout


@pytest.mark.backends("tensorflow", reason="the script runs in its own TF process")
def test_smoke_run_caches_every_run_and_a_second_run_trains_nothing(tmp_path):
    output = _smoke(tmp_path)
    files = sorted(glob.glob(str(tmp_path / "*" / "*" / "*" / "seed*.json")))
    # plain 1 + FGM 2 grid values (seed 0 at the chosen one is a grid run) +
    # R-Drop 2 (+ FGM + R-Drop 1 where the library composes) on digits and
    # sentiment; plain 1 + VAT 2 on the few-label tasks.
    combination = 1 if methods.composition_available() else 0
    assert len(files) == 2 * (5 + combination) + 2 * 3, files
    for path in files:
        with open(path) as f:
            result = json.load(f)
        assert 0.0 <= result["test_accuracy"] <= 1.0
        assert 0.0 <= result["val_accuracy"] <= 1.0
        assert result["seconds_per_epoch"] > 0
        assert result["cpu_seconds_per_epoch"] > 0
    table = (tmp_path / "report.md").read_text()
    for task in ("digits", "digits-100", "sentiment", "sentiment-200"):
        assert f"### {task}\n" in table
    assert "| VAT | epsilon=" in table and "(1)" in table
    assert (tmp_path / "regularizer_study.png").stat().st_size > 0
    assert "runs left" in output

    stamps = {path: os.stat(path).st_mtime_ns for path in files}
    again = _smoke(tmp_path)
    assert "0 runs left" in again
    assert " seed 0: val " not in again  # nothing trained
    assert {path: os.stat(path).st_mtime_ns for path in files} == stamps
    # The four tasks' tables and FGM's one-strength-on-both-models table.
    assert _smoke(tmp_path, "--report").count("### ") == 5


def test_t_interval_matches_the_closed_form():
    differences = [0.01, 0.03, -0.01, 0.02, 0.00]
    mean, half = report.t_interval(differences)
    # t_{0.975, 4} = 2.776445; sample std of the differences = 0.0158114.
    assert mean == pytest.approx(0.01)
    assert half == pytest.approx(2.776445 * 0.0158114 / np.sqrt(5), rel=1e-5)
    assert report.t_interval([0.5]) == (0.5, None)


def _write(root, task, method, strength, seed, val, test, seconds=1.0):
    path = result_path(root, task, method, strength, seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(
            {
                "val_accuracy": val,
                "test_accuracy": test,
                "seconds_per_epoch": seconds + 1.0,
                "cpu_seconds_per_epoch": seconds,
                "description": "fixture",
            },
            f,
        )


def test_report_picks_on_validation_and_pairs_seeds_with_plain(tmp_path):
    study = Study(str(tmp_path), seeds=3, tasks=["digits"], methods=["plain", "FGM"])
    plain = [0.90, 0.92, 0.91]
    for seed, test in enumerate(plain):
        _write(tmp_path, "digits", "plain", None, seed, 0.9, test)
    # Validation picks epsilon=1 although epsilon=3 has the best test accuracy.
    for value, (val, test) in {
        0.1: (0.90, 0.91),
        0.3: (0.91, 0.92),
        1.0: (0.95, 0.93),
        3.0: (0.94, 0.99),
    }.items():
        _write(tmp_path, "digits", "FGM", value, 0, val, test, seconds=2.0)
    assert study.chosen("digits", "FGM") == 1.0
    assert [s for _, s in study.runs("digits", "FGM")][-3:] == [0, 1, 2]
    _write(tmp_path, "digits", "FGM", 1.0, 1, 0.95, 0.95, seconds=2.0)
    _write(tmp_path, "digits", "FGM", 1.0, 2, 0.95, 0.92, seconds=2.0)
    lines, points, missing = report.task_table(study, "digits")
    row = next(line for line in lines if line.startswith("| FGM |"))
    differences = [0.93 - 0.90, 0.95 - 0.92, 0.92 - 0.91]
    mean, half = report.t_interval(differences)
    assert "epsilon=1 |" in row  # not at the grid's edge
    assert f"{np.mean([0.93, 0.95, 0.92]):.4f} +- " in row
    assert f"{mean:+.4f} [{mean - half:+.4f}, {mean + half:+.4f}] (3 seeds)" in row
    assert "| 2.00 (2.0x) | 3.00 |" in row  # CPU (ratio to plain's), wall
    assert missing == []
    # One seed fewer: the row is incomplete and the report says so.
    os.remove(result_path(tmp_path, "digits", "FGM", 1.0, 2))
    assert report.task_table(study, "digits")[2] == ["FGM"]
    text = report.build(study, str(tmp_path / "plot.png"))
    assert "Partial results" in text


def test_transfer_table_compares_each_shared_strength_with_plain(tmp_path):
    methods = ["plain", "FGM", "FGM (relative epsilon)"]
    study = Study(str(tmp_path), tasks=["digits", "sentiment"], methods=methods)
    _write(tmp_path, "digits", "plain", None, 0, 0.90, 0.0)
    _write(tmp_path, "sentiment", "plain", None, 0, 0.75, 0.0)
    _write(tmp_path, "digits", "FGM", 1.0, 0, 0.93, 0.0)
    _write(tmp_path, "sentiment", "FGM", 1.0, 0, 0.70, 0.0)
    _write(tmp_path, "digits", "FGM (relative epsilon)", 0.1, 0, 0.92, 0.0)
    lines = report.transfer_table(study)
    # epsilon=1 is in both grids: +3.0 points on digits, -5.0 on sentiment.
    assert "| FGM | epsilon=1 | +3.0 | -5.0 |" in lines
    # 0.1 in both relative grids; sentiment's run is not cached yet.
    assert "| FGM (relative epsilon) | relative=0.1 | +2.0 | - |" in lines
    # epsilon=0.1 is only in digits' grid: no row.
    assert not any("epsilon=0.1 |" in line for line in lines if "| FGM |" in line)
    os.remove(result_path(tmp_path, "sentiment", "plain", None, 0))
    assert report.transfer_table(study) == []  # no plain run: no comparison


def test_summary_table_has_plain_accuracy_and_differences_in_points(tmp_path):
    study = Study(str(tmp_path), seeds=3, tasks=["digits"], methods=["plain", "FGM"])
    for seed, test in enumerate([0.90, 0.92, 0.91]):
        _write(tmp_path, "digits", "plain", None, seed, 0.9, test, seconds=1.0)
    for value in (0.1, 0.3, 3.0):
        _write(tmp_path, "digits", "FGM", value, 0, 0.80, 0.0)
    _write(tmp_path, "digits", "FGM", 1.0, 0, 0.95, 0.93, seconds=2.0)
    _write(tmp_path, "digits", "FGM", 1.0, 1, 0.95, 0.95, seconds=2.0)
    assert report.summary_table(study)[2:] == [
        "| plain | 0.910 |",
        "| FGM | not run yet |",
    ]
    _write(tmp_path, "digits", "FGM", 1.0, 2, 0.95, 0.94, seconds=2.0)
    # Differences 0.03, 0.03, 0.03: the interval is the point, above 0 (bold).
    assert report.summary_table(study)[3] == "| FGM | **+3.0 [+3.0, +3.0]** (2.0x) |"
    # One seed (the smoke run): the difference without an interval.
    single = Study(str(tmp_path), seeds=1, tasks=["digits"], methods=["plain", "FGM"])
    assert report.summary_table(single)[3] == "| FGM | +3.0 (1 seed) (2.0x) |"
