"""`python -m bench crash`: 200 SIGKILL rounds of each kind; the next start must always work.

tests/crashkit.py does the work (tests/test_crash_safety.py runs fewer rounds of the same):
a warm fork server forks real `authd` command-line children and SIGKILLs them at random points
inside their writes. Kinds: `authd init` in an empty directory (the state the server's first
start writes: cert, key, webhook kubeconfig), `authd server`'s first start itself (each next
start is waited for until it accepts connections, then stopped), and `authd token --cache`
replacing a stale cached token. After each kill the next start runs and its result is checked
(docs/RELIABILITY.md, "Crash safety").
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from bench import report
from bench.server import sigterm_unwinds
from tests import crashkit

SECTION = "crash"
DESCRIPTION = "SIGKILL during state and token-cache writes: 200 rounds each, next start checked"
ROUNDS = 200


def _row(kind: str, tally: crashkit.Tally, seconds: float) -> str:
    first, end = tally.window
    left = ", ".join(f"{name} {count}" for name, count in sorted(tally.left.items()))
    return (
        f"| {kind} | {tally.rounds} | {tally.killed} | {first * 1000:.0f}-{end * 1000:.0f} ms "
        f"| {left} | {tally.temp_files} | {len(tally.failures)} | {seconds:.0f} s |"
    )


def run(*, runs: int) -> str:
    """Run the rounds and render them (`runs` is the harness's; the round count is fixed)."""
    del runs
    with sigterm_unwinds(), tempfile.TemporaryDirectory(prefix="authd-bench-crash-") as tmp:
        server = crashkit.ForkServer()
        try:
            state, state_s = crashkit.timed(crashkit.state_rounds, server, Path(tmp), ROUNDS)
            token, token_s = crashkit.timed(crashkit.token_rounds, server, Path(tmp), ROUNDS)
            serve, serve_s = crashkit.timed(
                crashkit.server_rounds, server, Path(tmp), ROUNDS, window=state.window
            )
        finally:
            server.close()
    failures = state.failures + token.failures + serve.failures
    lines = [
        f"{report.now()}; {report.machine()}. `python -m bench crash`: real `authd` processes "
        "(forked from a warm one) killed with SIGKILL at a random point, 4 rounds in 5 inside "
        "the writes (from the first temporary file to a little past the calibrated end), 1 in "
        "5 anywhere from the fork; after each, the next start runs to the end and is checked. "
        f"Load average at the end: {os.getloadavg()[0]:.2f}.",
        "",
        "| kind | rounds | killed mid-run | calibrated first write-end (after fork) "
        "| left by the kill | temp files left | failures | time |",
        "|---|---|---|---|---|---|---|---|",
        _row("`authd init` (cert, key, kubeconfig)", state, state_s),
        _row("`authd server` first start (same files)", serve, serve_s),
        _row("`authd token --cache` (stale entry replaced)", token, token_s),
        "",
        "State check: whatever the kill left is whole (cert and key, when both present, match; "
        "a kubeconfig present parses), and the next `authd init` exits 0 leaving a matching "
        "pair and a kubeconfig whose CA data is the certificate. Token check: the cache file is "
        "the old one or a whole new one, and the next `authd token --cache` exits 0, prints a "
        "token and warns about nothing.",
        "",
        "Server check: as the state check, but the next start is `authd server`, which must "
        "accept connections on its port and exit 0 on SIGTERM (its kill points use the "
        "`authd init` calibration: the same `write_state`; a server never exits by itself, so "
        "every round is killed).",
        "",
        f"**Failures: {len(failures)}** of {state.rounds + token.rounds + serve.rounds} rounds.",
    ]
    if failures:
        lines += ["", *[f"- {failure}" for failure in failures[:20]]]
    return "\n".join(lines)
