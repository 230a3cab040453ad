"""The README's study table is the one the cached study results give.

The table between ``<!-- study-summary -->`` and ``<!-- /study-summary -->``
in README.md must equal `examples/study/report.summary_table` of the committed
results in ``results/regularizer_study/`` (regenerate it with
``python examples/regularizer_study.py --report`` and paste the summary).
"""

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))

from study import report  # noqa: E402
from study.runner import Study  # noqa: E402

START, END = "<!-- study-summary -->", "<!-- /study-summary -->"


def readme_table():
    text = (ROOT / "README.md").read_text()
    assert START in text and END in text, f"README.md lost its {START} markers"
    block = text.split(START, 1)[1].split(END, 1)[0]
    return [line for line in block.strip().splitlines() if line.startswith("|")]


def test_readme_study_table_matches_the_cached_results():
    study = Study(str(ROOT / "results" / "regularizer_study"))
    assert readme_table() == report.summary_table(study)
