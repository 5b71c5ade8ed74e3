"""Griffe extension: show the docstrings' doctest examples and literal blocks as code.

The docstrings in ``src/`` are written for ``help()`` and for doctest: examples are bare
``>>>`` blocks and literal blocks follow a line ending in ``::``. Markdown would read a
``>>>`` block as a quotation and ``x["a"]["b"]`` as a link, so before a docstring is
rendered each ``>>>`` block (up to the next blank line) outside a Google ``Examples:``
section (griffe renders those itself) is fenced as ``pycon``, and a
closing ``::`` becomes ``:`` (its indented block already renders as code). Sphinx roles
(``:class:`X```) become inline code, and a reStructuredText simple table (``===  ===``
rules) is shown as preformatted text.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

#: a rule line of a reStructuredText simple table: ``=====  =====``
_RST_RULE = re.compile(r"^\s*=+(\s+=+)+\s*$")

#: a Sphinx cross-reference role (``:class:`~a.B```), shown as inline code ``B``
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|exc|obj|const):`~?([^`]+)`")


def _role_to_code(match: re.Match[str]) -> str:
    target = match.group(1)
    if match.group(0).split("`", 1)[1].startswith("~"):
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def fence_doctests(text: str) -> str:
    """``text`` with every ``>>>`` block in a fenced ``pycon`` code block."""
    out: list[str] = []
    lines = text.splitlines()
    in_examples = False  # inside a Google "Examples:" section, which griffe renders itself
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if stripped and line == stripped:
            in_examples = stripped.rstrip() == "Examples:"
        if stripped.startswith(">>>") and not in_examples:
            indent = line[: len(line) - len(stripped)]
            out.append(f"{indent}```pycon")
            while i < len(lines) and lines[i].strip():
                out.append(lines[i])
                i += 1
            out.append(f"{indent}```")
            continue
        if _RST_RULE.match(line):
            indent = line[: len(line) - len(stripped)]
            out.append(f"{indent}```text")
            while i < len(lines) and lines[i].strip():
                out.append(_ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1], lines[i]))
                i += 1
            out.append(f"{indent}```")
            continue
        line = _ROLE.sub(_role_to_code, line)
        if line.rstrip().endswith("::") and not stripped.startswith(("```", "..")):
            line = line.rstrip()[:-1]
        out.append(line)
        i += 1
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    """Fence the doctest examples of every object's docstring."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.is_alias or obj.docstring is None:
            return
        obj.docstring.value = fence_doctests(obj.docstring.value)
