"""The one table of review outcomes: each error class's reason, HTTP status, decision and label.

Every class of `authd.errors` has its own row; none is found by walking the class hierarchy,
so a new error class cannot be answered by accident (a test walks `AuthdError.__subclasses__()`).
Definitive answers are 200 so the API server can cache them; transient ones (429, 503) make it
retry; an error that should never reach a review is a bug of authd's: 500, `internal_error`
(docs/server.md lists every outcome). The app turns a row into the HTTP answer and the review's
log line; `authd.metrics` counts it by `decision` and `reason` and by upstream's `result`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from authd.errors import (
    ArnError,
    AuthdError,
    BadRequestError,
    ClientError,
    ConfigError,
    Conflict,
    CredentialError,
    Ec2Error,
    Forbidden,
    Gone,
    KubeError,
    ListenError,
    MappingError,
    NotFound,
    NotMappedError,
    ReservedPrefixError,
    StsError,
    StsRejectedError,
    StsThrottledError,
    StsUnavailableError,
    TemplateError,
    TokenFormatError,
    Unauthorized,
)

__all__ = ["ALLOWED", "BY_REASON", "INTERNAL_ERROR", "OUTCOMES", "Outcome", "outcome_of"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """How one kind of review result is answered, logged and counted.

    Attributes:
        reason: the log line's `reason` and the metric label; also the start of `status.error`
            in transient answers (and in definitive ones with `--report-denial-reason`).
        status: the HTTP status of the answer.
        decision: `allow`, `deny` (definitive) or `retry` (transient), in logs and metrics.
        result: upstream's `result` label of `authenticate_latency_seconds` (its spelling,
            `uknown_user` included, so existing dashboards keep working).
    """

    reason: str
    status: int
    decision: str
    result: str


ALLOWED = Outcome(reason="ok", status=200, decision="allow", result="success")
"""A mapped identity."""

INTERNAL_ERROR = Outcome(reason="internal_error", status=500, decision="retry", result="sts_error")
"""Anything unexpected inside authd (a bug): the API server gets an error and retries. Upstream
has no such label; `sts_error` is the one it gives any failure to reach a verdict."""


def _row(cls: type[AuthdError], status: int, decision: str, result: str) -> Outcome:
    """The row of an error a review can end with; its reason is the class's own `reason`."""
    return Outcome(reason=cls.reason, status=status, decision=decision, result=result)


_STS_UNAVAILABLE = _row(StsUnavailableError, 503, "retry", "sts_error")
_NOT_MAPPED = _row(NotMappedError, 200, "deny", "uknown_user")

OUTCOMES: Mapping[type[AuthdError], Outcome] = {
    BadRequestError: _row(BadRequestError, 400, "deny", "malformed_request"),
    TokenFormatError: _row(TokenFormatError, 200, "deny", "invalid_token"),
    StsRejectedError: _row(StsRejectedError, 200, "deny", "sts_error"),
    StsThrottledError: _row(StsThrottledError, 429, "retry", "sts_throttling"),
    StsUnavailableError: _STS_UNAVAILABLE,
    # STS could not vouch, for a reason no subclass names: not a verdict, so the caller retries.
    StsError: _STS_UNAVAILABLE,
    NotMappedError: _NOT_MAPPED,
    MappingError: _NOT_MAPPED,
    ReservedPrefixError: _row(ReservedPrefixError, 200, "deny", "uknown_user"),
    TemplateError: _row(TemplateError, 200, "deny", "uknown_user"),
    # Errors translated before they can end a review (STS' ARN into StsRejectedError, EC2's
    # into TemplateError) or that belong to start-up and the client: reaching here is a bug.
    ArnError: INTERNAL_ERROR,
    Ec2Error: INTERNAL_ERROR,
    ConfigError: INTERNAL_ERROR,
    ListenError: INTERNAL_ERROR,
    ClientError: INTERNAL_ERROR,
    CredentialError: INTERNAL_ERROR,
    # The Kubernetes backends keep their last good table when the API fails; never a review's.
    KubeError: INTERNAL_ERROR,
    Unauthorized: INTERNAL_ERROR,
    Forbidden: INTERNAL_ERROR,
    NotFound: INTERNAL_ERROR,
    Conflict: INTERNAL_ERROR,
    Gone: INTERNAL_ERROR,
    AuthdError: INTERNAL_ERROR,
}

BY_REASON: Mapping[str, Outcome] = {
    outcome.reason: outcome for outcome in (ALLOWED, *OUTCOMES.values(), INTERNAL_ERROR)
}
"""Every outcome a review can have, by reason code, in table order (one outcome per reason)."""


def outcome_of(exc: BaseException) -> Outcome:
    """The row for `exc`'s exact class; an exception the table does not name is a bug of authd's.

    Looked up by exact class, never along the MRO: a subclass without its own row is answered as
    an internal error rather than as whatever its parent happens to mean.
    """
    if not isinstance(exc, AuthdError):
        return INTERNAL_ERROR
    return OUTCOMES.get(type(exc), INTERNAL_ERROR)
