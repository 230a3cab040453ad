"""The version is read from one place and the declared range agrees everywhere."""

import os
import re

import pytest

import keras_reg
from keras_reg import _compat
from keras_reg._compat import keras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIP_TO_IMPORT = {"tensorflow-cpu": "tensorflow", "tf-keras": "tf_keras"}


def _read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as handle:
        return handle.read()


def _pyproject():
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads(_read("pyproject.toml"))


def _lower_bounds(requirements):
    bounds = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^]]*\])?>=([0-9.]+)", requirement)
        if match:
            name = PIP_TO_IMPORT.get(match.group(1), match.group(1))
            bounds[name] = match.group(3)
    return bounds


def test_the_version_is_read_from_the_package():
    project = _pyproject()
    assert "version" not in project["project"]
    assert project["project"]["dynamic"] == ["version"]
    dynamic = project["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "keras_reg.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", keras_reg.__version__)


def test_the_changelog_has_a_section_for_the_version():
    assert f"\n## {keras_reg.__version__} - " in _read("CHANGELOG.md")


def test_declared_lower_bounds_are_the_checked_minimums():
    project = _pyproject()["project"]
    declared = _lower_bounds(project["dependencies"])
    for requirements in project["optional-dependencies"].values():
        for name, bound in _lower_bounds(requirements).items():
            assert declared.setdefault(name, bound) == bound, name
    assert declared == _compat.MINIMUM_VERSIONS


def test_the_oldest_stack_pins_the_lower_bounds():
    pins = {}
    for line in _read("requirements-oldest.txt").splitlines():
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^]]*\])?==([0-9.]+)", line.strip())
        if match:
            pins[PIP_TO_IMPORT.get(match.group(1), match.group(1))] = match.group(3)
    expected = dict(_compat.MINIMUM_VERSIONS)
    del expected["torch"]  # the oldest lane runs TensorFlow, JAX and tf_keras
    assert pins == expected


def test_no_extra_installs_a_cpu_only_tensorflow():
    project = _pyproject()["project"]
    for requirements in project["optional-dependencies"].values():
        assert not any(r.startswith("tensorflow-cpu") for r in requirements)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("3.8.0", (3, 8, 0)),
        ("2.13.0+cpu", (2, 13, 0)),
        ("2.16.0rc1", (2, 16, 0)),
        ("0.4.30.dev20240601", (0, 4, 30)),
        ("3", (3, 0, 0)),
    ],
)
def test_version_tuple(text, expected):
    assert _compat.version_tuple(text) == expected


def test_an_old_release_is_an_error_naming_the_version_needed():
    message = r"needs keras >= 3\.12\.0, but keras 3\.11\.3"
    with pytest.raises(ImportError, match=message):
        _compat.require("keras", "3.12.0", "keras_reg", installed="3.11.3")
    with pytest.raises(ImportError, match=r"pip install -U 'tf-keras>=2\.16\.0'"):
        _compat.require("tf_keras", "2.16.0", "keras_reg", installed="2.15.1")
    _compat.require("keras", "3.12.0", "keras_reg", installed="3.12.0")
    _compat.require("torch", "2.13.0", "keras_reg", installed="2.13.0+cpu")


def test_importing_with_an_old_keras_fails_at_once(monkeypatch):
    monkeypatch.setattr(keras, "__version__", "3.11.3")
    with pytest.raises(ImportError, match=r"keras_reg needs keras >= 3\.12\.0"):
        _compat.check_installed_versions()


def test_the_installed_stack_is_in_range():
    _compat.check_installed_versions()
