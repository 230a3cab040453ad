"""Writes one API reference page per public object into docs/api/.

The public objects are the names in ``keras_reg.__all__`` and the public names
of its public submodules (their ``__all__``, or else the names the module
defines itself). Each page holds one mkdocstrings directive (``::: name``),
rendered from the object's docstring when the site is built. The list of
pages also goes into ``docs/api/index.md`` and into the ``nav`` of
``mkdocs.yml`` between the ``# api:begin`` and ``# api:end`` markers.

Run it after adding or removing a public object:

    python scripts/api_pages.py

``tests/docs/test_api_pages.py`` fails while a page is missing or stale.
"""

import importlib
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
API = ROOT / "docs" / "api"
MKDOCS = ROOT / "mkdocs.yml"
SUBMODULES = ("callbacks", "constraints", "layers", "losses", "metrics", "regularizers")


def public_names(module):
    """Returns the public names of ``module``: its ``__all__``, or its own."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            name
            for name, value in vars(module).items()
            if not name.startswith("_")
            and getattr(value, "__module__", None) == module.__name__
        ]
    return sorted(names, key=str.lower)


def public_objects():
    """Returns ``{dotted name: object}`` of every documented public object."""
    sys.path.insert(0, str(ROOT))
    package = importlib.import_module("keras_reg")
    objects = {}
    for name in public_names(package):
        if name not in SUBMODULES:
            objects[f"keras_reg.{name}"] = getattr(package, name)
    for submodule in SUBMODULES:
        module = importlib.import_module(f"keras_reg.{submodule}")
        for name in public_names(module):
            objects[f"keras_reg.{submodule}.{name}"] = getattr(module, name)
    return objects


def page_name(dotted, names=()):
    """File name: ``keras_reg.losses.Flooding`` -> ``losses.Flooding.md``.

    Names equal but for case (``AWP`` and ``awp``) would share a file on a
    case-insensitive file system: the lower-case one (the function) gets the
    suffix ``-function``.
    """
    short = dotted.removeprefix("keras_reg.")
    clash = any(o != dotted and o.lower() == dotted.lower() for o in names)
    if clash and short.split(".")[-1][0].islower():
        short += "-function"
    return short + ".md"


def page_text(dotted):
    """Returns the page of one object: the mkdocstrings directive.

    Its heading (level 1, the full dotted name) is the page's title.
    """
    return f"::: {dotted}\n"


def section(dotted):
    """Returns the module an object is documented under."""
    parts = dotted.split(".")
    return "keras_reg" if len(parts) == 2 else f"keras_reg.{parts[1]}"


def index_text(names):
    """Returns ``docs/api/index.md``: every page, grouped by module."""
    lines = [
        "# API reference",
        "",
        "One page per public object, generated from its docstring. "
        "Everything is importable as written here, e.g. `keras_reg.FGM` or "
        "`keras_reg.losses.Flooding`.",
    ]
    current = None
    for dotted in names:
        if section(dotted) != current:
            current = section(dotted)
            lines += ["", f"## `{current}`", ""]
        short = dotted.removeprefix("keras_reg.")
        lines.append(f"- [`{short}`]({page_name(dotted, names)})")
    return "\n".join(lines) + "\n"


def nav_lines(names):
    """Returns the API reference section of the ``nav`` of ``mkdocs.yml``."""
    lines = ["  - API reference:", "      - Index: api/index.md"]
    current = None
    for dotted in names:
        if section(dotted) != current:
            current = section(dotted)
            lines.append(f"      - {current}:")
        title = dotted.split(".")[-1]
        lines.append(f"          - {title}: api/{page_name(dotted, names)}")
    return lines


def expected_files(names):
    """Returns ``{file name: text}`` of every file ``docs/api/`` must hold."""
    files = {page_name(dotted, names): page_text(dotted) for dotted in names}
    files["index.md"] = index_text(names)
    return files


def mkdocs_with_nav(text, names):
    """Returns ``mkdocs.yml``'s text with the API section of its nav rewritten."""
    lines = text.splitlines()
    begin = lines.index("  # api:begin")
    end = lines.index("  # api:end")
    return "\n".join(lines[: begin + 1] + nav_lines(names) + lines[end:]) + "\n"


def main():
    """Writes the pages, the index and the nav."""
    names = list(public_objects())
    API.mkdir(parents=True, exist_ok=True)
    files = expected_files(names)
    for stale in API.glob("*.md"):
        if stale.name not in files:
            stale.unlink()
    for name, text in files.items():
        (API / name).write_text(text)
    MKDOCS.write_text(mkdocs_with_nav(MKDOCS.read_text(), names))
    print(f"{len(names)} API pages in {API.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
