"""The command line: parses argv and the environment, runs a subcommand, owns the exit codes.

This package is the only reader of `sys.argv` and `os.environ` for authd's own settings
(botocore still reads the AWS variables it documents). Each subcommand lives in its own module
and exposes `add_parser(subparsers, parents)` and `run(args, env) -> int`.

Exit codes, in this one place: 0 success, 1 any `AuthdError` (one line on stderr, no
traceback), 2 a usage error (argparse's own convention), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence

from authd.cli import common, version
from authd.errors import AuthdError

Runner = Callable[[argparse.Namespace, Mapping[str, str]], int]


def build_parser() -> argparse.ArgumentParser:
    """Build the whole parser: global flags work before or after the subcommand, as upstream."""
    from authd.cli import add, diff, explain, help, init, server, token, validate, verify

    parents = [common.global_flags()]
    parser = argparse.ArgumentParser(
        prog="authd",
        description="AWS IAM Authenticator for Kubernetes (drop-in for aws-iam-authenticator).",
        parents=parents,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in (token, server, init, verify, explain, version, add, validate, diff, help):
        module.add_parser(sub, parents)
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run authd with `argv` (default `sys.argv[1:]`) and `env` (default `os.environ`)."""
    environ = os.environ if env is None else env
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    runner: Runner = args.run
    try:
        return runner(args, environ)
    except AuthdError as exc:
        print(f"{args.error_prefix}{exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
