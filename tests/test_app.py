"""The webhook's routes and outcome table, called in-process with STS behind httpx.MockTransport."""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from structlog.testing import capture_logs

import authd
from authd import errors
from authd.config import FileConfig, MappingConfig
from authd.errors import AuthdError, NotMappedError
from authd.identity import Identity
from authd.logs import processors as log_processors
from authd.mapping import Entry, MappingTable
from authd.mapping.chain import Backend, MapperChain
from authd.mapping.file import MountedFileTable
from authd.metrics import Metrics
from authd.outcomes import BY_REASON, INTERNAL_ERROR, OUTCOMES, outcome_of
from authd.server.app import App
from authd.server.authenticator import Authenticator
from authd.server.http import Request
from authd.server.sts.client import StsClient
from authd.server.sts.guard import StsProtection
from authd.token import EndpointPolicy, encode

NOW = datetime(2024, 1, 15, 12, 0, tzinfo=UTC)
STS = "http://127.0.0.1:9"
CONFIG = """\
clusterID: test-cluster
server:
  mapUsers:
  - userarn: arn:aws:iam::123456789012:user/Alice
    username: alice
    groups: [dev]
  reservedPrefixConfig:
  - backendmode: MountedFile
    usernamePrefixReserveList: ["system:"]
  mapRoles:
  - rolearn: arn:aws:iam::123456789012:role/Sneaky
    username: "system:admin"
"""
ALICE = {
    "GetCallerIdentityResponse": {
        "GetCallerIdentityResult": {
            "Arn": "arn:aws:iam::123456789012:user/Alice",
            "Account": "123456789012",
            "UserId": "AIDAALICE",
        }
    }
}
SIGNATURE = "ab" * 32


def make_token(*, signed: datetime = NOW - timedelta(minutes=5), host: str = STS) -> str:
    """A presigned-URL token for the loopback STS origin, signed at `signed`."""
    stamp = signed.strftime("%Y%m%dT%H%M%SZ")
    url = (
        f"{host}/?Action=GetCallerIdentity&Version=2011-06-15"
        "&X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential=AKIAALICE%2F{stamp[:8]}%2Fus-east-1%2Fsts%2Faws4_request"
        f"&X-Amz-Date={stamp}&X-Amz-Expires=60&X-Amz-SignedHeaders=host%3Bx-k8s-aws-id"
        f"&X-Amz-Signature={SIGNATURE}"
    )
    return encode(url)


def review_body(token: str, *, version: str = "authentication.k8s.io/v1") -> bytes:
    """A TokenReview request body as kube-apiserver sends it."""
    doc = {"apiVersion": version, "kind": "TokenReview", "spec": {"token": token}}
    return json.dumps(doc).encode()


StsHandler = Callable[[httpx.Request], httpx.Response]


def ok_sts(identity: dict[str, object] = ALICE) -> StsHandler:
    """An STS that answers every call with `identity`, and records what it was sent."""

    def handler(request: httpx.Request) -> httpx.Response:
        handler.calls.append(request)  # type: ignore[attr-defined]
        return httpx.Response(200, json=identity)

    handler.calls = []  # type: ignore[attr-defined]
    return handler


def build_app(
    sts: StsHandler,
    *,
    cluster_ids: tuple[str, ...] = ("test-cluster",),
    table: MappingTable | None = None,
    metrics: Metrics | None = None,
    lines: list[dict[str, object]] | None = None,
    report_denial_reason: bool = False,
    protection: StsProtection | None = None,
) -> App:
    """An App over a real authenticator, mapping table and metrics, with STS mocked; each
    review's log fields are appended to `lines` when given."""
    mapping = MappingConfig.from_file_config(FileConfig.from_text(CONFIG, path="config.yaml"))
    backend = Backend(
        "MountedFile",
        MountedFileTable.from_config(mapping) if table is None else table,
        reserved_prefixes=mapping.reserved_prefixes_for("MountedFile"),
    )
    client = httpx.MockTransport(sts)
    metrics = metrics or Metrics(process_collector=False)
    authenticator = Authenticator(
        policy=EndpointPolicy.create(partition="aws", extra_origins=[STS]),
        sts=StsClient(client),
        chain=MapperChain([backend]),
        cluster_ids=cluster_ids,
        metrics=metrics,
        clock=lambda: NOW,
        protection=protection,
    )
    if lines is None:
        return App(
            authenticator=authenticator,
            metrics=metrics,
            report_denial_reason=report_denial_reason,
        )
    return App(
        authenticator=authenticator,
        metrics=metrics,
        review_log=lines.append,
        report_denial_reason=report_denial_reason,
    )


async def denied(app_lines: tuple[App, list[dict[str, object]]], body: bytes) -> dict[str, object]:
    """Post `body`; check it is a cacheable denial (200, no status.error); its log fields."""
    app, lines = app_lines
    response = await app(post(body))
    status = json.loads(response.body)["status"]
    assert response.status == 200
    assert status == {"authenticated": False, "user": {}}
    return lines[-1]


def logged(sts: StsHandler, **options: object) -> tuple[App, list[dict[str, object]]]:
    """An app from `build_app` and the list its review log lines go to."""
    lines: list[dict[str, object]] = []
    return build_app(sts, lines=lines, **options), lines  # type: ignore[arg-type]


def post(body: bytes, *, method: str = "POST", path: str = "/authenticate") -> Request:
    """A request as the HTTP layer hands it to the app."""
    return Request(method=method, path=path, query="", headers=(), body=body, client=None)


async def test_mapped_user_is_allowed_with_request_version() -> None:
    """A verified, mapped identity gets 200, authenticated true, and the request's apiVersion."""
    sts = ok_sts()
    app = build_app(sts)
    response = await app(post(review_body(make_token(), version="authentication.k8s.io/v1beta1")))
    doc = json.loads(response.body)
    assert response.status == 200
    assert doc["apiVersion"] == "authentication.k8s.io/v1beta1"
    assert doc["kind"] == "TokenReview"
    assert doc["status"]["authenticated"] is True
    assert doc["status"]["user"]["username"] == "alice"
    assert doc["status"]["user"]["groups"] == ["dev"]
    assert doc["status"]["user"]["uid"] == "aws-iam-authenticator:123456789012:AIDAALICE"
    [call] = sts.calls  # type: ignore[attr-defined]
    assert call.headers["x-k8s-aws-id"] == "test-cluster"


@pytest.mark.parametrize(
    ("sts_status", "sts_body", "status", "reason"),
    [
        (403, b"<Error><Code>SignatureDoesNotMatch</Code></Error>", 200, "sts_rejected"),
        (400, b"<Error><Code>Throttling</Code></Error>", 429, "throttled"),
        (500, b"oops", 503, "sts_unavailable"),
        (302, b"", 503, "sts_unavailable"),
    ],
)
async def test_sts_outcomes_follow_the_table(
    sts_status: int, sts_body: bytes, status: int, reason: str
) -> None:
    """STS refusals are 200 denials without status.error (cacheable), the reason in the log line
    only; throttling and outages carry it in status.error and retry with Retry-After."""
    app, lines = logged(lambda _: httpx.Response(sts_status, content=sts_body))
    response = await app(post(review_body(make_token())))
    doc = json.loads(response.body)
    assert response.status == status
    assert doc["status"]["authenticated"] is False
    assert lines[-1]["reason"] == reason
    if status == 200:
        assert "error" not in doc["status"]
    else:
        assert doc["status"]["error"].startswith(f"{reason}: ")
    headers = dict(response.headers)
    assert ("retry-after" in headers) == (status != 200)


async def test_report_denial_reason_puts_it_in_status_error() -> None:
    """With --report-denial-reason a definitive denial says `<reason>: <detail>` as before."""
    forbidden = httpx.Response(403, content=b"<Error><Code>SignatureDoesNotMatch</Code></Error>")
    app, lines = logged(lambda _: forbidden, report_denial_reason=True)
    response = await app(post(review_body(make_token())))
    assert response.status == 200
    error = json.loads(response.body)["status"]["error"]
    assert error.startswith("sts_rejected: ") and "SignatureDoesNotMatch" in error
    assert lines[-1]["reason"] == "sts_rejected"


async def test_expired_token_denied_without_calling_sts() -> None:
    """A token past its 15 minutes is a bad_token denial and STS is never asked."""
    sts = ok_sts()
    token = make_token(signed=NOW - timedelta(minutes=16))
    line = await denied(logged(sts), review_body(token))
    assert line["reason"] == "bad_token"
    assert "expired" in str(line["error"])
    assert sts.calls == []  # type: ignore[attr-defined]


async def test_foreign_host_never_reaches_the_network() -> None:
    """A token naming a host outside the allowlist is refused locally."""
    sts = ok_sts()
    token = make_token(host="https://evil.example.com")
    line = await denied(logged(sts), review_body(token))
    assert line["reason"] == "bad_token"
    assert sts.calls == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("arn", "user_id", "reason"),
    [
        ("arn:aws:iam::123456789012:user/Bob", "AIDABOB", "not_mapped"),
        ("arn:aws:sts::123456789012:assumed-role/Sneaky/s1", "AROASNEAKY:s1", "reserved_prefix"),
    ],
)
async def test_mapping_refusals_are_cacheable_denials(arn: str, user_id: str, reason: str) -> None:
    """An unmapped identity or a reserved username is a 200 denial; the log names the reason."""
    identity = {
        "GetCallerIdentityResponse": {
            "GetCallerIdentityResult": {"Arn": arn, "Account": "123456789012", "UserId": user_id}
        }
    }
    line = await denied(logged(ok_sts(identity)), review_body(make_token()))
    assert line["reason"] == reason


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"apiVersion": "authentication.k8s.io/v1", "kind": "SubjectAccessReview"}',
        b'{"apiVersion": "authentication.k8s.io/v2", "kind": "TokenReview"}',
        b'{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": 7}}',
        b"[" * 500_000 + b"]" * 500_000,  # 1 MB of nesting, the body limit
    ],
    ids=["empty", "text", "array", "kind", "version", "token-type", "nesting"],
)
async def test_malformed_requests_get_400(body: bytes) -> None:
    """A body that is not a v1/v1beta1 TokenReview gets 400 with a reason, never a 500."""
    response = await build_app(ok_sts())(post(body))
    assert response.status == 400
    assert response.body.endswith(b"\n")


async def test_missing_token_is_a_denial() -> None:
    """A TokenReview without a token is answered with authenticated false and bad_token."""
    body = b'{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {}}'
    line = await denied(logged(ok_sts()), body)
    assert line["reason"] == "bad_token"
    assert line["error"] == "input token was not properly formatted: token is missing"


async def test_routes_and_methods() -> None:
    """GET /authenticate is 405, /healthz is ok, unknown paths 404, /metrics has upstream names."""
    app = build_app(ok_sts())
    assert (await app(post(b"", method="GET"))).status == 405
    health = await app(post(b"", method="GET", path="/healthz"))
    assert (health.status, health.body) == (200, b"ok")
    missing = await app(post(b"", method="GET", path="/nope"))
    assert (missing.status, missing.body) == (404, b"404 page not found\n")
    await app(post(review_body(make_token())))
    metrics = (await app(post(b"", method="GET", path="/metrics"))).body.decode()
    assert 'aws_iam_authenticator_authenticate_latency_seconds_count{result="success"} 1.0' in (
        metrics
    )
    assert 'aws_iam_authenticator_sts_responses_total{ResponseCode="200"' in metrics


async def test_rotation_tries_older_cluster_ids() -> None:
    """A token signed for an older cluster ID is accepted after STS refuses the current one."""

    def sts(request: httpx.Request) -> httpx.Response:
        if request.headers["x-k8s-aws-id"] != "old-id":
            return httpx.Response(403, content=b"<Code>SignatureDoesNotMatch</Code>")
        return httpx.Response(200, json=ALICE)

    app = build_app(sts, cluster_ids=("new-id", "old-id"))
    doc = json.loads((await app(post(review_body(make_token())))).body)
    assert doc["status"]["authenticated"] is True


async def test_review_log_line_never_holds_the_token() -> None:
    """The one log line per review names the decision and identity but not token or signature."""
    app = build_app(ok_sts())
    token = make_token()
    with capture_logs() as logs:
        await app(post(review_body(token)))
        await app(post(review_body(token + "x")))
    reviews = [entry for entry in logs if entry["event"] == "review"]
    assert [entry["decision"] for entry in reviews] == ["allow", "deny"]
    assert reviews[0]["username"] == "alice"
    text = repr(logs)
    assert token[20:60] not in text
    assert SIGNATURE not in text


def error_classes(cls: type[AuthdError] = AuthdError) -> Iterator[type[AuthdError]]:
    """`cls` and every subclass of it, however deep."""
    yield cls
    for sub in cls.__subclasses__():
        yield from error_classes(sub)


def test_every_error_class_has_its_own_row() -> None:
    """Each AuthdError class, in errors.py or any other authd module, is named by the table."""
    for module in pkgutil.walk_packages(authd.__path__, "authd."):
        if not module.name.endswith("__main__"):  # running it would parse pytest's argv
            importlib.import_module(module.name)  # subclasses defined anywhere get registered
    classes = {c for c in error_classes() if c.__module__.startswith("authd.")}
    assert {c for c in classes if c.__module__ == errors.__name__} >= {
        errors.TokenFormatError,
        errors.CredentialError,
    }  # the walk sees the tree
    assert sorted(c.__qualname__ for c in classes - set(OUTCOMES)) == []
    for cls, outcome in OUTCOMES.items():
        assert outcome is INTERNAL_ERROR or outcome.reason in (cls.reason, "sts_unavailable")


def test_a_class_without_a_row_is_an_internal_error() -> None:
    """The table is read by exact class: a new subclass never inherits its parent's answer."""

    class Unlisted(NotMappedError):
        pass

    assert outcome_of(NotMappedError("x")).reason == "not_mapped"
    assert outcome_of(Unlisted("x")) is INTERNAL_ERROR
    assert outcome_of(RuntimeError("x")) is INTERNAL_ERROR


def test_each_reason_has_one_outcome() -> None:
    """Rows sharing a reason code agree on status, decision and label (metrics key by reason)."""
    for outcome in (*OUTCOMES.values(), INTERNAL_ERROR):
        assert BY_REASON[outcome.reason] == outcome
    assert {o.decision for o in BY_REASON.values()} == {"allow", "deny", "retry"}


class BrokenTable:
    """A mapping table with a bug: every lookup raises RuntimeError, naming the caller's ARN."""

    def lookup(self, identity: Identity) -> Entry | None:
        """Fail as a buggy backend would."""
        raise RuntimeError(f"lookup exploded for {identity.arn}")

    def is_account_allowed(self, account_id: str) -> bool:
        """Never reached."""
        return False


async def test_unexpected_error_answers_500_and_is_logged_and_counted() -> None:
    """A bug in a mapper answers 500 internal_error, still logs the review line and counts it,
    and logs the traceback at error level without the token."""
    metrics = Metrics(process_collector=False)
    app = build_app(ok_sts(), table=BrokenTable(), metrics=metrics)
    token = make_token()
    with capture_logs(processors=log_processors()) as logs:
        response = await app(post(review_body(token)))
    assert response.status == 500
    status = json.loads(response.body)["status"]
    assert status["authenticated"] is False
    assert status["error"] == "internal_error: unexpected RuntimeError"
    [line] = [entry for entry in logs if entry["event"] == "review"]
    assert (line["decision"], line["reason"]) == ("retry", "internal_error")
    assert line["arn"] == "arn:aws:iam::123456789012:user/Alice"
    [failure] = [entry for entry in logs if entry["event"] == "review failed"]
    assert failure["log_level"] == "error"
    assert failure["request_id"] == line["request_id"]
    assert failure["exception"].startswith("Traceback (most recent call last):")
    assert (
        "RuntimeError: lookup exploded for arn:aws:iam::123456789012:user/Alice"
        in (failure["exception"])
    )
    assert token[20:60] not in repr(logs)
    get = metrics.registry.get_sample_value
    assert get("authd_reviews_total", {"decision": "retry", "reason": "internal_error"}) == 1.0
    labels = {"result": INTERNAL_ERROR.result}
    assert get("aws_iam_authenticator_authenticate_latency_seconds_count", labels) == 1.0
