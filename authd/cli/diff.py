"""`authd diff OLD NEW`: who gains, loses or changes access between two mapping sources.

Exit codes (docs/validate.md): 0 the same, 1 they differ, 2 a source that cannot be read,
does not parse, or would be refused whole by its backend.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from authd.cli.validate import read_text
from authd.errors import ConfigError

if TYPE_CHECKING:
    from authd.mapping import Entry
    from authd.mapping.diff import Effective


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    """Register `diff` and its flags."""
    p = sub.add_parser("diff", parents=parents, help="compare the mappings of two sources")
    p.add_argument("old", metavar="OLD", help="the mapping source before")
    p.add_argument("new", metavar="NEW", help="the mapping source after")
    p.add_argument("-o", "--output", default=None, help="json for one JSON document")
    p.set_defaults(run=run, error_prefix="authd diff: ")


def _read(path: str) -> Effective:
    """One source as its backend applies it; its parser's warnings go to stderr.

    Raises:
        ConfigError: the file cannot be read, is no mapping source, or is refused whole.
    """
    from authd.mapping.diff import effective  # the parser stays light for `authd token`
    from authd.mapping.lint import KindError

    try:
        source = effective(read_text(path), src=path)
    except KindError as exc:
        raise ConfigError(f"{path}: {exc}", path=path) from exc
    for warning in source.warnings:
        print(f"authd diff: warning: {warning}", file=sys.stderr)
    return source


def _show(entry: Entry | None) -> str:
    """`username [groups]` for human output."""
    if entry is None:
        return "(none)"
    return f"username={entry.username!r} groups=[{', '.join(entry.groups)}]"


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Compare OLD and NEW; print the changes; exit 0 when the same, 1 when they differ."""
    from authd.mapping.diff import compare

    del env
    try:
        old, new = _read(args.old), _read(args.new)
    except ConfigError as exc:
        print(f"authd diff: {exc}", file=sys.stderr)
        return 2
    result = compare(old, new)
    if args.output == "json":
        print(json.dumps(result.as_json(), indent=2))
    elif not result.changes:
        print("no changes")
    else:
        marks = {"added": "+", "removed": "-", "changed": "~"}
        for change in result.changes:
            line = f"{marks[change.change]} {change.key} ({change.kind})"
            if change.change == "changed":
                line += f": {_show(change.before)} -> {_show(change.after)}"
            else:
                line += f": {_show(change.after or change.before)}"
            print(line)
        for key in result.loses_masters:
            print(f"loses system:masters: {key}")
        for key in result.gains_masters:
            print(f"gains system:masters: {key}")
    return 1 if result.changes else 0
