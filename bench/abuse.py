"""`python -m bench abuse`: a well-behaved client's cache-hit reviews while the daemon is abused.

The real daemon (default limits) with the server bench's nginx STS stand-in (bench/server.py's
helpers, reused). One well-behaved client, like kube-apiserver, keeps one TLS keep-alive
connection and sends a review of one token (every review after the first answered from the
identity cache) every 5 ms, timing each. First a quiet window, then the same window while a
separate abuser process (so that it does not share the client's interpreter) keeps up, each
from its own loopback address so the per-client cap does not fold them into one:

- hundreds of idle connections that never send a byte (reopened when the header deadline
  closes them);
- slowloris: TLS connections sending their head a byte a second (answered 408, reopened);
- TLS handshakes that never finish: half a ClientHello, then nothing (closed, reopened);
- oversized bodies in a loop: 2 MiB POSTs (413) and 32 KiB heads (431), back to back.

Target: the well-behaved client's p99 stays under 50 ms while the abuse runs.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import report
from bench.server import (
    ensure_tools,
    rss_mib,
    sigterm_unwinds,
)
from bench.sts_protection import start_hit_daemon

SECTION = "abuse"
DESCRIPTION = "cache-hit review latency under idle, slowloris, half-handshake, oversize abuse"
WARMUP_S = 5
MEASURE_S = 20
INTERVAL_S = 0.005
TARGET_P99_MS = 50.0
IDLE = 300
SLOWLORIS = 50
HANDSHAKES = 50
OVERSIZE_LOOPS = 4

# The abuser: one trio process; prints its counts as JSON when SIGTERM'd. argv: port, cert.
ABUSER = r"""
import json, signal, ssl, sys, trio
port, cert = int(sys.argv[1]), sys.argv[2]
IDLE, SLOWLORIS, HANDSHAKES, LOOPS = (int(a) for a in sys.argv[3:7])
context = ssl.create_default_context(cafile=cert)
counts = {k: 0 for k in ("idle_opened", "idle_closed_by_server", "slowloris_opened",
          "slowloris_408", "slowloris_bytes", "handshake_opened", "handshake_closed_by_server",
          "body_413", "head_431", "oversize_other", "connect_errors")}
incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
try:
    context.wrap_bio(incoming, outgoing, server_hostname="localhost").do_handshake()
except ssl.SSLWantReadError:
    pass
HELLO = outgoing.read()

async def connect(source):
    try:
        return await trio.open_tcp_stream("127.0.0.1", port, local_address=source)
    except OSError:
        counts["connect_errors"] += 1
        await trio.sleep(0.5)
        return None

async def until_closed(stream):
    try:
        while await stream.receive_some(65536):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass

async def idle(source):
    while True:
        stream = await connect(source)
        if stream is None:
            continue
        counts["idle_opened"] += 1
        await until_closed(stream)
        counts["idle_closed_by_server"] += 1
        await stream.aclose()

async def handshake(source):
    while True:
        stream = await connect(source)
        if stream is None:
            continue
        counts["handshake_opened"] += 1
        try:
            await stream.send_all(HELLO[: len(HELLO) // 2])
        except trio.BrokenResourceError:
            pass
        await until_closed(stream)
        counts["handshake_closed_by_server"] += 1
        await stream.aclose()

async def tls(source):
    stream = await connect(source)
    if stream is None:
        return None
    tls = trio.SSLStream(stream, context, server_hostname="localhost")
    try:
        await tls.do_handshake()
    except (trio.BrokenResourceError, ssl.SSLError):
        counts["connect_errors"] += 1
        return None
    return tls

async def answer(stream):
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    except trio.BrokenResourceError:
        pass
    return data.split(b" ")[1] if data.startswith(b"HTTP/1.1 ") else b""

async def slowloris(source):
    head = b"POST /authenticate HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"s" * 1000
    while True:
        stream = await tls(source)
        if stream is None:
            continue
        counts["slowloris_opened"] += 1
        async with trio.open_nursery() as nursery:
            async def trickle():
                for byte in head:
                    try:
                        await stream.send_all(bytes([byte]))
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                    counts["slowloris_bytes"] += 1
                    await trio.sleep(1)
            nursery.start_soon(trickle)
            status = await answer(stream)
            counts["slowloris_408"] += status == b"408"
            nursery.cancel_scope.cancel()
        with trio.move_on_after(1):
            await stream.aclose()

async def oversize(source, kind):
    body = b"x" * (2 * 1024 * 1024)
    while True:
        stream = await tls(source)
        if stream is None:
            continue
        if kind == "body":
            request = b"POST /authenticate HTTP/1.1\r\nHost: localhost\r\n"
            request += b"Content-Length: %d\r\n\r\n" % len(body) + body
        else:
            request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: "
            request += b"b" * 32768 + b"\r\n\r\n"
        async with trio.open_nursery() as nursery:
            async def send():
                try:
                    await stream.send_all(request)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            nursery.start_soon(send)
            status = await answer(stream)
            nursery.cancel_scope.cancel()
        if status == b"413":
            counts["body_413"] += 1
        elif status == b"431":
            counts["head_431"] += 1
        else:
            counts["oversize_other"] += 1
        with trio.move_on_after(1):
            await stream.aclose()

async def main():
    async with trio.open_nursery() as nursery:
        for n in range(IDLE):
            nursery.start_soon(idle, f"127.0.1.{2 + n % 4}")
        for n in range(SLOWLORIS):
            nursery.start_soon(slowloris, "127.0.2.2")
        for n in range(HANDSHAKES):
            nursery.start_soon(handshake, "127.0.3.2")
        for n in range(LOOPS):
            nursery.start_soon(oversize, "127.0.4.2", "body" if n % 2 == 0 else "head")
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    print(json.dumps(counts), flush=True)

trio.run(main)
"""


def _client(port: int, context: ssl.SSLContext, token: str, seconds: float) -> dict[str, object]:
    """Review `token` every INTERVAL_S for `seconds` on one keep-alive connection; latencies."""
    body = json.dumps(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
    )
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    errors = 0
    reconnects = 0
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.monotonic()
        try:
            conn.request("POST", "/authenticate", body, headers)
            response = conn.getresponse()
            answer = json.loads(response.read())
            if response.status != 200 or not answer["status"].get("authenticated"):
                errors += 1
            else:
                latencies.append((time.monotonic() - start) * 1000)
        except (OSError, http.client.HTTPException, ValueError):
            errors += 1
            reconnects += 1
            conn.close()
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
        time.sleep(max(0.0, INTERVAL_S - (time.monotonic() - start)))
    conn.close()
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    return {
        "reviews": len(latencies),
        "errors": errors,
        "reconnects": reconnects,
        "p50": pct(0.50),
        "p99": pct(0.99),
        "max": ordered[-1] if ordered else float("nan"),
    }


def _connections(pid: int) -> int:
    """Open sockets of `pid` (its file descriptors that are sockets)."""
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            count += Path.readlink(fd).name.startswith("socket:")
    return count


def measure(work: Path, stack: contextlib.ExitStack) -> dict[str, object]:
    """The quiet window, then the abused one; the abuser's counts and the daemon's state."""
    _, nginx = ensure_tools()
    authd, port, cert, context, token = start_hit_daemon(stack, work, nginx)
    quiet = _client(port, context, token, MEASURE_S)
    argv = [sys.executable, "-c", ABUSER, str(port), str(cert)]
    argv += [str(n) for n in (IDLE, SLOWLORIS, HANDSHAKES, OVERSIZE_LOOPS)]
    abuser = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(WARMUP_S)
        sockets = _connections(authd.pid)
        abused = _client(port, context, token, MEASURE_S)
        sockets = max(sockets, _connections(authd.pid))
    finally:
        abuser.send_signal(signal.SIGTERM)
        out, _ = abuser.communicate(timeout=30)
    counts = json.loads(out.strip().splitlines()[-1])
    after = _client(port, context, token, 3)
    return {
        "quiet": quiet,
        "abused": abused,
        "after": after,
        "counts": counts,
        "sockets": sockets,
        "rss": rss_mib(authd.pid),
        "alive": authd.poll() is None,
    }


def render(figures: dict[str, object]) -> str:
    """The Markdown section."""
    quiet, abused, after = (figures[k] for k in ("quiet", "abused", "after"))
    counts = figures["counts"]
    assert isinstance(quiet, dict) and isinstance(abused, dict) and isinstance(after, dict)
    assert isinstance(counts, dict)
    met = "met" if abused["p99"] < TARGET_P99_MS and not abused["errors"] else "NOT met"

    def row(name: str, d: dict[str, float]) -> str:
        return (
            f"| {name} | {d['reviews']:,} | {d['errors']} | {d['p50']:.1f} ms | "
            f"{d['p99']:.1f} ms | {d['max']:.1f} ms |"
        )

    abuse_s = WARMUP_S + MEASURE_S
    return "\n".join(
        [
            f"{report.now()}; {report.machine()}. `python -m bench abuse`: the real daemon "
            "(default limits: 10 s header deadline, 1,000 connections, 500 per client IP, "
            "1 MiB body, 16 KiB head) with nginx as STS. One well-behaved client reviews one "
            f"token (cache hits) every {INTERVAL_S * 1000:.0f} ms on one keep-alive TLS "
            f"connection for {MEASURE_S} s quiet, then {MEASURE_S} s while a separate abuser "
            f"process keeps {IDLE} idle connections, {SLOWLORIS} slowloris connections (a byte "
            f"a second), {HANDSHAKES} half-finished TLS handshakes, and {OVERSIZE_LOOPS} loops "
            "of 2 MiB bodies and 32 KiB heads open (each reopened when cut). "
            f"Load average at the end: {os.getloadavg()[0]:.2f}.",
            "",
            "| window | reviews | errors | p50 | p99 | max |",
            "|---|---|---|---|---|---|",
            row("quiet", quiet),
            row("under abuse", abused),
            row("after (3 s)", after),
            "",
            f"Under abuse p99 **{abused['p99']:.1f} ms** (target < {TARGET_P99_MS:.0f} ms: "
            f"{met}). Daemon sockets at the peak: {figures['sockets']}; RSS afterwards "
            f"{figures['rss']:.0f} MiB; alive: {figures['alive']}.",
            "",
            f"Abuse over ~{abuse_s} s: {counts['idle_opened']} idle connections opened, "
            f"{counts['idle_closed_by_server']} closed by the header deadline; "
            f"{counts['slowloris_opened']} slowloris connections ({counts['slowloris_bytes']} "
            f"bytes trickled), {counts['slowloris_408']} answered 408; "
            f"{counts['handshake_opened']} half handshakes, "
            f"{counts['handshake_closed_by_server']} cut; {counts['body_413']} bodies answered "
            f"413, {counts['head_431']} heads answered 431, {counts['oversize_other']} other "
            f"answers; {counts['connect_errors']} connect errors.",
        ]
    )


def run(*, runs: int) -> str:
    """Measure and render (`runs` is the harness's; the windows are fixed)."""
    del runs
    with (
        sigterm_unwinds(),
        tempfile.TemporaryDirectory(prefix="authd-bench-abuse-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        return render(measure(Path(tmp), stack))
