"""MkDocs hook: the command-line reference (docs/cli.md) is written from the commands
themselves at build time, so it cannot drift from `camloc --help`. Nothing generated is
committed. Used by mkdocs.yml (`hooks:`)."""

from __future__ import annotations

import re

MARKER = "<!-- cli-reference -->"


def _text(value) -> str:
    """Help text as Markdown: typer's markup escapes undone, one paragraph per blank line."""
    return re.sub(r"\\\[", "[", (value or "").strip())


def _cell(value) -> str:
    return _text(value).replace("|", "\\|").replace("\n", " ")


def _kind(param) -> str:
    """What the option takes: its choices, else its type's name (click's or typer's own)."""
    import enum
    import typing

    kind = getattr(param, "type", None)
    if kind is None:  # typer >= 0.2x keeps the annotation instead of a click type
        descriptor = getattr(param, "type_descriptor", None)
        kind = getattr(descriptor, "annotation", None)
    while typing.get_args(kind) and not hasattr(kind, "choices"):  # list[X], X | None -> X
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    choices = getattr(kind, "choices", None)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        choices = [member.value for member in kind]
    if choices:
        return " \\| ".join(f"`{c}`" for c in choices)
    name = next((n for n in (getattr(kind, "name", None), getattr(kind, "__name__", None)) if isinstance(n, str)),
                str(kind))
    return f"`{name.upper()}`"


def _option_row(param) -> str:
    names = ", ".join(f"`{n}`" for n in [*param.opts, *getattr(param, "secondary_opts", [])])
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        kind = "flag"
    else:
        kind = _kind(param)
        if getattr(param, "multiple", False):
            kind += " (repeatable)"
    default = param.default
    if default is None or default == () or getattr(param, "required", False) or callable(default):
        shown = "required" if getattr(param, "required", False) else ""
    else:
        shown = f"`{getattr(default, 'value', default)}`"
    return f"| {names} | {kind} | {shown} | {_cell(getattr(param, 'help', ''))} |"


def cli_reference() -> str:
    import typer

    from camloc.cli import app

    group = typer.main.get_command(app)
    lines = [_text(group.help), ""]
    for name, command in group.commands.items():
        arguments = [p for p in command.params if p.param_type_name == "argument"]
        options = [p for p in command.params if p.param_type_name == "option"]
        usage = " ".join(["camloc", name, *(f"{a.name.upper()}{'...' if a.nargs == -1 else ''}"
                                             for a in arguments), "[OPTIONS]" if options else ""]).strip()
        lines += [f"## camloc {name}", "", f"```\n{usage}\n```", "", _text(command.help), ""]
        if arguments:
            lines += ["| argument | help |", "| --- | --- |"]
            lines += [f"| `{a.name.upper()}` | {_cell(getattr(a, 'help', ''))} |" for a in arguments]
            lines.append("")
        if options:
            lines += ["| option | value | default | help |", "| --- | --- | --- | --- |"]
            lines += [_option_row(p) for p in options]
            lines.append("")
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, cli_reference())
    return markdown
