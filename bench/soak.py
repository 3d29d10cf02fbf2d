"""Soak: the real daemon for `--minutes` (default 30) at a steady review rate with token churn.

The real `authd server` process runs against the loopback STS stand-in of bench/reload.py (a
thread here that answers GetCallerIdentity at once). `CLIENTS` threads send TokenReviews over
keep-alive TLS connections, paced together to `RATE` reviews/s; a new token (a new presigned URL,
so a new STS call and a new identity-cache entry) replaces the one in use every second, so each
token is reviewed about `RATE` times: once through STS, the rest from the identity cache. Every
minute the daemon's VmRSS and open file descriptors (/proc/PID/status, /proc/PID/fd) are
sampled, with its thread count and the minute's reviews, failures and latencies. The target:
VmRSS and descriptors grow less than 5% over the last 20 minutes (the highest sample in that
window against its first). Figures go to docs/RELIABILITY.md (section "Soak") and the plot to
docs/soak.svg (the plot even with `--no-write`). Not part of `make bench` or CI:
`python -m bench soak [--minutes N]`.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from authd.client.presign import AwsCredentials, Endpoint, make_token
from bench import report
from bench.reload import free_port, live_config, pct, sts_stand_in

SECTION = "soak"
DESCRIPTION = "soak: the daemon for --minutes at a steady rate with token churn; RSS and fds"
DOCS = {report.BENCHMARKS.parent / "RELIABILITY.md": ""}  # under its "## Soak"
SVG = report.BENCHMARKS.parent / "soak.svg"
RATE = 200.0
CLIENTS = 4
WINDOW_MIN = 20
GROWTH_TARGET = 0.05


@dataclass
class Minute:
    """One sample: the daemon's process figures at its end and the minute's reviews."""

    minute: float
    rss_kib: int
    fds: int
    threads: int
    reviews: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)
    cached: int = 0  # authd_identity_cache_entries
    cache_kib: float = 0.0  # authd_identity_cache_bytes / 1024


@dataclass
class Soak:
    """The whole run."""

    minutes: int
    samples: list[Minute] = field(default_factory=list)
    tokens: int = 0
    reviews: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    daemon_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    started: str = ""


def proc_figures(pid: int) -> tuple[int, int, int]:
    """(VmRSS KiB, open fds, threads) of process `pid`."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss = int(fields["VmRSS"].split()[0])
    threads = int(fields["Threads"].strip())
    return rss, len(os.listdir(f"/proc/{pid}/fd")), threads


class Load:
    """Paced reviewers and the token churner; tallies per minute under one lock."""

    def __init__(self, port: int, context: ssl.SSLContext, endpoint: Endpoint) -> None:
        self.port = port
        self.context = context
        self.endpoint = endpoint
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.current = Minute(0, 0, 0, 0)
        self.failures: list[str] = []
        self.tokens = 0
        self.token = self._new_token()

    def _new_token(self) -> str:
        creds = AwsCredentials(access_key_id="AKIABENCHEXAMPLE0000", secret_access_key="unused")  # noqa: S106
        self.tokens += 1
        return make_token(creds, cluster_id="bench", endpoint=self.endpoint).token

    def churn(self) -> None:
        """A new token every second (X-Amz-Date moves on, so each is new to the daemon)."""
        while not self.stop.wait(1.0):
            self.token = self._new_token()

    def cache(self) -> tuple[int, float]:
        """The daemon's identity cache now: (entries, estimated KiB), from /metrics."""
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context, timeout=10)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        values = dict(
            line.rsplit(" ", 1)
            for line in text.splitlines()
            if line.startswith(("authd_identity_cache_entries ", "authd_identity_cache_bytes "))
        )
        entries = int(float(values["authd_identity_cache_entries"]))
        return entries, float(values["authd_identity_cache_bytes"]) / 1024

    def take(self) -> Minute:
        """The tallies since the last take, reset."""
        with self.lock:
            taken, self.current = self.current, Minute(0, 0, 0, 0)
        return taken

    def review(self, index: int, start: float) -> None:
        """Client `index` of CLIENTS: send its share of RATE reviews/s until stopped."""
        interval = CLIENTS / RATE
        due = start + index * interval / CLIENTS
        conn: http.client.HTTPSConnection | None = None
        while not self.stop.is_set():
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            due += interval
            if conn is None:
                conn = http.client.HTTPSConnection(
                    "127.0.0.1", self.port, context=self.context, timeout=10
                )
            began = time.monotonic()
            problem = self._one(conn)
            took = time.monotonic() - began
            if problem is not None:
                conn.close()
                conn = None
            with self.lock:
                self.current.reviews += 1
                self.current.latencies.append(took)
                if problem is not None:
                    self.current.failed += 1
                    if len(self.failures) < 10:
                        self.failures.append(problem)
        if conn is not None:
            conn.close()

    def _one(self, conn: http.client.HTTPSConnection) -> str | None:
        """One review; None when it was allowed as the bench user, else what went wrong."""
        body = json.dumps(
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": self.token},
            }
        )
        try:
            conn.request("POST", "/authenticate", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = json.loads(response.read())
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"
        status = answer.get("status", {})
        if response.status != 200 or status.get("authenticated") is not True:
            return f"{response.status}: {json.dumps(status)[:200]}"
        if status.get("user", {}).get("username") != "u0":
            return f"wrong user: {status.get('user')}"
        return None


def soak(work: Path, minutes: int) -> Soak:
    """Run the daemon for `minutes` under load; sample it each minute."""
    result = Soak(minutes=minutes, started=report.now())
    config = work / "config.yaml"
    config.write_text(live_config(0))
    port = free_port()
    log_path = work / "authd.log"
    with sts_stand_in() as sts_port, log_path.open("w") as log:
        argv = [
            sys.executable, "-m", "authd", "server",
            f"--config={config}", f"--port={port}",
            f"--state-dir={work / 'state'}", f"--generate-kubeconfig={work / 'kubeconfig.yaml'}",
            f"--extra-sts-endpoint=http://127.0.0.1:{sts_port}",
        ]  # fmt: skip
        env = {**os.environ, "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
        proc = subprocess.Popen(argv, env=env, stderr=log, stdout=subprocess.DEVNULL)
        try:
            _wait_listening(log_path, proc)
            context = ssl.create_default_context(cafile=str(work / "state" / "cert.pem"))
            endpoint = Endpoint(url=f"http://127.0.0.1:{sts_port}", signing_region="us-east-1")
            _drive(result, Load(port, context, endpoint), proc.pid, minutes)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    result.daemon_errors = _problems(log_path)
    return result


def _problems(log_path: Path, *, keep: int = 10) -> list[str]:
    """The first `keep` warning, error or unparsable lines of the daemon's log (streamed: the
    log holds one line per review, hundreds of MB in 30 minutes)."""
    found: list[str] = []
    with log_path.open(errors="replace") as stream:
        for line in stream:
            if '"level":"info"' in line or '"level":"debug"' in line:
                continue
            try:
                level = json.loads(line).get("level", "")
            except ValueError:
                level = "unparsed"
            if level in ("warning", "error", "critical", "unparsed"):
                found.append(line.rstrip()[:300])
                if len(found) >= keep:
                    break
    return found


def _wait_listening(log_path: Path, proc: subprocess.Popen[bytes]) -> None:
    """Block until the daemon logged `listening` (raise if it exits or takes 30 s)."""
    deadline = time.monotonic() + 30
    while '"listening"' not in log_path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"authd did not start: {log_path.read_text()[-2000:]}")
        time.sleep(0.05)


def _drive(result: Soak, load: Load, pid: int, minutes: int) -> None:
    """Start the load, sample at minute 0 and after each minute, then stop the load."""
    threads = [threading.Thread(target=load.churn, daemon=True)]
    start = time.monotonic()
    threads += [
        threading.Thread(target=load.review, args=(i, start), daemon=True) for i in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(5)  # connections open, first token verified: the baseline sample
        load.take()
        baseline = Minute(0, *proc_figures(pid))
        baseline.cached, baseline.cache_kib = load.cache()
        result.samples.append(baseline)
        for minute in range(1, minutes + 1):
            time.sleep(max(0.0, start + 5 + 60 * minute - time.monotonic()))
            taken = load.take()
            sample = Minute(minute, *proc_figures(pid))
            sample.cached, sample.cache_kib = load.cache()
            sample.reviews, sample.failed, sample.latencies = (
                taken.reviews,
                taken.failed,
                taken.latencies,
            )
            result.samples.append(sample)
            print(_progress(sample), file=sys.stderr, flush=True)
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(timeout=30)
        result.seconds = time.monotonic() - start
    result.reviews = sum(s.reviews for s in result.samples)
    result.failed = sum(s.failed for s in result.samples)
    result.failures = load.failures
    result.tokens = load.tokens


def _progress(sample: Minute) -> str:
    """One line per minute on stderr, so a long run shows it is alive."""
    p99 = pct(sample.latencies, 99) * 1000 if sample.latencies else 0.0
    return (
        f"minute {sample.minute:g}: VmRSS {sample.rss_kib / 1024:.1f} MiB, {sample.fds} fds, "
        f"{sample.threads} threads, {sample.reviews} reviews, {sample.failed} failed, "
        f"p99 {p99:.1f} ms, {sample.cached} identities cached"
    )


def growth(values: list[int]) -> float:
    """Growth of the highest value against the first, as a fraction of the first."""
    return (max(values) - values[0]) / values[0]


def window(samples: list[Minute]) -> list[Minute]:
    """The samples of the last WINDOW_MIN minutes (all of them in a shorter run)."""
    last = samples[-1].minute
    return [s for s in samples if s.minute >= last - WINDOW_MIN]


# --------------------------------------------------------------------------------------------
# The plot: an SVG written by hand.


def svg(samples: list[Minute], *, title: str) -> str:
    """Two stacked line charts against minutes: VmRSS (MiB) and open file descriptors."""
    width, height, left, right, top, panel, gap = 640, 420, 60, 20, 40, 140, 60
    minutes = [s.minute for s in samples]
    span = max(minutes[-1], 1.0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
    ]
    series = (
        ("VmRSS (MiB)", [s.rss_kib / 1024 for s in samples], "#1f77b4"),
        ("open file descriptors", [float(s.fds) for s in samples], "#d62728"),
    )
    for index, (label, values, colour) in enumerate(series):
        y0 = top + index * (panel + gap)
        low, high = _axis(values)
        plot_w = width - left - right

        def x(minute: float, plot_w: int = plot_w) -> float:
            return left + plot_w * minute / span

        def y(value: float, y0: int = y0, low: float = low, high: float = high) -> float:
            return y0 + panel - panel * (value - low) / (high - low)

        parts += [
            f'<rect x="{left}" y="{y0}" width="{plot_w}" height="{panel}" fill="none" '
            'stroke="#999"/>',
            f'<text x="{left}" y="{y0 - 6}">{label}</text>',
            f'<text x="{left - 6}" y="{y0 + 4}" text-anchor="end">{high:g}</text>',
            f'<text x="{left - 6}" y="{y0 + panel + 4}" text-anchor="end">{low:g}</text>',
            f'<text x="{left}" y="{y0 + panel + 16}" text-anchor="middle">0</text>',
            f'<text x="{left + plot_w}" y="{y0 + panel + 16}" text-anchor="middle">'
            f"{span:g} min</text>",
        ]
        if span > WINDOW_MIN:
            start = x(span - WINDOW_MIN)
            parts.append(
                f'<rect x="{start:.1f}" y="{y0}" width="{left + plot_w - start:.1f}" '
                f'height="{panel}" fill="{colour}" fill-opacity="0.06"/>'
            )
        points = " ".join(f"{x(m):.1f},{y(v):.1f}" for m, v in zip(minutes, values, strict=True))
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>'
        )
        parts += [
            f'<circle cx="{x(m):.1f}" cy="{y(v):.1f}" r="2.5" fill="{colour}"/>'
            for m, v in zip(minutes, values, strict=True)
        ]
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _axis(values: list[float]) -> tuple[float, float]:
    """A y range from 0.8x the lowest to 1.2x the highest value, so 5% growth shows as such."""
    low, high = min(values), max(values)
    return float(f"{low * 0.8:.3g}"), float(f"{high * 1.2:.3g}") if high > 0 else 1.0


# --------------------------------------------------------------------------------------------
# Report.


def run(*, runs: int, minutes: int = 30) -> str:
    """Soak for `minutes`, write the plot, return the Markdown section (`runs` is unused)."""
    del runs
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="authd-bench-soak-") as tmp:
        result = soak(Path(tmp), minutes)
    title = f"authd soak: {minutes} min at {RATE:g} reviews/s, new token every second"
    SVG.write_text(svg(result.samples, title=title))
    return render(result, load=load)


def render(result: Soak, *, load: float) -> str:
    """The Markdown for docs/RELIABILITY.md's Soak section (between its markers)."""
    last = window(result.samples)
    rss_growth = growth([s.rss_kib for s in last])
    fd_growth = growth([s.fds for s in last])
    span = last[-1].minute - last[0].minute
    met = rss_growth < GROWTH_TARGET and fd_growth < GROWTH_TARGET and result.failed == 0
    latencies = [t for s in result.samples for t in s.latencies]
    lines = [
        f"- Date: {result.started} (start)",
        f"- Machine: {report.machine()}; 1-minute load average before the run: {load:.2f}. "
        "Other work on the machine would show in the latencies, not in the memory figures.",
        f"- Command: `python -m bench soak --minutes {result.minutes}`",
        f"- Load: {CLIENTS} keep-alive TLS clients paced to {RATE:g} reviews/s together; a new "
        f"token every second ({result.tokens:,} tokens: each one STS call, then cache hits).",
        f"- Reviews: {result.reviews:,} in the {result.minutes} sampled minutes "
        f"({result.reviews / max(60 * result.minutes, 1):.0f}/s), {result.failed} failed; latency "
        f"median {statistics.median(latencies) * 1000:.1f} ms, p99 "
        f"{pct(latencies, 99) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms.",
        f"- Growth over the last {span:g} minutes (highest sample against the window's first): "
        f"VmRSS {rss_growth * 100:+.1f}%, open fds {fd_growth * 100:+.1f}%. "
        f"Target < 5% each and no failed review: **{'met' if met else 'MISSED'}**.",
        "- Plot: [soak.svg](soak.svg) (shaded: the window judged).",
        "",
        "| minute | VmRSS | open fds | threads | reviews | failed | p99 | identities cached "
        "(estimated size) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in result.samples:
        p99 = f"{pct(s.latencies, 99) * 1000:.1f} ms" if s.latencies else "-"
        lines.append(
            f"| {s.minute:g} | {s.rss_kib / 1024:.1f} MiB | {s.fds} | {s.threads} | "
            f"{s.reviews:,} | {s.failed} | {p99} | {s.cached:,} ({s.cache_kib:.0f} KiB) |"
        )
    if result.failures:
        lines += ["", "First failures:", ""] + [f"- `{f}`" for f in result.failures]
    if result.daemon_errors:
        lines += ["", "Daemon warnings and errors:", ""]
        lines += [f"- `{e}`" for e in result.daemon_errors]
    else:
        lines += ["", "The daemon logged no warning or error during the run."]
    return "\n".join(lines) + "\n"
