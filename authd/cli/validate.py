"""`authd validate FILE...`: lint mapping sources of every kind, findings with rule codes.

Exit codes (docs/validate.md): 0 clean or warnings only, 1 any error (or any warning with
`--strict`), 2 a usage error or a file that cannot be read or is no mapping source.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from authd.errors import ConfigError

if TYPE_CHECKING:
    from authd.mapping.lint import Finding


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    """Register `validate` and its flags."""
    p = sub.add_parser(
        "validate",
        parents=parents,
        help="lint config files, DynamicFiles, aws-auth and IAMIdentityMapping manifests",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="files to lint (kind from content)")
    p.add_argument("-o", "--output", default=None, help="json for one JSON document")
    p.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    p.set_defaults(run=run, error_prefix="authd validate: ")


def role_path_match(feature_gates: str | None) -> bool:
    """The `RolePathMatch` gate from `--feature-gates`.

    Raises:
        ConfigError: the flag does not parse.
    """
    from authd.config import FeatureGates  # the parser stays light for `authd token`

    gates = FeatureGates.parse(feature_gates or "")
    return gates.role_path_match


def read_text(path: str) -> str:
    """A file's text.

    Raises:
        ConfigError: it cannot be read or is not UTF-8; the message names the file.
    """
    try:
        return Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}", path=path) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})", path=path) from exc


def _count(number: int, noun: str) -> str:
    """`1 error`, `2 errors`."""
    return f"{number} {noun}{'s' * (number != 1)}"


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Lint every file, print the findings sorted by file then line, and pick the exit code."""
    from authd.mapping.lint import ERROR, WARNING, KindError, lint_text, sort_findings

    del env
    findings: list[Finding] = []
    try:
        match = role_path_match(args.feature_gates)
        for path in args.files:
            try:
                findings.extend(lint_text(read_text(path), src=path, role_path_match=match))
            except KindError as exc:
                raise ConfigError(f"{path}: {exc}", path=path) from exc
    except ConfigError as exc:
        print(f"authd validate: {exc}", file=sys.stderr)
        return 2
    findings = sort_findings(findings)
    errors = sum(f.severity == ERROR for f in findings)
    warnings = sum(f.severity == WARNING for f in findings)
    if args.output == "json":
        document = {
            "findings": [f.as_json() for f in findings],
            "errors": errors,
            "warnings": warnings,
        }
        print(json.dumps(document, indent=2))
    else:
        for finding in findings:
            print(finding.text())
        print(
            f"{_count(len(args.files), 'file')}: {_count(errors, 'error')}, "
            f"{_count(warnings, 'warning')}"
        )
    return 1 if errors or (args.strict and warnings) else 0
