"""Every STS fault, through the real daemon: its answer, its reason and what it cost STS.

One daemon and one STS stand-in (tests/fakes/sts_standin.py) serve the whole table; each row
faults one token of its own (`script_for` its signature) and checks, as the API server and an
operator would see them:

- the HTTP status, Retry-After on transient answers, and the reason code (in `status.error`:
  the daemon runs with `--report-denial-reason` so definitive denials carry it too, and in
  `authd_reviews_total{decision,reason}`);
- the GetCallerIdentity requests authd sent for that token, counted twice: by the stand-in
  (requests that reached it) and by the daemon (`authd_sts_calls_total`, which also counts
  attempts that never reached a server: a name that does not resolve, a port that refuses);
- that a review of another token through the same daemon succeeds while the fault holds: the
  faulty token's first request is held at the stand-in (`Fault.gated`) until that review is
  answered, so the two overlap whatever the fault.

The retry policy the counts follow (authd/server/sts/guard.py, docs/sts-protection.md): at
most 3 requests per cluster ID, retrying only timeouts, connection errors and 5xx, all inside
`--sts-timeout` (3 s here, so each attempt gets about 1 s); a throttled, rejected or unreadable
answer is never retried, nor is a name that does not resolve. docs/RELIABILITY.md has the table.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.daemon import Daemon, base_env, free_port
from tests.fakes.sts_standin import RESET, THROTTLE, UNAVAILABLE, Fault, StsStandIn

UNRESOLVABLE = "https://sts.invalid"  # RFC 6761: .invalid never resolves
HUGE = 50 * 1024 * 1024
BAD_ARN = {"Arn": "arn:aws:iam::123456789012:nonsense", "Account": "123456789012", "UserId": "X"}


def _identity_json(identity: dict[str, str]) -> bytes:
    return json.dumps({"GetCallerIdentityResponse": {"GetCallerIdentityResult": identity}}).encode()


GZIP_BOMB = gzip.compress(b"\0" * HUGE, 9)  # 50 KiB that decode to 50 MB
THROTTLING_JSON = (
    b'{"Error":{"Code":"Throttling","Message":"Rate exceeded","Type":"Sender"},'
    b'"RequestId":"00000000-0000-0000-0000-000000000000"}'
)


@dataclass(frozen=True)
class Row:
    """One fault: what the stand-in does with the token's requests, and what must come of it.

    `origin` is where the token points (None: the stand-in); `calls` are the requests authd
    sends for the token, `reached` those the stand-in sees (None: the same).
    """

    name: str
    faults: tuple[Fault, ...]
    status: int
    reason: str
    calls: int
    origin: str | None = None
    reached: int | None = None


def status_fault(code: int) -> Fault:
    return Fault.with_status(code, f"stand-in {code}".encode())


ROWS = [
    Row("timeout (no answer)", (Fault.hold(),) * 3, 503, "sts_unavailable", 3),
    Row("connection reset", (RESET,) * 3, 503, "sts_unavailable", 3),
    Row("connection reset, then an answer", (RESET,), 200, "ok", 2),
    Row("500", (status_fault(500),) * 3, 503, "sts_unavailable", 3),
    Row("502", (status_fault(502),) * 3, 503, "sts_unavailable", 3),
    Row("503", (UNAVAILABLE,) * 3, 503, "sts_unavailable", 3),
    Row("504", (status_fault(504),) * 3, 503, "sts_unavailable", 3),
    Row("503, then an answer", (UNAVAILABLE,), 200, "ok", 2),
    Row("503 twice, then an answer", (UNAVAILABLE,) * 2, 200, "ok", 3),
    Row("reset, 503, then timeout", (RESET, UNAVAILABLE, Fault.hold()), 503, "sts_unavailable", 3),
    Row("400 Throttling (XML)", (THROTTLE,), 429, "throttled", 1),
    Row("400 Throttling (JSON)", (Fault.with_status(400, THROTTLING_JSON),), 429, "throttled", 1),
    Row("429 without a body", (Fault.with_status(429, b""),), 429, "throttled", 1),
    Row("slow body past the deadline", (Fault.trickle(0.2),) * 3, 503, "sts_unavailable", 3),
    Row("50 MB body", (Fault.huge(HUGE),), 503, "sts_unavailable", 1),
    Row(
        "invalid XML",
        (Fault.answer(b"<GetCallerIdentityResponse><Arn>", "text/xml"),),
        503,
        "sts_unavailable",
        1,
    ),
    Row(
        "invalid JSON",
        (Fault.answer(b'{"GetCallerIdentityResponse": {'),),
        503,
        "sts_unavailable",
        1,
    ),
    Row(
        "gzip bomb (50 KiB decoding to 50 MB)",
        (Fault.answer(GZIP_BOMB, encoding="gzip"),),
        503,
        "sts_unavailable",
        1,
    ),
    Row("JSON of another shape", (Fault.answer(b'{"Arn": 1}'),), 503, "sts_unavailable", 1),
    Row(
        "ARN that does not parse", (Fault.answer(_identity_json(BAD_ARN)),), 200, "sts_rejected", 1
    ),
    Row(
        "403 SignatureDoesNotMatch",
        (Fault.with_status(403, b"<Error><Code>SignatureDoesNotMatch</Code></Error>"),),
        200,
        "sts_rejected",
        1,
    ),
    Row("302 redirect (never followed)", (status_fault(302),), 503, "sts_unavailable", 1),
    Row("DNS failure", (), 503, "sts_unavailable", 1, origin=UNRESOLVABLE, reached=0),
    Row("connection refused", (), 503, "sts_unavailable", 3, origin="refused", reached=0),
]


@dataclass
class Setup:
    """The module's daemon and stand-in, and where the refusing port is."""

    daemon: Daemon
    standin: StsStandIn
    refused: str


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """One daemon for the table: STS is the stand-in, `sts.invalid` and a closed port."""
    tmp = tmp_path_factory.mktemp("faults-sts")
    standin = StsStandIn().start()
    refused = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = tmp / "config.yaml"
    config.write_text(
        "clusterID: faults\nserver:\n  mapUsers:\n"
        "  - userarn: arn:aws:iam::123456789012:user/Alice\n    username: alice\n"
    )
    daemon = Daemon(
        [
            f"--config={config}",
            f"--extra-sts-endpoint={standin.url}",
            f"--extra-sts-endpoint={UNRESOLVABLE}",
            f"--extra-sts-endpoint={refused}",
            "--sts-timeout=3s",
            "--sts-qps=1000",
            "--sts-burst=1000",
            "--report-denial-reason",
        ],
        state=tmp,
        env=base_env(),
    )
    try:
        daemon.wait_for("listening")
        yield Setup(daemon, standin, refused)
    finally:
        code = daemon.stop()
        standin.stop()
    assert code == 0


def review(daemon: Daemon, token: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    """POST a TokenReview; (status, headers, the answer's status section)."""
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview"}
    with daemon.client() as client:
        response = client.post("/authenticate", json={**body, "spec": {"token": token}})
    return response.status_code, dict(response.headers), response.json()["status"]


def samples(daemon: Daemon, name: str) -> dict[str, float]:
    """Every sample of the series `name` in /metrics, by its label text."""
    with daemon.client() as client:
        text = client.get("/metrics").text
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line.rpartition(" ")
            found[labels[len(name) :]] = float(value)
    return found


def sts_calls(daemon: Daemon) -> float:
    """GetCallerIdentity requests the daemon sent so far, all outcomes."""
    return sum(samples(daemon, "authd_sts_calls_total").values())


def signature(row: int, *, good: bool = False) -> str:
    """A signature (64 hex digits) of its own for each row's faulty and good token."""
    return f"{row + (0x8000 if good else 0):04x}" * 16


def resolves_quickly_to_nothing(host: str) -> bool:
    """Whether `host` fails to resolve at once here (as it must for the DNS row to mean it)."""
    started = time.monotonic()
    try:
        socket.getaddrinfo(host, 443)
    except socket.gaierror:
        return time.monotonic() - started < 0.5
    return False


@pytest.mark.parametrize("index", range(len(ROWS)), ids=[row.name for row in ROWS])
def test_fault_answer_reason_and_sts_calls(setup: Setup, index: int) -> None:
    """The row's status, reason and STS calls; another token passes while the fault holds."""
    row = ROWS[index]
    daemon, standin = setup.daemon, setup.standin
    if row.origin == UNRESOLVABLE and not resolves_quickly_to_nothing("sts.invalid"):
        pytest.skip("this resolver does not answer sts.invalid with a quick NXDOMAIN")
    origin = setup.refused if row.origin == "refused" else row.origin
    faulty = signature(index)
    gate = threading.Event()
    if row.faults:
        first, *rest = row.faults
        standin.script_for(faulty, first.gated(gate), *rest)
    reviews_before = samples(daemon, "authd_reviews_total")
    calls_before = sts_calls(daemon)

    answers: list[tuple[int, dict[str, str], dict[str, Any]]] = []
    token = standin.token(signature=faulty, origin=origin)
    worker = threading.Thread(target=lambda: answers.append(review(daemon, token)))
    worker.start()
    try:
        if row.faults:  # the fault holds: its first request waits at the stand-in
            deadline = time.monotonic() + 10
            while standin.calls_for(faulty) == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert standin.calls_for(faulty) == 1
        good = review(daemon, standin.token(signature=signature(index, good=True)))
        assert (good[0], good[2]["user"]["username"]) == (200, "alice")
    finally:
        gate.set()
        worker.join(timeout=30)
    [(status, headers, answer)] = answers

    assert status == row.status, answer
    if row.reason == "ok":
        assert answer["user"]["username"] == "alice"
    else:
        assert answer["authenticated"] is False
        assert answer["error"].startswith(f"{row.reason}: "), answer
    if status in (429, 503):
        assert int(headers["retry-after"]) >= 1
    else:
        assert "retry-after" not in headers
    decision = {200: "allow" if row.reason == "ok" else "deny"}.get(status, "retry")
    label = f'{{decision="{decision}",reason="{row.reason}"}}'
    reviews_after = samples(daemon, "authd_reviews_total")
    good_too = 1 if row.reason == "ok" else 0  # the concurrent good review has the same label
    assert reviews_after[label] - reviews_before[label] == 1 + good_too

    assert sts_calls(daemon) - calls_before == row.calls + 1  # + the good review's one
    reached = row.calls if row.reached is None else row.reached
    assert standin.calls_for(faulty) == reached


def test_huge_body_is_not_read_to_its_end(setup: Setup) -> None:
    """authd hangs up on a 50 MB answer after its 64 KiB cap: the stand-in cannot send it all."""
    daemon, standin = setup.daemon, setup.standin
    faulty = signature(0x7000)
    standin.script_for(faulty, Fault.huge(HUGE))
    before = len(standin.body_bytes_sent)
    status, _, answer = review(daemon, standin.token(signature=faulty))
    assert (status, answer["error"].split(":")[0]) == (503, "sts_unavailable")
    assert "body larger than 65536 bytes" in answer["error"]
    deadline = time.monotonic() + 10
    while len(standin.body_bytes_sent) == before and time.monotonic() < deadline:
        time.sleep(0.01)
    [sent] = standin.body_bytes_sent[before:]
    assert sent < HUGE  # the write failed: authd closed the connection


def test_answers_are_read_as_sent_never_decoded(setup: Setup) -> None:
    """authd asks STS for no content encoding, and refuses an encoded answer unread: decoding
    it would expand each 64 KiB read of a gzip bomb to 64 MB before the size cap could see it
    (a defect found by the gzip row above, fixed in authd/server/sts/client.py)."""
    daemon, standin = setup.daemon, setup.standin
    faulty = signature(0x7003)
    standin.script_for(faulty, Fault.answer(GZIP_BOMB, encoding="gzip"))
    status, _, answer = review(daemon, standin.token(signature=faulty))
    assert status == 503
    assert answer["error"].startswith("sts_unavailable: ")
    assert 'content encoding "gzip" was not asked for' in answer["error"]
    asked = {seen.accept_encoding for seen in standin.requests if seen.signature == faulty}
    assert asked == {"identity"}


def test_only_a_refusal_of_the_token_itself_is_remembered(setup: Setup) -> None:
    """SignatureDoesNotMatch is remembered (the repeat costs STS nothing); an answer naming an
    ARN that does not parse says nothing about the token, so its repeat asks STS again."""
    daemon, standin = setup.daemon, setup.standin
    mismatch, bad_arn = signature(0x7001), signature(0x7002)
    refusal = Fault.with_status(403, b"<Error><Code>SignatureDoesNotMatch</Code></Error>")
    standin.script_for(mismatch, refusal)
    standin.script_for(bad_arn, Fault.answer(_identity_json(BAD_ARN)))
    before = samples(daemon, "authd_sts_denial_cache_hits_total")['{kind="token"}']
    token = standin.token(signature=mismatch)
    for _ in range(2):
        status, _, answer = review(daemon, token)
        assert (status, answer["authenticated"]) == (200, False)
        assert answer["error"].startswith("sts_rejected: ")
    assert standin.calls_for(mismatch) == 1
    after = samples(daemon, "authd_sts_denial_cache_hits_total")['{kind="token"}']
    assert after - before == 1

    token = standin.token(signature=bad_arn)
    status, _, answer = review(daemon, token)
    assert (status, answer["error"].split(":")[0]) == (200, "sts_rejected")
    status, _, answer = review(daemon, token)  # STS answers properly this time
    assert (status, answer["user"]["username"]) == (200, "alice")
    assert standin.calls_for(bad_arn) == 2
