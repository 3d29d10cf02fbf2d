"""The TokenReview wire format: parsing requests and building answers."""

from __future__ import annotations

import json

import pytest

from authd.errors import BadRequestError
from authd.identity import User
from authd.server import review

V1, V1BETA1 = review.API_VERSIONS
NODE_EXTRA = {
    "sigs.k8s.io/aws-iam-authenticator/principalId": ["AROANODE"],
    "accessKeyId": ["ASIANODE"],
    "arn": ["arn:aws:sts::123456789012:assumed-role/Node/i-0abc"],
    "sessionName": ["i-0abc"],
}
USERS = [
    User(username="alice", uid="aws-iam-authenticator:1:AIDA"),
    User(username="bob", uid="u", groups=("dev", "ops"), extra=NODE_EXTRA),
    User(username="system:node:ip-10-0-0-1.ec2.internal", uid="u", groups=("system:nodes",)),
    # Text JSON must escape: quotes, backslashes, control characters, non-ASCII, a lone
    # surrogate (a JSON body may carry one into a session name).
    User(
        username='quote" back\\ tab\t nl\n',
        uid="uid\x00\x1f\x7f",
        groups=("caf\u00e9", "\u65e5\u672c", "\U0001f600", "\ud800"),
        extra={"z": [], "a": ["", "\u2028"], "\u00e9": ["x"]},
    ),
]


def document(api_version: str, status: dict[str, object]) -> dict[str, object]:
    """The whole answer document for `status`."""
    return {
        "apiVersion": api_version,
        "kind": "TokenReview",
        "metadata": {"creationTimestamp": None},
        "spec": {},
        "status": status,
    }


@pytest.mark.parametrize("api_version", [V1, V1BETA1])
@pytest.mark.parametrize("user", USERS, ids=["plain", "extra", "node", "escapes"])
def test_allow_answers_the_user(api_version: str, user: User) -> None:
    """Empty groups and extra are left out; extra keys are sorted; every string survives."""
    info: dict[str, object] = {"username": user.username, "uid": user.uid}
    if user.groups:
        info["groups"] = list(user.groups)
    if user.extra:
        info["extra"] = {key: user.extra[key] for key in sorted(user.extra)}
    answer = review.allow(api_version, user)
    assert answer.endswith(b"}\n")
    doc = json.loads(answer)
    assert doc == document(api_version, {"authenticated": True, "user": info})
    assert list(doc["status"]["user"].get("extra", {})) == sorted(user.extra)
    if user.username.isascii() and all(group.isascii() for group in user.groups):
        # Compact JSON, as `json.dumps` with compact separators writes it.
        compact = json.dumps(json.loads(answer), separators=(",", ":")).encode() + b"\n"
        assert answer == compact


def test_deny_carries_the_error_it_is_given() -> None:
    """A denial says authenticated false, an empty user and the error it is given."""
    answer = review.deny(V1, error='not_mapped: ARN "x" is not mapped')
    status = {"authenticated": False, "user": {}, "error": 'not_mapped: ARN "x" is not mapped'}
    assert json.loads(answer) == document(V1, status)


def test_deny_without_error_has_no_error_field() -> None:
    """A denial with no error has no `status.error` at all, so kube-apiserver caches it."""
    answer = review.deny(V1)
    assert json.loads(answer) == document(V1, {"authenticated": False, "user": {}})


def test_parse_request_reads_version_and_token() -> None:
    """The answer's apiVersion is the request's; a missing token is left to the caller."""
    body = json.dumps({"apiVersion": V1BETA1, "kind": "TokenReview", "spec": {"token": "t"}})
    assert review.parse_request(body.encode()) == review.ReviewRequest(
        api_version=V1BETA1, token="t"
    )
    empty = json.dumps({"apiVersion": V1, "kind": "TokenReview"}).encode()
    assert review.parse_request(empty).token == ""


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "expected a request body"),
        (b"{", "expected a request body to be a TokenReview"),
        (b"[]", "not a JSON object"),
        (b'{"kind":"Pod","apiVersion":"authentication.k8s.io/v1"}', "expected kind TokenReview"),
        (b'{"kind":"TokenReview","apiVersion":"v1"}', "unsupported apiVersion"),
        (
            b'{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","spec":{"token":1}}',
            "spec.token must be a string",
        ),
    ],
)
def test_parse_request_refuses_what_is_not_a_token_review(body: bytes, message: str) -> None:
    """Each malformed body gets a BadRequestError saying what was wrong."""
    with pytest.raises(BadRequestError, match=message):
        review.parse_request(body)
