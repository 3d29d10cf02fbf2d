"""Attacker-chosen values never become metric series, and /metrics renders off the event loop."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from authd.metrics import Metrics
from authd.server.sts.guard import StsProtection
from authd.token import decode, encode
from tests.test_app import STS, build_app, make_token, post, review_body
from tests.wire import sent_url


def series(metrics: Metrics) -> int:
    """How many label sets (samples) the registry would expose now."""
    return sum(len(family.samples) for family in metrics.registry.collect())


def chaotic_sts(request: httpx.Request) -> httpx.Response:
    """An STS that names a new identity, or fails in a new way, for every signature it sees."""
    signature = sent_url(request).params["X-Amz-Signature"]
    number = int(signature[:8], 16)
    kind = number % 4
    if kind == 0:  # a distinct, unmapped caller
        arn = f"arn:aws:iam::{number % 10**12:012d}:user/U{number}"
        result = {"Arn": arn, "Account": f"{number % 10**12:012d}", "UserId": f"AIDA{number}"}
        return httpx.Response(
            200, json={"GetCallerIdentityResponse": {"GetCallerIdentityResult": result}}
        )
    if kind == 1:
        return httpx.Response(403, text=f"<Error><Code>Sig{number}</Code></Error>")
    if kind == 2:
        return httpx.Response(400, text=f"Throttling {number}")
    return httpx.Response(302, text=f"moved {number}")  # not retried, so the test stays fast


def attack_tokens(count: int, offset: int) -> Iterator[str]:
    """`count` distinct tokens: made-up regions and hosts, and STS-bound ones, new signatures."""
    for index in range(offset, offset + count):
        signature = f"{index * 2654435761 % 2**32:08x}" + "ab" * 28
        host = (
            f"https://sts.r{index}.amazonaws.com",
            f"https://sts.us-east-{index}.amazonaws.com",
            f"https://sts-fips.x{index}.api.aws",
            STS,
        )[index % 4]
        url = decode(make_token(host=host)).replace("ab" * 32, signature)
        yield encode(url)


async def flood(metrics: Metrics, count: int, offset: int) -> None:
    """Review `count` attack tokens through the real app."""
    # No STS rate limit: throttling would be one more (bounded) outcome that only the second,
    # larger wave reaches, and the test compares the waves.
    unlimited = StsProtection(qps=1e9, burst=10**9)
    app = build_app(chaotic_sts, metrics=metrics, protection=unlimited)
    for token in attack_tokens(count, offset):
        await app(post(review_body(token)))


async def test_series_count_does_not_grow_with_distinct_hosts_arns_and_failures() -> None:
    """After a first wave has shown every kind of outcome, ten times as many new values add none."""
    metrics = Metrics(process_collector=False)
    await flood(metrics, 40, 0)
    after_first = series(metrics)
    await flood(metrics, 400, 40)
    assert series(metrics) == after_first
    regions = {
        sample.labels["StsRegion"]
        for family in metrics.registry.collect()
        for sample in family.samples
        if "StsRegion" in sample.labels
    }
    assert regions == {"127.0.0.1:9", "us-east-1"}  # the only known regions among the hosts


class _ThreadRecorder(Collector):
    """A collector that notes which thread collected it."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def collect(self) -> Iterator[Metric]:
        self.threads.append(threading.get_ident())
        return iter(())


async def test_metrics_render_off_the_event_loop_thread() -> None:
    """GET /metrics collects the registry in a worker thread, not the thread running trio."""
    metrics = Metrics(process_collector=False)
    recorder = _ThreadRecorder()
    metrics.registry.register(recorder)
    recorder.threads.clear()  # registering collected it once, here, to learn its names
    response = await build_app(chaotic_sts, metrics=metrics)(
        post(b"", method="GET", path="/metrics")
    )
    assert response.status == 200 and b"authd_reviews_total" in response.body
    assert recorder.threads and threading.get_ident() not in recorder.threads
