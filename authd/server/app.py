"""The webhook's routes and the one table that turns each review outcome into an HTTP answer.

Definitive answers are 200 so the API server can cache them; transient ones (429, 503) carry
Retry-After so it retries (authd.md section 4). Upstream answers every refusal with 403; see
docs/migration.md for why authd does not.
"""

from __future__ import annotations

import itertools
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from authd.errors import (
    AuthdError,
    BadRequestError,
    MappingError,
    StsRejectedError,
    StsThrottledError,
    StsUnavailableError,
    TokenFormatError,
)
from authd.logs import ReviewLog, log_review
from authd.metrics import Metrics
from authd.server import review
from authd.server.authenticator import Authenticator
from authd.server.http import Request, Response

# Request IDs: a random per-process prefix and a counter, unique without a uuid4 per review.
_RUN_ID = secrets.token_hex(4)
_REVIEWS = itertools.count(1)

TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
_JSON_HEADERS = ((b"content-type", JSON.encode()),)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one kind of result is answered: HTTP status, log decision, upstream metric label."""

    status: int
    decision: str
    result: str


# The one place where outcomes become statuses and labels. Looked up along the exception's MRO.
OUTCOMES: dict[type[AuthdError], Outcome] = {
    BadRequestError: Outcome(400, "deny", "malformed_request"),
    TokenFormatError: Outcome(200, "deny", "invalid_token"),
    StsRejectedError: Outcome(200, "deny", "sts_error"),
    StsThrottledError: Outcome(429, "retry", "sts_throttling"),
    StsUnavailableError: Outcome(503, "retry", "sts_error"),
    MappingError: Outcome(200, "deny", "uknown_user"),  # upstream's spelling, kept for dashboards
}
ALLOWED = Outcome(200, "allow", "success")


def outcome_of(exc: AuthdError) -> Outcome:
    """The table entry for `exc`; an error the table does not name is a transient failure."""
    for cls in type(exc).__mro__:
        if cls in OUTCOMES:
            return OUTCOMES[cls]
    return Outcome(503, "retry", "sts_error")


class App:
    """Routes requests to the authenticator, health and metrics endpoints."""

    def __init__(
        self,
        *,
        authenticator: Authenticator,
        metrics: Metrics,
        ready: Callable[[], tuple[bool, str]] | None = None,
        review_log: ReviewLog = log_review,
    ) -> None:
        """Wire the routes.

        Args:
            ready: /readyz's check (ready, why); /readyz is not served when None.
            review_log: writes the one line per review; the daemon passes
                `authd.logs.review_log()`, the default goes through structlog.
        """
        self._authenticator = authenticator
        self._metrics = metrics
        self._ready = ready
        self._review_log = review_log

    async def __call__(self, request: Request) -> Response:
        """Answer one HTTP request; never raises for bad input."""
        if request.path == "/authenticate":
            if request.method != "POST":
                return _text(405, "expected POST\n")
            return await self.authenticate(request)
        if request.path == "/healthz":
            return _text(200, "ok")
        if request.path == "/readyz" and self._ready is not None:
            ok, why = self._ready()
            return _text(200 if ok else 503, why)
        if request.path == "/metrics":
            body, content_type = self._metrics.render()
            return Response(status=200, headers=(("content-type", content_type),), body=body)
        return _text(404, "404 page not found\n")

    async def authenticate(self, request: Request) -> Response:
        """Answer one TokenReview and write its one log line."""
        started = time.perf_counter()
        # The review's log line, in its key order: the outcome (filled in at the end), the
        # request ID, then who STS said signed (the authenticator adds it, once known).
        fields: dict[str, object] = {
            "decision": "",
            "reason": "",
            "backend": "",
            "latency_ms": 0.0,
            "request_id": f"{_RUN_ID}{next(_REVIEWS):08x}",
        }
        api_version = review.API_VERSIONS[1]
        backend = ""
        try:
            parsed = review.parse_request(request.body)
            api_version = parsed.api_version
            if not parsed.token:
                raise TokenFormatError("token is missing")
            verdict = await self._authenticator.authenticate(parsed.token, log_fields=fields)
        except AuthdError as exc:
            outcome, reason = outcome_of(exc), exc.reason
            response = _refusal(outcome, exc, api_version)
            fields["error"] = str(exc)
        else:
            outcome, reason, backend = ALLOWED, "", verdict.backend
            body = review.allow(api_version, verdict.user)
            response = Response(status=200, headers=_JSON_HEADERS, body=body)
            fields["username"] = verdict.user.username
            fields["groups"] = list(verdict.user.groups)
        elapsed = time.perf_counter() - started
        self._metrics.observe_review(
            result=outcome.result,
            decision=outcome.decision,
            reason=reason or "ok",
            backend=backend,
            seconds=elapsed,
        )
        fields["decision"] = outcome.decision
        fields["reason"] = reason
        fields["backend"] = backend
        fields["latency_ms"] = round(elapsed * 1000, 3)
        self._review_log(fields)
        return response


def _refusal(outcome: Outcome, exc: AuthdError, api_version: str) -> Response:
    """The answer for a refused review: text for a bad request, else a TokenReview denial."""
    if outcome.status == 400:
        return _text(400, f"{exc}\n")
    headers: list[tuple[str, str]] = [("content-type", JSON)]
    if outcome.status in (429, 503):
        retry_after = getattr(exc, "retry_after", 1.0)
        headers.append(("retry-after", str(max(1, math.ceil(retry_after)))))
    body = review.deny(api_version, reason=exc.reason, message=str(exc))
    return Response(status=outcome.status, headers=tuple(headers), body=body)


def _text(status: int, text: str) -> Response:
    return Response(status=status, headers=(("content-type", TEXT),), body=text.encode())
