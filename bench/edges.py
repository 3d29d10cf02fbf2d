"""`python -m bench edges`: daemon RSS after 100,000 distinct tokens; /metrics render time.

The RSS part runs the real daemon (`authd server`, default settings but the STS rate limit)
against the server bench's nginx STS stand-in and sends it never-repeated tokens with wrk until
it has answered 100,000 reviews, then reads its VmRSS and its identity cache gauges. The render
part fills a `Metrics` with every label set a review and an STS call can make (every reason and
decision, every mapping backend, every known region with several STS status codes) and times
`Metrics.render`, which the daemon runs in a worker thread.
"""

from __future__ import annotations

import contextlib
import http.client
import math
import ssl
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from authd.metrics import BACKENDS, Metrics
from authd.outcomes import BY_REASON
from authd.regions import KNOWN_REGIONS
from bench import report
from bench.server import (
    THREADS,
    BenchError,
    Tokens,
    decisions,
    ensure_tools,
    post_review,
    rss_mib,
    run_wrk,
    sigterm_unwinds,
    start_authd,
    start_nginx,
)

SECTION = "edges"
DESCRIPTION = "daemon RSS after 100,000 distinct tokens; /metrics render time at the label bounds"
REVIEWS = 100_000
TARGET_MIB = 80.0
RENDER_RUNS = 50
STATUS_CODES = (200, 400, 403, 429, 500, 503)


def gauge(port: int, context: ssl.SSLContext, name: str) -> float:
    """One unlabeled sample from the daemon's /metrics."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise BenchError(f"no {name} on /metrics")


def measure_rss() -> dict[str, float]:
    """Serve REVIEWS distinct tokens; RSS at start and end, and the cache's entries and bytes."""
    wrk, nginx = ensure_tools()
    with sigterm_unwinds(), contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-edges-")))
        _, sts_port = start_nginx(stack, nginx, work)
        tokens = Tokens(sts_port=sts_port)
        process, port, cert = start_authd(stack, work, sts_port=sts_port)
        context = ssl.create_default_context(cafile=str(cert))
        status, _ = post_review(port, context, tokens.one(_stamp()))
        if status != 200:
            raise BenchError(f"authd answered {status} to a fresh token")
        start = rss_mib(process.pid)
        counts = serve_distinct(wrk, port, context, tokens, work, until=REVIEWS)
        return {
            "reviews": sum(counts.values()),
            "start": start,
            "end": rss_mib(process.pid),
            "entries": gauge(port, context, "authd_identity_cache_entries"),
            "bytes": gauge(port, context, "authd_identity_cache_bytes"),
        }


def serve_distinct(
    wrk: str, port: int, context: ssl.SSLContext, tokens: Tokens, work: Path, *, until: int
) -> dict[str, float]:
    """Send never-repeated tokens with wrk until the daemon has answered `until` reviews in all.

    Returns its reviews by decision (it overshoots `until` by up to a few seconds of reviews).

    Raises:
        BenchError: wrk failed or ran short of tokens, or a review was not allowed.
    """
    rate = 2000.0
    while (served := sum(decisions(port, context).values())) < until:
        seconds = max(2, min(30, math.ceil((until - served) / rate) + 1))
        per_thread = math.ceil(rate * 2 * seconds / THREADS) + 500
        tokens.write(work / "tokens", per_thread=per_thread)
        result = run_wrk(wrk, port, ["tokens", str(work / "tokens")], seconds=seconds)
        if result.errors or result.short:
            raise BenchError(f"wrk: {result.errors} errors, {result.short} tokens short")
        rate = max(rate, result.rate)
        print(f"served {served:.0f}; {result.rate:.0f}/s", file=sys.stderr)
    counts = decisions(port, context)
    if counts.get("allow", 0.0) != sum(counts.values()):
        raise BenchError(f"authd did not allow every review: {counts}")
    return counts


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def full_metrics() -> tuple[Metrics, int]:
    """A Metrics with every bounded label set present; (metrics, samples it renders)."""
    metrics = Metrics()
    for reason in BY_REASON:
        for backend in (*BACKENDS, None):
            metrics.observe_review(reason=reason, seconds=0.01, backend=backend)
    regions = ["global", *sorted(set().union(*KNOWN_REGIONS.values()))]
    for region in regions:
        for code in STATUS_CODES:
            metrics.sts_response(code, region)
        metrics.sts_connection_failure(region)
        metrics.sts_throttled(region)
    samples = sum(len(family.samples) for family in metrics.registry.collect())
    return metrics, samples


def measure_render() -> tuple[int, list[float]]:
    """Render the full registry RENDER_RUNS times; (samples, milliseconds per render)."""
    metrics, samples = full_metrics()
    timings = []
    for _ in range(RENDER_RUNS):
        started = time.perf_counter()
        metrics.render()
        timings.append((time.perf_counter() - started) * 1000)
    return samples, timings


def run(*, runs: int) -> str:
    """Both measurements, as the section's Markdown (`runs` does not apply)."""
    del runs
    load = __import__("os").getloadavg()[0]
    samples, timings = measure_render()
    rss = measure_rss()
    verdict = "under" if rss["end"] < TARGET_MIB else "**over**"
    return "\n".join(
        [
            "## Edges: memory under distinct tokens, /metrics at the label bounds",
            "",
            f"{report.machine()}; {report.now()}; load average before: {load:.2f}.",
            "",
            f"- Daemon (`authd server`, default `--identity-cache-size` 100000 and "
            f"`--identity-cache-bytes` 16 MiB) after {rss['reviews']:,.0f} reviews of distinct "
            f"tokens (wrk, every token new, STS stand-in nginx): VmRSS **{rss['end']:.1f} MiB** "
            f"(at start {rss['start']:.1f} MiB), {verdict} the {TARGET_MIB:.0f} MiB target. "
            f"Identity cache: {rss['entries']:,.0f} entries, {rss['bytes'] / 2**20:.1f} MiB "
            "estimated.",
            f"- `Metrics.render` with every label set at its bound ({samples:,} samples: every "
            f"reason x backend, {len(KNOWN_REGIONS)} partitions' known regions x "
            f"{len(STATUS_CODES)} STS codes, process collectors): median "
            f"**{report.median(timings):.2f} ms**, p90 {report.p90(timings):.2f} ms over "
            f"{RENDER_RUNS} renders. The daemon renders in a worker thread, so reviews on the "
            "event loop do not wait for it.",
        ]
    )
