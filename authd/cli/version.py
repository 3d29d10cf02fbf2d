"""`authd version`: print the version as upstream does (server 8 in docs/upstream-compat.md)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping

from authd import __commit__, __version__


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    """Register `version` and its flags."""
    p = sub.add_parser("version", parents=parents, help="print the version")
    p.add_argument("-s", "--short", action="store_true", help="print just the version")
    p.add_argument("-o", "--output", default="json", help="json or yaml")
    p.set_defaults(run=run, error_prefix="")


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Print the version in the requested shape; an unknown shape is reported, exit 0."""
    del env
    if args.short:
        print(__version__)
    elif args.output == "json":
        info = {"Version": __version__, "Commit": __commit__}
        print(json.dumps({k: v for k, v in info.items() if v}, separators=(",", ":")))
    elif args.output == "yaml":
        print(f'Version: {__version__}\nCommit: {json.dumps(__commit__)}\nDate: ""')
    else:
        print("unknown version option", file=sys.stderr)
    return 0
