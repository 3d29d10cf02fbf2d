"""The command line: parses argv and the environment, runs a subcommand, owns the exit codes.

This package is the only reader of `sys.argv` and `os.environ` for authd's own settings
(botocore still reads the AWS variables it documents). Each subcommand lives in its own module
and exposes `add_parser(subparsers, parents)` and `run(args, env) -> int`.

Exit codes, in this one place: 0 success, 1 any `AuthdError` (one line on stderr, no
traceback), 2 a usage error (argparse's own convention), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence

from authd.cli import common
from authd.errors import AuthdError

Runner = Callable[[argparse.Namespace, Mapping[str, str]], int]

COMMANDS = (
    "token", "server", "init", "verify", "explain", "version", "add", "validate", "diff", "help"
)  # fmt: skip
"""The subcommands, each the module `authd.cli.<name>`, in the order `--help` lists them."""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Build the parser: global flags work before or after the subcommand, as upstream.

    With `only`, just that subcommand is registered (and its module imported): `main` does so
    for `token`, which kubectl runs before every command it sends, so the other subcommands'
    modules never load there (docs/BENCHMARKS.md, the token start-up).
    """
    parents = [common.global_flags()]
    parser = argparse.ArgumentParser(
        prog="authd",
        description="AWS IAM Authenticator for Kubernetes (drop-in for aws-iam-authenticator).",
        parents=parents,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS if only is None else (only,):
        importlib.import_module(f"authd.cli.{name}").add_parser(sub, parents)
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run authd with `argv` (default `sys.argv[1:]`) and `env` (default `os.environ`)."""
    environ = os.environ if env is None else env
    arguments = list(sys.argv[1:] if argv is None else argv)
    # `token` first: nothing before it, so only its parser can apply (kubectl's exec stanza).
    only = "token" if arguments[:1] == ["token"] else None
    args = build_parser(only).parse_args(arguments)
    runner: Runner = args.run
    try:
        return runner(args, environ)
    except AuthdError as exc:
        print(f"{args.error_prefix}{exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
