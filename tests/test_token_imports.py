"""kubectl runs `authd token` before every command it sends: the real command loads the token
subcommand only, and answers `--help` exactly as the whole parser does (authd/cli/__init__.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from authd.cli import COMMANDS, build_parser
from tests.conftest import BIN
from tests.crashkit import token_env

# The installed console script's body, then the subcommand modules it ended up with.
PROBE = """
import sys
from authd.cli import main
code = main(sys.argv[1:])
print(" ".join(sorted(m for m in sys.modules if m.startswith("authd.cli."))), file=sys.stderr)
sys.exit(code)
"""


def cli_modules(args: list[str], home: Path) -> set[str]:
    """The `authd.cli.*` modules loaded by a real `authd ARGS...` run (it must succeed)."""
    out = subprocess.run(
        [str(BIN / "python"), "-c", PROBE, *args],
        env=token_env(home), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return set(out.stderr.strip().splitlines()[-1].split())


def test_token_loads_no_other_subcommand(tmp_path: Path) -> None:
    others = {f"authd.cli.{name}" for name in COMMANDS if name != "token"}
    for args in (["token", "-i", "c"], ["token", "-i", "c", "--cache"]):
        modules = cli_modules(args, tmp_path)
        assert "authd.cli.token" in modules
        assert modules.isdisjoint(others), sorted(modules & others)
    # Anything else still builds the whole parser.
    assert others <= cli_modules(["version"], tmp_path)


def test_token_help_is_the_whole_parsers() -> None:
    """The one-subcommand parser prints the same help for `token` as the full one."""

    def token_help(parser_of: str | None) -> str:
        parser = build_parser(parser_of)
        action = next(a for a in parser._actions if a.dest == "command")
        return action.choices["token"].format_help()  # type: ignore[index]

    assert token_help("token") == token_help(None)
