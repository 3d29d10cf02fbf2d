"""`authd token`: print an ExecCredential for kubectl (token.md section B; authd.md section 7)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    """Register `token` and its flags."""
    p = sub.add_parser("token", parents=parents, help="print a token for kubectl")
    p.set_defaults(run=run, error_prefix="could not get token: ")


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Not written yet: the client issue fills this in."""
    raise NotImplementedError
