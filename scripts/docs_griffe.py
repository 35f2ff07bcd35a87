"""Griffe extension for the API reference (mkdocs.yml): the bare doctest blocks of camloc's
docstrings (``>>>`` lines and their output, up to a blank line) become ``pycon`` code blocks,
so they render as code and their brackets are not read as Markdown links; Sphinx roles
(``:func:`name```) become plain code spans."""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|meth|class|attr|mod|data|obj|exc):(`[^`]+`)")


def fence_doctests(text: str) -> str:
    out: list[str] = []
    in_fence = in_doctest = False
    indent = ""
    for line in text.splitlines():
        stripped = line.strip()
        if in_doctest and not stripped:
            out.append(indent + "```")
            in_doctest = False
        if stripped.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and not in_doctest and stripped.startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            out.append(indent + "```pycon")
            in_doctest = True
        out.append(line if in_fence or in_doctest else ROLE.sub(r"\1", line))
    if in_doctest:
        out.append(indent + "```")
    return "\n".join(out)


class DoctestBlocks(griffe.Extension):
    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(obj.docstring.value)
