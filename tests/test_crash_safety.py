"""SIGKILL at random points while authd writes: the next start always works.

tests/crashkit.py runs the rounds (real `authd` processes forked from a warm one and killed
during their writes); docs/RELIABILITY.md ("Crash safety") has the method and the 200-round
figures of `python -m bench crash`. The suite runs fewer rounds to stay fast.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from authd.files import STALE_TEMPORARY, write_atomic
from tests import crashkit

# Each state round generates two RSA keys (the killed run and the next start): fewer of them.
STATE_ROUNDS = 20
TOKEN_ROUNDS = 40
SERVER_ROUNDS = 10  # each waits for the next start to accept connections


@pytest.fixture(scope="module")
def forks() -> Iterator[crashkit.ForkServer]:
    """The warm process the rounds' children are forked from."""
    server = crashkit.ForkServer()
    try:
        yield server
    finally:
        server.close()


def test_state_files_survive_sigkill_during_their_writes(
    forks: crashkit.ForkServer, tmp_path: Path
) -> None:
    """`authd init` (the writes of the server's first start) killed at random during key
    generation and the three writes: the next start exits 0 with a whole matching cert and key
    and a kubeconfig carrying that cert, every time."""
    tally = crashkit.state_rounds(forks, tmp_path, STATE_ROUNDS)
    assert tally.failures == []
    # The kills landed inside the writes: runs were cut, and at different stages.
    assert tally.killed > 0
    assert len(tally.left) >= 2, tally.summary()


def test_server_first_start_survives_sigkill_during_its_writes(
    forks: crashkit.ForkServer, tmp_path: Path
) -> None:
    """`authd server` killed during the writes of its first start: the next `authd server`
    accepts connections, exits 0 on SIGTERM, and leaves whole, consistent files."""
    window = crashkit.calibrate_state(forks, tmp_path)
    tally = crashkit.server_rounds(forks, tmp_path, SERVER_ROUNDS, window=window)
    assert tally.failures == []
    assert tally.killed == SERVER_ROUNDS  # a server does not exit by itself


def test_token_cache_survives_sigkill_while_it_is_stored(
    forks: crashkit.ForkServer, tmp_path: Path
) -> None:
    """`authd token --cache` killed while it replaces a stale cached token: the file is the old
    one or a whole new one, and the next run prints a token without a warning."""
    tally = crashkit.token_rounds(forks, tmp_path, TOKEN_ROUNDS)
    assert tally.failures == []
    assert tally.killed > 0
    assert tally.left["old"] + tally.left["new"] == TOKEN_ROUNDS, tally.summary()


def test_corrupt_token_cache_is_ignored_with_a_message_and_replaced(
    forks: crashkit.ForkServer, tmp_path: Path
) -> None:
    """A cache file that is not a whole document (as a crash without atomic writes would leave)
    is named in a warning, a fresh token is printed, and the file is replaced by a good one."""
    home = tmp_path / "home"
    home.mkdir()
    env = crashkit.token_env(home)
    first = forks.run(crashkit.TOKEN_ARGV, cwd=home, env=env)
    assert first.code == 0, first.stderr
    (cached,) = crashkit.token_files(home)
    whole = cached.read_bytes()
    cached.write_bytes(whole[: len(whole) // 2])
    torn = forks.run(crashkit.TOKEN_ARGV, cwd=home, env=env)
    assert torn.code == 0
    assert f"ignoring token cache file {cached}: not valid JSON" in torn.stderr
    assert json.loads(torn.stdout)["status"]["token"].startswith("k8s-aws-v1.")
    assert json.loads(cached.read_bytes())["format"] == "authd-token-cache/v1"
    again = forks.run(crashkit.TOKEN_ARGV, cwd=home, env=env)
    assert (again.code, again.stderr) == (0, "")
    assert json.loads(again.stdout) == json.loads(torn.stdout)  # served from the cache


def test_temporary_files_of_killed_writers_are_swept_once_stale(tmp_path: Path) -> None:
    """What a writer killed between creating its temporary file and the rename leaves behind is
    removed by the next write of that file once it is older than `STALE_TEMPORARY`; a recent
    one (maybe a concurrent writer's) and other files' are kept."""
    stale = tmp_path / ".cert.pem.abc123.tmp"
    recent = tmp_path / ".cert.pem.def456.tmp"
    other = tmp_path / ".key.pem.abc123.tmp"
    for path in (stale, recent, other):
        path.write_text("half")
    old = time.time() - STALE_TEMPORARY - 60
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    write_atomic(tmp_path / "cert.pem", b"new", mode=0o644)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["cert.pem", recent.name, other.name]
    )
    os.utime(recent, (old, old))
    write_atomic(tmp_path / "cert.pem", b"new", mode=0o644)  # unchanged: still swept
    assert not recent.exists()
