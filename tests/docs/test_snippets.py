"""Every Python example of the documentation runs, on a tiny model.

Each fenced ``python`` block of ``docs/**/*.md`` (the API pages excepted: they
hold no code) runs in a fresh namespace after ``tests/docs/preamble.py``,
which builds the tiny compiled ``model`` and the data ``x``, ``y``,
``x_unlabeled``, ``features``, ``labels`` the guides use. A block that cannot run
here (it needs bert4keras, several devices or a download) is preceded by a
line ``<!-- skip-test: why -->``, and is listed as skipped with that reason.
"""

import pathlib
import re
import warnings

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PREAMBLE = (ROOT / "tests" / "docs" / "preamble.py").read_text()
SKIP = re.compile(r"<!--\s*skip-test:\s*(.*?)\s*-->")
FENCE = re.compile(r"^```(\S*)\s*$")


def python_blocks(path):
    """Yields ``(line, code, skip_reason)`` for each fenced python block."""
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if match and match.group(1) in ("python", "py"):
            start = index
            previous = lines[start - 1] if start > 0 else ""
            skip = SKIP.search(previous)
            index += 1
            body = []
            while not lines[index].startswith("```"):
                body.append(lines[index])
                index += 1
            yield start + 1, "\n".join(body) + "\n", skip.group(1) if skip else None
        index += 1


def collect():
    cases = []
    for path in sorted(DOCS.rglob("*.md")):
        if path.parent.name == "api":
            continue
        for line, code, skip in python_blocks(path):
            name = f"{path.relative_to(DOCS)}:{line}"
            marks = [pytest.mark.skip(reason=skip)] if skip else []
            cases.append(pytest.param(path, code, id=name, marks=marks))
    return cases


CASES = collect()


def test_the_guides_have_examples():
    assert len(CASES) >= 20


def test_the_fence_parser_sees_skips_and_code():
    sample = ROOT / "docs" / "getting-started.md"
    blocks = list(python_blocks(sample))
    assert any(skip for _, _, skip in blocks)
    assert any("keras_reg." in code and not skip for _, code, skip in blocks)


def test_examples_fit_the_page():
    # 88 characters (ruff's limit) show without scrolling in the rendered page.
    long = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in sorted(DOCS.rglob("*.md"))
        for line, code, _ in python_blocks(path)
        if any(len(row) > 88 for row in code.splitlines())
    ]
    assert not long, f"Example lines over 88 characters in the blocks at {long}"


@pytest.mark.parametrize("path, code", CASES)
def test_example_runs(path, code):
    assert "--8<--" not in code, "An included file is no example: mark it skip-test."
    namespace = {"__name__": "__docs_example__"}
    exec(compile(PREAMBLE, "tests/docs/preamble.py", "exec"), namespace)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "replaces the regulariser" etc.
        exec(compile(code, str(path.relative_to(ROOT)), "exec"), namespace)
