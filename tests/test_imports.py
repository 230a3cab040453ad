"""Test modules share code through helper modules (tests/models.py,
tests/conformance_suite.py, the *_reference.py closed forms), never by
importing one another."""

import pathlib
import re

TESTS = pathlib.Path(__file__).parent
# An import statement of a module in tests/ (absolute or relative), with its
# parenthesised name list; it imports a test module if a name is test_*.
_IMPORT = re.compile(
    r"^[ \t]*(from[ \t]+(tests(\.\w+)*|\.+\w*(\.\w+)*)[ \t]+import[ \t]+"
    r"(\([^)]*\)|[^\n]*)|import[ \t]+tests\.[^\n]*)",
    re.MULTILINE,
)
_TEST_MODULE = re.compile(r"(^|[\s.,(])test_\w+")


def imports_of_test_modules(source):
    """Returns the import statements of ``source`` that import a test module."""
    return [
        match.group(0).strip()
        for match in _IMPORT.finditer(source)
        if _TEST_MODULE.search(match.group(0))
    ]


def test_no_module_under_tests_imports_a_test_module():
    found = {
        str(path.relative_to(TESTS)): lines
        for path in sorted(TESTS.rglob("*.py"))
        if (lines := imports_of_test_modules(path.read_text()))
    }
    assert not found, f"move the shared helpers to a helper module: {found}"


def test_the_check_sees_each_form_of_import():
    for line in (
        "from tests.test_fgm import _compiled",
        "from tests.tf_keras.test_fgm_tf_keras import (\n    _data,\n)",
        "from tests import (\n    models,\n    test_fgm,\n)",
        "from .test_fgm import x",
        "from . import test_fgm",
        "from tests import models, test_fgm",
        "import tests.test_fgm",
    ):
        assert imports_of_test_modules(line) == [line], line
    for line in (
        "from tests import models, fgm_reference",
        "from tests import (\n    fixed_noise,\n    models,\n)",
        "import keras_reg",
    ):
        assert imports_of_test_modules(line) == [], line
