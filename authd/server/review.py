"""The TokenReview wire format: parse the API server's request, build the answer bytes.

Pure functions over bytes and frozen values; no HTTP and no verification here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypedDict

from authd import jsoncodec
from authd.errors import BadRequestError
from authd.identity import User

API_VERSIONS = ("authentication.k8s.io/v1", "authentication.k8s.io/v1beta1")
KIND = "TokenReview"


class UserInfo(TypedDict, total=False):
    """`status.user` of a TokenReview."""

    username: str
    uid: str
    groups: list[str]
    extra: dict[str, list[str]]


class ReviewStatus(TypedDict, total=False):
    """`status` of a TokenReview answer."""

    authenticated: bool
    user: UserInfo
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReviewRequest:
    """What authd reads from a TokenReview: the version to answer with, and the token."""

    api_version: str
    token: str


def parse_request(body: bytes) -> ReviewRequest:
    """Parse a TokenReview request body.

    Raises:
        BadRequestError: empty body, not JSON, not an object, wrong kind or apiVersion, or a
            token that is not a string. A missing or empty token is not an error here: it is a
            definitive denial, decided by the caller.
    """
    if not body:
        raise BadRequestError("expected a request body")
    try:
        doc: Any = jsoncodec.loads(body)
    except ValueError as exc:
        raise BadRequestError(f"expected a request body to be a TokenReview: {exc}") from exc
    if not isinstance(doc, dict):
        raise BadRequestError("expected a request body to be a TokenReview: not a JSON object")
    if doc.get("kind") != KIND:
        raise BadRequestError(f"expected kind {KIND}, got {doc.get('kind')!r}")
    api_version = doc.get("apiVersion")
    if api_version not in API_VERSIONS:
        raise BadRequestError(
            f"unsupported apiVersion {api_version!r}; expected one of {', '.join(API_VERSIONS)}"
        )
    spec = doc.get("spec") or {}
    token = spec.get("token", "") if isinstance(spec, dict) else None
    if not isinstance(token, str):
        raise BadRequestError("spec.token must be a string")
    return ReviewRequest(api_version=api_version, token=token)


def allow(api_version: str, user: User) -> bytes:
    """The answer for an authenticated user; empty groups and extra are omitted, as upstream."""
    info: UserInfo = {"username": user.username, "uid": user.uid}
    if user.groups:
        info["groups"] = list(user.groups)
    if user.extra:
        info["extra"] = {key: user.extra[key] for key in sorted(user.extra)}
    return _answer(api_version, {"authenticated": True, "user": info})


def deny(api_version: str, *, error: str = "") -> bytes:
    """A refusal; `status.error` is `error`, left out when empty (docs/server.md).

    A definitive denial carries none, so kube-apiserver caches it: it treats a non-empty
    `status.error` as a failed review, and never caches those.
    """
    status: ReviewStatus = {"authenticated": False, "user": {}}
    if error:
        status["error"] = error
    return _answer(api_version, status)


def _answer(api_version: str, status: ReviewStatus) -> bytes:
    doc = {
        "apiVersion": api_version,
        "kind": KIND,
        "metadata": {"creationTimestamp": None},
        "spec": {},
        "status": status,
    }
    return jsoncodec.dumps(doc) + b"\n"
