"""Shared by the deployment tests: the flags the real `authd server --help` lists, the
container-image and manifest files they read, and the shell blocks of the deployment docs."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
CONFIG = ROOT / "config"
_FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


@functools.cache
def server_flags() -> frozenset[str]:
    """Every option `authd server --help` lists (long and short), from the installed CLI."""
    out = subprocess.run(
        [sys.executable, "-m", "authd", "server", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    options = out.split("options:", 1)[1]
    return frozenset(_FLAG.findall(options))


def flag_name(arg: str) -> str:
    """`--state-dir=/x` -> `--state-dir`; `server` (a positional) -> `server`."""
    return arg.split("=", 1)[0]


def shell_blocks(doc: Path) -> list[list[str]]:
    """The lines of every ```sh block of the Markdown file `doc`."""
    text = doc.read_text()
    return [block.strip().splitlines() for block in re.findall(r"```sh\n(.*?)```", text, re.S)]
