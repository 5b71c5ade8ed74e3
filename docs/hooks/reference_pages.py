"""MkDocs hook: the reference pages generated from the code at build time.

- ``reference/config.md``: every key of the training config, walked generically from the
  config dataclasses (nested dataclass fields, their type, default and ``metadata["help"]``),
  so it needs no change when a section is added, renamed or retyped;
- ``reference/cli.md``: the help of ``focalsam`` and of every subcommand of
  :func:`focalsam.cli.build_parser`, so a new subcommand appears by itself;
- ``reference/presets.md``: every preset as the dotted keys it sets.

Nothing is written into ``docs/``: the pages exist only in the built site.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import inspect
import os
from typing import Any

from mkdocs.structure.files import File, Files

#: argparse wraps its help to the terminal width; fix it so the pages do not depend on it
_HELP_COLUMNS = "100"


def on_files(files: Files, config: Any) -> Files:
    """Add the generated reference pages to the site."""
    pages = {
        "reference/config.md": config_reference(),
        "reference/cli.md": cli_reference(),
        "reference/presets.md": presets_reference(),
    }
    for path, content in pages.items():
        files.append(File.generated(config, path, content=content))
    return files


# -- config ---------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    """A field's annotation as text (a string under ``from __future__ import annotations``)."""
    if isinstance(tp, str):
        return tp
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    """Inline code inside a Markdown table cell (a code span would show ``\\|`` as is)."""
    return "<code>" + html.escape(text).replace("|", "&#124;").replace("\n", " ") + "</code>"


def _section_doc(cls: type) -> str:
    """A dataclass's own docstring (not the generated ``Name(field: type, ...)`` one)."""
    doc = cls.__doc__ or ""
    if doc.startswith(f"{cls.__name__}("):
        return ""
    return inspect.cleandoc(doc)


def _walk(instance: Any, prefix: str, rows: list[tuple[str, ...]], sections: list[Any]) -> None:
    """Every leaf of a config dataclass instance, depth first, in declaration order."""
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            sections.append((key, type(value)))
            _walk(value, key + ".", rows, sections)
        else:
            rows.append((key, _type_name(f.type), repr(value), f.metadata.get("help", "")))


def config_reference() -> str:
    """The config reference: one table per top-level section, every key."""
    from focalsam.train import config as config_module

    root = config_module.TrainConfig()
    short_keys: dict[str, str] = getattr(config_module, "SHORT_KEYS", {})
    short_of: dict[str, list[str]] = {}
    for short, key in short_keys.items():
        if short != key:
            short_of.setdefault(key, []).append(short)

    rows: list[tuple[str, ...]] = []
    sections: list[Any] = []
    _walk(root, "", rows, sections)

    out = [
        "# Configuration reference",
        "",
        "Every setting of `focalsam train` (and of each run of `focalsam compare`), generated "
        "from the config schema when this site is built. Set any key as `KEY=VALUE` on the "
        "command line (`optim.focal_sam.gamma=2`), in a YAML file (`--config my.yaml`, nested "
        "by section) or through a preset; the short names work in both places (`lr=0.05`). "
        "Layering: schema defaults, then the preset, then the YAML file, then flags and "
        "`KEY=VALUE`.",
        "",
        "`focalsam train --preset NAME --print-config` prints the whole config a command "
        "would run with.",
        "",
    ]
    top_level = [r for r in rows if "." not in r[0]]
    if top_level:
        out += ["## Top level", "", "| key | type | default | help |", "|---|---|---|---|"]
        out += [f"| `{k}` | {_code(t)} | {_code(d)} | {_cell(h)} |" for k, t, d, h in top_level]
        out.append("")
    for key, cls in sections:
        depth = key.count(".")
        out += ["#" * (2 + depth) + f" `{key}`", ""]
        doc = _section_doc(cls)
        if doc:
            out += [doc, ""]
        leaves = [r for r in rows if r[0].rsplit(".", 1)[0] == key]
        if not leaves:
            continue
        out += ["| key | short | type | default | help |", "|---|---|---|---|---|"]
        for k, t, d, h in leaves:
            short = ", ".join(f"`{s}`" for s in sorted(short_of.get(k, [])))
            out.append(f"| `{k}` | {short} | {_code(t)} | {_code(d)} | {_cell(h)} |")
        out.append("")
    return "\n".join(out)


# -- command line ---------------------------------------------------------------------------


def _subcommands(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """Every subcommand, nested ones included, depth first: ``(name, summary, parser)``
    with ``name`` the words after ``focalsam`` (``"train"``, or ``"a b"`` when nested)."""
    out: list[tuple[str, str, argparse.ArgumentParser]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {c.dest: c.help or "" for c in action._choices_actions}
            for word, sub in action.choices.items():
                name = prefix + word
                out.append((name, summaries.get(word, ""), sub))
                out += _subcommands(sub, name + " ")
    return out


def cli_reference() -> str:
    """The CLI reference: ``focalsam --help`` and every subcommand's ``--help``."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = _HELP_COLUMNS
    try:
        from focalsam.cli import build_parser

        parser = build_parser()
        subcommands = _subcommands(parser)
        out = [
            "# Command-line reference",
            "",
            "The help of every `focalsam` command, generated from the command's own parser "
            "when this site is built (`focalsam COMMAND --help` prints the same).",
            "",
            "| command | what it does |",
            "|---|---|",
        ]
        anchors = {name: name.replace(" ", "-") for name, _, _ in subcommands}
        out += [
            f"| [`{name}`](#{anchors[name]}) | {_cell(summary)} |"
            for name, summary, _ in subcommands
        ]
        out += ["", "## `focalsam`", "", "```text", parser.format_help().rstrip(), "```", ""]
        for name, _, sub in subcommands:
            out += [f"## `focalsam {name}` {{#{anchors[name]}}}", ""]
            out += ["```text", sub.format_help().rstrip(), "```", ""]
        return "\n".join(out)
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


# -- presets --------------------------------------------------------------------------------


def _flatten(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append((prefix + key, value))
    return out


def presets_reference() -> str:
    """Every preset: its description and the keys it sets over the schema defaults."""
    from focalsam.train import presets

    descriptions: dict[str, str] = getattr(presets, "DESCRIPTIONS", {})
    out = [
        "# Presets reference",
        "",
        "Every preset (`focalsam train --preset NAME`), generated from the presets when this "
        "site is built: the keys each one sets over the schema defaults (see the "
        "[configuration reference](config.md)). Flags, `KEY=VALUE` and a YAML file are "
        "applied over the preset.",
        "",
    ]
    for name in presets.list_presets():
        out += [f"## `{name}`", ""]
        if name in descriptions:
            out += [descriptions[name], ""]
        out += ["| key | value |", "|---|---|"]
        out += [f"| `{k}` | {_code(repr(v))} |" for k, v in _flatten(presets.get_preset(name))]
        out.append("")
    return "\n".join(out)
