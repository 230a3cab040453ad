"""Griffe extension: an ``Example:`` docstring section holding ``>>>`` lines is code.

The library's docstrings follow Keras and say ``Example:``; Griffe's Google
parser reads only ``Examples:`` as doctest code and renders ``Example:`` as an
admonition of prose, where ``>>>`` turns into nested quotes. This renames the
section header before the docstring is parsed.
"""

import re

import griffe

_HEADER = re.compile(r"^(\s*)Example:[ \t]*\n(?=(?:\s*\n)*\s*>>>)", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Reads ``Example:`` sections made of ``>>>`` lines as ``Examples:``."""

    def on_instance(self, *, obj, **kwargs):
        docstring = obj.docstring
        if docstring is not None and "Example:" in docstring.value:
            docstring.value = _HEADER.sub(r"\1Examples:\n", docstring.value)
