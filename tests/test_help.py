"""`authd help [COMMAND]` and the console scripts, through the installed entry points.

Upstream's install check runs `aws-iam-authenticator help`; tarmak calls the client
`aws-iam-authenticator-aws`.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from tests.conftest import RunAuthd
from tests.daemon import base_env

COMMANDS = ["token", "server", "init", "verify", "explain", "version", "add", "validate", "diff"]
ENV = base_env(COLUMNS="100")


def test_help_is_the_top_level_usage(run_authd: RunAuthd) -> None:
    """`authd help` prints what `authd --help` prints, exit 0."""
    helped = run_authd(["help"], ENV)
    flagged = run_authd(["--help"], ENV)
    assert (helped.returncode, flagged.returncode) == (0, 0)
    assert helped.stdout == flagged.stdout
    assert "COMMAND" in helped.stdout and "help" in helped.stdout


@pytest.mark.parametrize("command", [*COMMANDS, "help"])
def test_help_command_is_its_help_flag(run_authd: RunAuthd, command: str) -> None:
    """`authd help X` prints what `authd X --help` prints, exit 0."""
    helped = run_authd(["help", command], ENV)
    flagged = run_authd([command, "--help"], ENV)
    assert (helped.returncode, flagged.returncode) == (0, 0)
    assert helped.stdout == flagged.stdout
    assert helped.stdout.startswith(f"usage: authd {command} ")


def test_upstream_install_check(run_authd: RunAuthd) -> None:
    """`aws-iam-authenticator help`, as upstream's install check runs it, succeeds."""
    out = run_authd(["help"], ENV, program="aws-iam-authenticator")
    assert out.returncode == 0
    assert out.stdout == run_authd(["--help"], ENV).stdout


def test_help_for_an_unknown_command(run_authd: RunAuthd) -> None:
    """One line on stderr naming it and the commands there are; exit 2; nothing on stdout."""
    out = run_authd(["help", "nosuch"], ENV)
    assert out.returncode == 2
    assert out.stdout == ""
    [line] = out.stderr.splitlines()
    known = ", ".join(sorted([*COMMANDS, "help"]))
    assert line == f'authd help: unknown command "nosuch" (commands: {known})'


def test_tarmak_client_name_is_installed(run_authd: RunAuthd) -> None:
    """`aws-iam-authenticator-aws` is a console script of the package, on authd's main, and
    answers as authd does."""
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts["aws-iam-authenticator-aws"] == scripts["aws-iam-authenticator"]
    assert scripts["aws-iam-authenticator-aws"] == "authd.cli:main"
    for args in (["version"], ["token", "--help"]):
        tarmak = run_authd(args, ENV, program="aws-iam-authenticator-aws")
        plain = run_authd(args, ENV)
        assert (tarmak.returncode, tarmak.stdout) == (0, plain.stdout)
    no_cluster = run_authd(["token"], ENV, program="aws-iam-authenticator-aws")
    assert no_cluster.returncode != 0 and no_cluster.stderr
