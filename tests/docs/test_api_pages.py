"""Every public object has a docstring and a reference page in the site."""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "api_pages", ROOT / "scripts" / "api_pages.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


API_PAGES = _load_script()
OBJECTS = API_PAGES.public_objects()
NAMES = list(OBJECTS)
RUN = "run `python scripts/api_pages.py`."


def test_the_public_objects_are_found():
    # Both kinds of submodule listing (with and without __all__) are walked.
    assert "keras_reg.FGM" in OBJECTS
    assert "keras_reg.losses.Flooding" in OBJECTS
    assert "keras_reg.callbacks.RegularizationScope" in OBJECTS
    assert not any(name.split(".")[-1].startswith("_") for name in OBJECTS)


def test_every_public_object_has_a_docstring():
    # Its own: inspect.getdoc would inherit a base class's docstring.
    missing = [name for name in NAMES if not (OBJECTS[name].__doc__ or "").strip()]
    assert not missing, f"No docstring (the API page would be empty): {missing}"


def test_every_public_object_has_its_page():
    missing = [
        name
        for name in NAMES
        if f"::: {name}\n"
        not in _read(ROOT / "docs" / "api" / API_PAGES.page_name(name, NAMES))
    ]
    assert not missing, f"No reference page: {missing}; {RUN}"


def _read(path):
    return path.read_text() if path.is_file() else ""


def test_the_pages_and_the_nav_are_up_to_date():
    expected = API_PAGES.expected_files(NAMES)
    pages = (ROOT / "docs" / "api").glob("*.md")
    present = {path.name: path.read_text() for path in pages}
    assert present == expected, f"Stale API pages: {RUN}"
    mkdocs = (ROOT / "mkdocs.yml").read_text()
    assert API_PAGES.mkdocs_with_nav(mkdocs, NAMES) == mkdocs, (
        f"The API section of mkdocs.yml's nav is stale: {RUN}"
    )
