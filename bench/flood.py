"""A flood of fake tokens against the real daemon: does a user who verified before still get in?

`python -m bench flood`. The real daemon runs with its default STS protection (`--sts-qps` 50,
`--sts-burst` 100, `--sts-reserved-share` 0.5: the open lane gives unknown keys 25/s, burst 50)
against a loopback STS stand-in that accepts one access key (the user's) and answers every other
key with 403 `InvalidClientTokenId`, as STS does for a key it does not know. Then, for FLOOD_S
seconds:

- wrk (bench/wrk/flood.lua, paced) sends about 1,000 TokenReviews a second, each a distinct
  well-formed token with its own signature and its own unknown access key, so no cache helps;
- the user, whose key STS accepted once before the flood, asks for a review of a fresh token
  (a new signature, so a new STS call) every second, timing each answer.

Reported per round: the user's reviews allowed and their p99/max latency, the flood's rate,
and the STS requests the flood caused, against the open lane's bound (25/s x seconds + 50).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench import report
from bench.server import (
    BIN,
    BenchError,
    cpu_seconds,
    ensure_tools,
    free_port,
    post_review,
    sigterm_unwinds,
    spawn,
    wait_until,
)
from bench.sts_protection import make_token

SECTION = "flood"
DESCRIPTION = "1,000 fake tokens/s from unknown keys vs a user who verified before (real daemon)"
ACCOUNT = "123456789012"
USER_KEY = "AKIABENCHUSER0000000"
USER_ARN = f"arn:aws:iam::{ACCOUNT}:user/bench"
FLOOD_RATE = 1000
FLOOD_S = 30
ROUNDS = 3
WRK_THREADS = 2
# Each connection waits DELAY_MS before each request and ~5 ms for its answer here, so 26
# connections send about 1,000 a second.
WRK_CONNECTIONS = 26
DELAY_MS = 20
QPS, BURST, SHARE = 50.0, 100, 0.5
OPEN_RATE, OPEN_BURST = QPS * (1 - SHARE), BURST - int(BURST * SHARE)
P99_TARGET_MS = 100.0
LUA = Path(__file__).resolve().parent / "wrk" / "flood.lua"
CONFIG = f"""\
clusterID: bench
server:
  mapUsers:
  - userarn: {USER_ARN}
    username: bench
"""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The headers and the body go out in two writes; with Nagle's algorithm the second waits
    # for the client's delayed ACK (40 ms), which would be measured as authd's latency.
    disable_nagle_algorithm = True
    sts: KeyedSts

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        """GetCallerIdentity: the user for USER_KEY, InvalidClientTokenId for any other key."""
        known = f"X-Amz-Credential={USER_KEY}" in self.path
        self.sts.record(known)
        body: dict[str, object]
        if known:
            result = {"Arn": USER_ARN, "Account": ACCOUNT, "UserId": "AIDABENCH"}
            status, body = 200, {"GetCallerIdentityResponse": {"GetCallerIdentityResult": result}}
        else:
            error = {"Code": "InvalidClientTokenId", "Message": "invalid", "Type": "Sender"}
            status, body = 403, {"Error": error, "RequestId": "bench"}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class KeyedSts:
    """The STS stand-in; records when each request came and whether its key was the user's."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, bool]] = []
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"sts": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True

    @property
    def origin(self) -> str:
        """The STS origin authd is told to allow."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def record(self, known: bool) -> None:
        """One request, now."""
        with self._lock:
            self.calls.append((time.monotonic(), known))

    def flood_calls(self, start: float, end: float) -> list[float]:
        """When the requests of unknown keys came, between `start` and `end`."""
        with self._lock:
            return [at for at, known in self.calls if not known and start <= at <= end]

    @contextlib.contextmanager
    def running(self) -> Iterator[KeyedSts]:
        """Serve while the block runs."""
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()


def start_daemon(stack: contextlib.ExitStack, work: Path, sts: KeyedSts) -> tuple[int, Path, int]:
    """The real daemon with its default STS protection; its port, certificate and pid."""
    port = free_port()
    config = work / "config" / "config.yaml"
    config.parent.mkdir(exist_ok=True)
    config.write_text(CONFIG)
    argv = [str(BIN / "authd"), "server", "--config", str(config)]
    argv += ["--state-dir", str(work / "state"), "--generate-kubeconfig", str(work / "kc.yaml")]
    argv += ["--port", str(port), "--extra-sts-endpoint", sts.origin]
    env = {**os.environ, "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    log = work / "authd.log"
    process = spawn(stack, argv, log=log, env=env)
    wait_until(
        lambda: '"event":"listening"' in log.read_text(errors="replace"),
        what="authd",
        process=process,
        log=log,
    )
    return port, work / "state" / "cert.pem", process.pid


def write_flood(prefix: Path, sts: KeyedSts, count: int) -> None:
    """`count` fake tokens per wrk thread, each with its own signature and unknown key."""
    signed = datetime.now(UTC)
    nonce = secrets.token_hex(4)
    for thread in range(WRK_THREADS):
        lines = [
            make_token(sts.origin, signed=signed, key=f"AKIA{nonce}{thread}{n:011d}", n=n)
            for n in range(count)
        ]
        Path(f"{prefix}.{thread}").write_text("\n".join(lines) + "\n")


def run_flood(port: int, prefix: Path) -> dict[str, Any]:
    """wrk, paced to about FLOOD_RATE reviews a second, for FLOOD_S seconds; its summary."""
    wrk, _ = ensure_tools()
    argv = [wrk, f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{FLOOD_S}s", "--latency"]
    argv += ["--timeout", "5s", "-s", str(LUA), f"https://127.0.0.1:{port}"]
    argv += ["--", "tokens", str(prefix)]
    env = {**os.environ, "FLOOD_DELAY_MS": str(DELAY_MS)}
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=FLOOD_S + 60, check=False, env=env
    )
    found = [line for line in done.stdout.splitlines() if line.startswith("WRKJSON ")]
    if done.returncode != 0 or not found:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout}")
    summary: dict[str, Any] = json.loads(found[-1].removeprefix("WRKJSON "))
    if summary["short"]:
        raise BenchError(f"wrk ran out of fresh tokens ({summary['short']} short)")
    return summary


def user_reviews(
    port: int, cert: Path, origin: str, stop: threading.Event
) -> list[tuple[bool, float]]:
    """A fresh token every second until `stop`: (allowed, seconds) of each review."""
    context = ssl.create_default_context(cafile=str(cert))
    results: list[tuple[bool, float]] = []
    n = 10**6 + secrets.randbelow(10**9)
    # One kept-alive connection, as kube-apiserver keeps one; http.client sends a bytes body in
    # the same write as the headers, so no delayed ACK is measured.
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while not stop.wait(1.0):
            n += 1
            token = make_token(origin, signed=datetime.now(UTC), key=USER_KEY, n=n)
            body = json.dumps(
                {
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenReview",
                    "spec": {"token": token},
                }
            ).encode()
            started = time.perf_counter()
            conn.request("POST", "/authenticate", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = json.loads(response.read())
            elapsed = time.perf_counter() - started
            allowed = response.status == 200 and answer["status"]["authenticated"]
            results.append((bool(allowed), elapsed))
    finally:
        conn.close()
    return results


def one_round(work: Path) -> dict[str, float]:
    """Start STS and the daemon, prove the user's key, flood, and measure."""
    sts = KeyedSts()
    with contextlib.ExitStack() as stack, sts.running():
        port, cert, pid = start_daemon(stack, work, sts)
        context = ssl.create_default_context(cafile=str(cert))
        proof = make_token(sts.origin, signed=datetime.now(UTC), key=USER_KEY, n=1)
        status, answer = post_review(port, context, proof)
        if status != 200 or not answer["status"]["authenticated"]:  # type: ignore[index]
            raise BenchError(f"the user was not allowed before the flood: {status} {answer}")
        prefix = work / "flood-tokens"
        write_flood(prefix, sts, FLOOD_RATE * (FLOOD_S + 5) // WRK_THREADS)
        stop = threading.Event()
        user: list[tuple[bool, float]] = []
        thread = threading.Thread(
            target=lambda: user.extend(user_reviews(port, cert, sts.origin, stop)), daemon=True
        )
        start, cpu = time.monotonic(), cpu_seconds(pid)
        thread.start()
        flood = run_flood(port, prefix)
        stop.set()
        thread.join(timeout=20)
        end, cpu = time.monotonic(), cpu_seconds(pid) - cpu
        inside = daemon_latencies(work / "authd.log")[1:]  # the first is the proof, before
    figures = measure(user, flood, sts.flood_calls(start, end), start, end)
    figures["daemon_cpu"] = cpu / (end - start)
    figures["daemon_p99_ms"] = p99(inside) if inside else float("nan")
    return figures


def daemon_latencies(log: Path) -> list[float]:
    """The latency_ms the daemon logged for each of the user's reviews, in order."""
    found = []
    for text in log.read_text(errors="replace").splitlines():
        if '"event":"review"' in text and USER_ARN in text:
            found.append(float(json.loads(text)["latency_ms"]))
    return found


def p99(samples: list[float]) -> float:
    """The 99th percentile, nearest rank."""
    ordered = sorted(samples)
    return ordered[max(1, -(-len(ordered) * 99 // 100)) - 1]


def within_allowance(times: list[float]) -> bool:
    """Whether every stretch of the flood's STS requests fits the open lane's bucket: at most
    OPEN_RATE x its length + OPEN_BURST requests (+1 for the fencepost)."""
    times = sorted(times)
    return all(
        j - i + 1 <= OPEN_RATE * (times[j] - times[i]) + OPEN_BURST + 1
        for i in range(len(times))
        for j in range(i, len(times))
    )


def measure(
    user: list[tuple[bool, float]],
    flood: dict[str, Any],
    flood_calls: list[float],
    start: float,
    end: float,
) -> dict[str, float]:
    """The round's figures."""
    if not user:
        raise BenchError("the user made no review during the flood")
    latencies = sorted(seconds * 1000 for _, seconds in user)
    seconds = end - start
    return {
        "user_reviews": len(user),
        "user_allowed": sum(1 for ok, _ in user if ok),
        "user_p50_ms": statistics.median(latencies),
        "user_p99_ms": p99(latencies),
        "user_max_ms": latencies[-1],
        "flood_rate": flood["requests"] / (flood["duration_us"] / 1e6),
        "flood_reviews": flood["requests"],
        "flood_sts": len(flood_calls),
        "flood_sts_bound": OPEN_RATE * seconds + OPEN_BURST,
        "flood_sts_within": float(within_allowance(flood_calls)),
        "seconds": seconds,
    }


def run(*, runs: int) -> str:
    """ROUNDS rounds (the flood is long; `runs` only caps them); the section's Markdown."""
    ensure_tools()
    rounds = []
    with sigterm_unwinds():
        for round_no in range(1, min(ROUNDS, max(1, runs)) + 1):
            with tempfile.TemporaryDirectory(prefix="authd-flood-") as tmp:
                figures = one_round(Path(tmp))
            print(f"round {round_no}: {figures}", file=sys.stderr)
            rounds.append(figures)
    return render(rounds)


def render(rounds: list[dict[str, float]]) -> str:
    """The Markdown section."""
    lines = [
        "## Fake-token flood vs a user who verified before",
        "",
        f"{report.now()}, {report.machine()}. `python -m bench flood`: the real daemon with its",
        f"default STS protection ({QPS:g}/s, burst {BURST}, reserved share {SHARE:g}: unknown",
        f"keys share {OPEN_RATE:g}/s, burst {OPEN_BURST}) against a loopback STS stand-in; wrk",
        f"sends ~{FLOOD_RATE:,} fake tokens/s for {FLOOD_S} s (distinct signatures, each from its",
        "own unknown key: STS answers `InvalidClientTokenId`), while the user, whose key STS",
        "accepted once before, reviews a fresh token every second.",
        f"Target: 100% of the user's reviews allowed, p99 < {P99_TARGET_MS:g} ms; STS requests",
        "from the flood never above the open lane's allowance: in every stretch of t seconds at",
        f"most {OPEN_RATE:g}*t + {OPEN_BURST} (+1). The user's p99 inside authd is the latency",
        "the daemon logged (its own time, without the client's and the shared machine's). With",
        "29 reviews a round, p99 is the slowest one: on a shared machine one descheduled moment",
        "sets it.",
        "",
        "| round | user allowed | user p50 | user p99 | user max | user p99 inside authd "
        "| flood reviews/s | flood STS requests (bound) | every stretch within the open lane "
        "| daemon CPU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for number, r in enumerate(rounds, 1):
        lines.append(
            f"| {number} | {r['user_allowed']:.0f}/{r['user_reviews']:.0f} "
            f"| {r['user_p50_ms']:.1f} ms | {r['user_p99_ms']:.1f} ms | {r['user_max_ms']:.1f} ms "
            f"| {r['daemon_p99_ms']:.1f} ms | {r['flood_rate']:.0f} "
            f"| {r['flood_sts']:.0f} ({r['flood_sts_bound']:.0f}) "
            f"| {'yes' if r['flood_sts_within'] else 'NO'} | {r['daemon_cpu']:.0%} |"
        )
    met = all(
        r["user_allowed"] == r["user_reviews"]
        and r["user_p99_ms"] < P99_TARGET_MS
        and r["flood_sts_within"]
        for r in rounds
    )
    lines += ["", f"Target {'met' if met else 'NOT met'} in every round." if rounds else ""]
    return "\n".join(lines) + "\n"
