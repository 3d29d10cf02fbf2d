"""The webhook's routes: each review's outcome (authd.outcomes) becomes its HTTP answer here.

Definitive answers are 200 with no `status.error`, so the API server can cache them (the reason
is in the review's log line and metric, tied to it by the request ID; `--report-denial-reason`
adds it to the answer); transient ones (429, 503) carry Retry-After and `status.error` so it
retries; an unexpected error inside authd is a 500 (docs/server.md). Upstream answers every
refusal with 403; see docs/migration.md for why authd does not.
"""

from __future__ import annotations

import itertools
import math
import secrets
import time
from collections.abc import Callable

import structlog
import trio

from authd.errors import AuthdError, TokenFormatError
from authd.logs import ReviewLog, log_review
from authd.metrics import Metrics
from authd.outcomes import ALLOWED, INTERNAL_ERROR, Outcome, outcome_of
from authd.server import review
from authd.server.authenticator import Authenticator
from authd.server.http import Request, Response

# Request IDs: a random per-process prefix and a counter, unique without a uuid4 per review.
_RUN_ID = secrets.token_hex(4)
_REVIEWS = itertools.count(1)

TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
_JSON_HEADERS = ((b"content-type", JSON.encode()),)


class App:
    """Routes requests to the authenticator, health and metrics endpoints."""

    def __init__(
        self,
        *,
        authenticator: Authenticator,
        metrics: Metrics,
        ready: Callable[[], tuple[bool, str]] | None = None,
        review_log: ReviewLog = log_review,
        report_denial_reason: bool = False,
    ) -> None:
        """Wire the routes.

        Args:
            ready: /readyz's check (ready, why); /readyz is not served when None.
            review_log: writes the one line per review; the daemon passes
                `authd.logs.review_log()`, the default goes through structlog.
            report_denial_reason: also put `<reason>: <detail>` in `status.error` of
                definitive denials (`--report-denial-reason`); the API server then caches none.
        """
        self._authenticator = authenticator
        self._metrics = metrics
        self._ready = ready
        self._review_log = review_log
        self._report_denial_reason = report_denial_reason

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
            # In a worker thread: with every label set at its bound, rendering takes
            # milliseconds that reviews on the loop need not wait for (docs/BENCHMARKS.md).
            body, content_type = await trio.to_thread.run_sync(self._metrics.render)
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
        except Exception as exc:  # never BaseException: trio's Cancelled must pass
            outcome = outcome_of(exc)
            if outcome is INTERNAL_ERROR:
                # A bug: its traceback goes to the log (redacted like every line); the
                # review is still answered, logged and counted below.
                structlog.get_logger("authd.server").error(
                    "review failed", request_id=fields["request_id"], exc_info=exc
                )
            response = _refusal(outcome, exc, api_version, report=self._report_denial_reason)
            fields["error"] = _detail(exc)
        else:
            outcome, backend = ALLOWED, verdict.backend
            body = review.allow(api_version, verdict.user)
            response = Response(status=200, headers=_JSON_HEADERS, body=body)
            fields["username"] = verdict.user.username
            fields["groups"] = list(verdict.user.groups)
        elapsed = time.perf_counter() - started
        self._metrics.observe_review(
            result=outcome.result,
            decision=outcome.decision,
            reason=outcome.reason,
            backend=backend,
            seconds=elapsed,
        )
        fields["decision"] = outcome.decision
        fields["reason"] = "" if outcome is ALLOWED else outcome.reason
        fields["backend"] = backend
        fields["latency_ms"] = round(elapsed * 1000, 3)
        self._review_log(fields)
        return response


def _refusal(outcome: Outcome, exc: Exception, api_version: str, *, report: bool) -> Response:
    """The answer for a refused review: text for a bad request, else a TokenReview denial.

    A definitive denial (200) says why only when `report` is set; a transient one always does.
    """
    detail = _detail(exc)
    if outcome.status == 400:
        return _text(400, f"{detail}\n")
    headers: list[tuple[str, str]] = [("content-type", JSON)]
    if outcome.status in (429, 503):
        retry_after = getattr(exc, "retry_after", 1.0)
        headers.append(("retry-after", str(max(1, math.ceil(retry_after)))))
    definitive = outcome.status == 200
    error = "" if definitive and not report else f"{outcome.reason}: {detail}"
    body = review.deny(api_version, error=error)
    return Response(status=outcome.status, headers=tuple(headers), body=body)


def _detail(exc: Exception) -> str:
    """What the answer and the log line say about `exc`: an AuthdError's own text; for anything
    else only its class name, since a foreign message may hold what the caller must not see."""
    return str(exc) if isinstance(exc, AuthdError) else f"unexpected {type(exc).__name__}"


def _text(status: int, text: str) -> Response:
    return Response(status=status, headers=(("content-type", TEXT),), body=text.encode())
