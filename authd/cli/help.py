"""`authd help [COMMAND]`: the same text as `authd --help` / `authd COMMAND --help`, exit 0.

Upstream's CLI (cobra) has a `help` command, and install checks run `aws-iam-authenticator
help`. An unknown COMMAND is one line on stderr, exit 2 (a usage error).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    """Register `help`; it prints the help of the subcommands registered on `sub`."""
    p = sub.add_parser("help", parents=parents, help="show the help of authd or of a command")
    p.add_argument("topic", nargs="?", metavar="COMMAND", help="the command to explain")
    # `sub.choices` is filled as commands are registered: by the time `run` reads it, all are.
    p.set_defaults(run=run, error_prefix="", help_topics=sub.choices)


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Print the help asked for; 0, or 2 for an unknown command."""
    del env
    topics: Mapping[str, argparse.ArgumentParser] = args.help_topics
    if args.topic is None:
        from authd.cli import build_parser

        build_parser().print_help()
        return 0
    parser = topics.get(args.topic)
    if parser is None:
        known = ", ".join(sorted(topics))
        print(f'authd help: unknown command "{args.topic}" (commands: {known})', file=sys.stderr)
        return 2
    parser.print_help()
    return 0
