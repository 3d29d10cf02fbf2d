"""100 reloads of the config file and the DynamicFile under review load, every tenth broken.

The real daemon process (MountedFile then DynamicFile) watches both files while four threads
review two users without pause: one mapped by the config file, one by the DynamicFile only, each
answered by its own STS stand-in (tests/fakes/sts_standin.py); one review in five carries a new
token, the rest a cached one. Version v of a file maps its user to `u<v>` in group `g<v>`.
Every tenth reload is broken, each way twice: bad YAML, truncated JSON, a directory, a mode-000
file (as root the daemon runs without CAP_DAC_OVERRIDE; see bench/reload_storm.py), a FIFO.

The storm helpers are bench/reload_storm.py's (shared with `python -m bench reload-storm`):
each reload waits until the daemon has logged that version as applied, with its own sha256, or
refused, naming the file, and fails on any other outcome in between.
"""

from __future__ import annotations

import secrets
import ssl
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from bench.reload_storm import (
    ACCOUNT,
    ARNS,
    BREAKAGES,
    Storm,
    daemon_prefix,
    expected_counts,
    growth,
    prefix_works,
    reload_counters,
    running_daemon,
)
from tests.daemon import base_env
from tests.fakes.sts_standin import StsStandIn

RELOADS = 100
THREADS_PER_USER = 2


@pytest.fixture
def standins() -> Iterator[dict[str, StsStandIn]]:
    """One STS stand-in per user, stopped after the test."""
    servers = {
        file: StsStandIn(
            identity={"Arn": arn, "Account": ACCOUNT, "UserId": f"AIDA{file.upper()}"}
        ).start()
        for file, arn in ARNS.items()
    }
    yield servers
    for server in servers.values():
        server.stop()


def test_reload_storm_loses_no_review_and_counts_every_broken_version(
    tmp_path: Path, standins: dict[str, StsStandIn]
) -> None:
    """Zero failed or wrong reviews; every good version applied; every broken one counted
    (backend and source counters) and logged exactly once."""
    try:
        prefix = daemon_prefix()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    if not prefix_works(prefix, tmp_path):
        pytest.skip("root here cannot give up CAP_DAC_OVERRIDE (setpriv), so mode 000 reads")
    paths = {"config": tmp_path / "config.yaml", "dynamic": tmp_path / "dynamic.json"}
    storm = Storm(paths, [], BREAKAGES)
    storm.write_initial()
    ports = {file: int(urlsplit(s.url).port or 0) for file, s in standins.items()}
    with running_daemon(tmp_path, ports, env=base_env()) as (port, logs):
        storm.lines = logs.lines
        context = ssl.create_default_context(cafile=str(tmp_path / "state" / "cert.pem"))
        base = f"https://127.0.0.1:{port}"
        with httpx.Client(base_url=base, verify=context, timeout=10) as client:
            before = reload_counters(client.get("/metrics").text)
            threads = [
                threading.Thread(target=_review, args=(storm, file, base, context, standins[file]))
                for file in paths
                for _ in range(THREADS_PER_USER)
            ]
            for thread in threads:
                thread.start()
            try:
                for k in range(1, RELOADS + 1):
                    storm.reload(k)  # raises unless this version's own outcome is logged
            finally:
                storm.stop.set()
                for thread in threads:
                    thread.join(timeout=30)
            after = reload_counters(client.get("/metrics").text)
        refusals = storm.logged_refusals()

    tally = storm.tally
    assert tally.failed == 0 and tally.wrong == 0, tally.examples
    assert tally.reviews >= 100 and tally.new_tokens >= 20  # the load really ran meanwhile
    assert tally.reloads == RELOADS
    assert sum(tally.applied.values()) == RELOADS - RELOADS // 10
    kinds = Counter(kind for kind, _ in tally.broken.elements())
    assert set(kinds) == set(BREAKAGES) and min(kinds.values()) >= 2, kinds
    assert {file for _, file in tally.broken} == {"config", "dynamic"}
    assert refusals == RELOADS // 10  # one log line per broken version, no more
    grew = growth(before, after)
    assert {key: grew.get(key) for key in expected_counts(tally)} == expected_counts(tally)


def _review(
    storm: Storm, file: str, base: str, context: ssl.SSLContext, standin: StsStandIn
) -> None:
    """Review `file`'s user until the storm ends; new tokens come from its stand-in."""

    def new_token() -> str:
        return standin.token(signature=secrets.token_hex(32))

    with httpx.Client(base_url=base, verify=context, timeout=10) as client:
        storm.review_loop(file, client, new_token)
