"""The STS adapter: one GET per review, every answer classified.

See E, authd 4 in docs/upstream-compat.md.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import botocore.session
import httpx
import pytest
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from moto.moto_server.threaded_moto_server import ThreadedMotoServer

from authd.errors import StsRejectedError, StsThrottledError, StsUnavailableError
from authd.identity import Identity
from authd.server.sts.client import MAX_BODY_BYTES, StsClient, parse_identity
from authd.token import EndpointPolicy, PresignedRequest, encode, verify
from tests.wire import sent_url

CLUSTER = "prod-cluster"
HOST = "sts.us-west-2.amazonaws.com"
URL = (
    f"https://{HOST}/?Action=GetCallerIdentity&Version=2011-06-15"
    "&X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=ASIAEXAMPLE%2F20240115%2Fus-west-2%2Fsts%2Faws4_request"
    "&X-Amz-Date=20240115T115500Z&X-Amz-Expires=60"
    "&X-Amz-Security-Token=IQo%2Bsession%2Ftoken%3D%3D"
    "&X-Amz-SignedHeaders=host%3Bx-k8s-aws-id&X-Amz-Signature=" + "0f" * 32
)
NOW = datetime(2024, 1, 15, 12, 0, tzinfo=UTC)
ROLE_ARN = "arn:aws:sts::123456789012:assumed-role/Org/Admin/alice"
# Byte for byte how moto 5.2 answers GetCallerIdentity (captured from moto_server).
MOTO_XML = (
    '<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
    "<GetCallerIdentityResult><UserId>{user_id}</UserId><Account>123456789012</Account>"
    "<Arn>{arn}</Arn></GetCallerIdentityResult><ResponseMetadata><RequestId>"
    "jnGBJMtN3upHUgC7rdbSQhHQso025lClMfZc5wGl6hq3Vo1oluxD</RequestId></ResponseMetadata>"
    "</GetCallerIdentityResponse>"
)
SIGNATURE_MISMATCH = (
    '{"Error":{"Code":"SignatureDoesNotMatch","Message":"The request signature we calculated '
    'does not match the signature you provided.","Type":"Sender"},"RequestId":"r-1"}'
)

Handler = Callable[[httpx.Request], httpx.Response]


def _presigned() -> PresignedRequest:
    """The checked request for URL, produced by the real token verifier."""
    return verify(encode(URL), now=NOW, policy=EndpointPolicy.create(partition="aws"))


def _json_answer(arn: str, user_id: str, **names: str) -> bytes:
    """A GetCallerIdentity JSON answer as real STS sends it; `names` renames keys."""
    result = {
        names.get("Arn", "Arn"): arn,
        names.get("UserId", "UserId"): user_id,
        names.get("Account", "Account"): "123456789012",
    }
    response = {"GetCallerIdentityResult": result, "ResponseMetadata": {"RequestId": "r-1"}}
    return json.dumps({names.get("Response", "GetCallerIdentityResponse"): response}).encode()


async def _call(handler: Handler) -> tuple[Any, list[Any]]:
    """Run one get_caller_identity against `handler`; return the outcome and the requests seen."""
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    transport = httpx.MockTransport(record)
    async with transport:
        try:
            outcome: Any = await StsClient(transport).get_caller_identity(
                _presigned(), cluster_id=CLUSTER
            )
        except (StsRejectedError, StsThrottledError, StsUnavailableError) as exc:
            outcome = exc
    return outcome, seen


def _answer(status: int, body: bytes | str, content_type: str = "text/xml") -> Handler:
    """A handler that always answers `status` with `body`."""
    content = body.encode() if isinstance(body, str) else body
    return lambda _: httpx.Response(status, content=content, headers={"content-type": content_type})


async def test_json_answer_for_assumed_role() -> None:
    """A JSON 200 gives the canonical role, split UserId, key ID and endpoint host."""
    body = _json_answer(ROLE_ARN, "AROAEXAMPLE:alice")
    identity, seen = await _call(_answer(200, body, "application/json"))
    assert identity == Identity(
        arn=ROLE_ARN,
        canonical_arn="arn:aws:iam::123456789012:role/Org/Admin",
        account_id="123456789012",
        user_id="AROAEXAMPLE",
        session_name="alice",
        access_key_id="ASIAEXAMPLE",
        sts_endpoint=HOST,
    )
    assert len(seen) == 1


async def test_request_carries_cluster_id_and_untouched_url() -> None:
    """Exactly one GET of the presigned URL, byte for byte, with the cluster ID and JSON accept."""
    _, seen = await _call(_answer(200, _json_answer(ROLE_ARN, "AROA:s"), "application/json"))
    (request,) = seen
    assert request.method == "GET"
    assert str(sent_url(request)) == URL
    assert request.extensions["target"].decode() == URL.removeprefix(f"https://{HOST}")
    # The signature stays out of request.url, and so out of any httpx error message.
    assert str(request.url) == f"https://{HOST}/"
    assert request.headers["x-k8s-aws-id"] == CLUSTER
    assert request.headers["accept"] == "application/json"
    assert "authorization" not in request.headers


async def test_json_field_names_match_in_any_case() -> None:
    """Field names are matched case-insensitively, as Go's JSON decoder does."""
    names = {"Response": "getCallerIdentityResponse", "Arn": "ARN", "UserId": "userid"}
    body = _json_answer("arn:aws:iam::123456789012:user/dev/Bob", "AIDAEXAMPLE", **names)
    identity, _ = await _call(_answer(200, body, "application/json"))
    assert (identity.canonical_arn, identity.user_id, identity.session_name) == (
        "arn:aws:iam::123456789012:user/dev/Bob",
        "AIDAEXAMPLE",
        "",
    )


async def test_moto_xml_answer() -> None:
    """moto's XML answer (it ignores the JSON accept header) is read the same way."""
    body = MOTO_XML.format(user_id="AROAEXAMPLE:alice", arn=ROLE_ARN)
    identity, _ = await _call(_answer(200, body, "text/xml"))
    assert identity.canonical_arn == "arn:aws:iam::123456789012:role/Org/Admin"
    assert (identity.user_id, identity.session_name) == ("AROAEXAMPLE", "alice")
    assert identity.account_id == "123456789012"


@pytest.mark.parametrize(
    ("arn", "user_id"),
    [
        ("arn:aws:iam::123456789012:user/Alice", "AIDAEXAMPLE"),
        ("arn:aws:iam::123456789012:root", "123456789012"),
        ("arn:aws:sts::123456789012:federated-user/Bob", "123456789012:Bob"),
    ],
)
def test_non_role_user_id_is_kept_whole(arn: str, user_id: str) -> None:
    """Users, root and federated users keep the whole UserId and have no session name."""
    body = MOTO_XML.format(user_id=user_id, arn=arn).encode()
    identity = parse_identity(body, "text/xml", access_key_id="AKID", host="h")
    assert (identity.user_id, identity.session_name, identity.arn) == (user_id, "", arn)


@pytest.mark.parametrize("user_id", ["AROAEXAMPLE", "AROA:a:b", ""])
async def test_malformed_role_user_id_is_rejected(user_id: str) -> None:
    """A role session whose UserId is not exactly `id:session` is a definitive rejection."""
    body = _json_answer(ROLE_ARN, user_id)
    error, _ = await _call(_answer(200, body, "application/json"))
    assert isinstance(error, StsRejectedError) and error.status == 200
    assert str(error) == f'sts getCallerIdentity failed: malformed UserID "{user_id}"'


async def test_arn_that_is_not_an_identity_is_rejected() -> None:
    """An ARN that does not canonicalise fails with the ARN error text, as a rejection."""
    body = MOTO_XML.format(user_id="AKIAEXAMPLE", arn="arn:aws:sts::123456789012:user/moto")
    error, _ = await _call(_answer(200, body))
    assert isinstance(error, StsRejectedError)
    assert error.detail == "unrecognized resource user/moto for service sts"


async def test_signature_mismatch_is_rejected() -> None:
    """403 SignatureDoesNotMatch (wrong cluster ID) is a definitive StsRejectedError."""
    error, _ = await _call(_answer(403, SIGNATURE_MISMATCH, "application/json"))
    assert isinstance(error, StsRejectedError) and error.status == 403
    assert str(error) == (
        "sts getCallerIdentity failed: error from AWS (expected 200, got 403) "
        f"on us-west-2 endpoint. Body: {SIGNATURE_MISMATCH}"
    )


async def test_throttling_body_is_throttled() -> None:
    """A 400 whose body names `Throttling` is throttling, with the body as detail."""
    body = '{"Error":{"Code":"Throttling","Message":"Rate exceeded","Type":"Sender"}}'
    error, _ = await _call(_answer(400, body, "application/json"))
    assert isinstance(error, StsThrottledError) and error.status == 400
    assert str(error) == f"sts getCallerIdentity was throttled: {body}"


async def test_http_429_is_throttled() -> None:
    """HTTP 429 is throttling even when the body does not say so."""
    error, _ = await _call(_answer(429, "slow down"))
    assert isinstance(error, StsThrottledError) and error.status == 429


@pytest.mark.parametrize("status", [500, 503])
async def test_server_error_is_unavailable(status: int) -> None:
    """5xx is transient, reported with upstream's text."""
    error, _ = await _call(_answer(status, "InternalFailure"))
    assert isinstance(error, StsUnavailableError) and error.status == status
    assert error.detail == (
        f"error from AWS (expected 200, got {status}) on us-west-2 endpoint. Body: InternalFailure"
    )


async def test_redirect_is_never_followed() -> None:
    """A 302 is unavailable and not followed: StsClient sends one request per call."""

    def redirect(_: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"location": "https://attacker.example/"})

    error, seen = await _call(redirect)
    assert isinstance(error, StsUnavailableError) and error.status == 302
    assert [request.url.host for request in seen] == [HOST]


@pytest.mark.parametrize(
    ("failure", "cause"),
    [
        (httpx.ConnectTimeout("timed out"), "timed out"),
        (httpx.ReadTimeout(""), "ReadTimeout"),
        (httpx.ConnectError("[Errno 111] Connection refused"), "[Errno 111] Connection refused"),
    ],
)
async def test_transport_failure_is_unavailable(failure: Exception, cause: str) -> None:
    """Timeouts and connection errors are transient, with no status and upstream's text."""

    def fail(_: httpx.Request) -> httpx.Response:
        raise failure

    error, _ = await _call(fail)
    assert isinstance(error, StsUnavailableError) and error.status is None
    assert error.detail == f"error during GET: {cause} on us-west-2 endpoint"
    assert error.__cause__ is failure


async def test_body_read_failure_is_unavailable() -> None:
    """A connection lost while reading the body is transient (`error reading HTTP result`)."""

    class Broken(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"<GetCallerIdentityResponse>"
            raise httpx.ReadError("connection reset")

    error, _ = await _call(lambda _: httpx.Response(200, stream=Broken()))
    assert isinstance(error, StsUnavailableError) and error.status == 200
    assert error.detail == "error reading HTTP result: connection reset"


async def test_oversized_body_is_unavailable() -> None:
    """A body beyond MAX_BODY_BYTES is not read to the end."""
    error, _ = await _call(_answer(200, b"{" + b" " * MAX_BODY_BYTES + b"}"))
    assert isinstance(error, StsUnavailableError)
    assert "body larger than" in error.detail


async def test_long_error_body_is_shortened() -> None:
    """An error page is cut in the message, which still says how long it was."""
    error, _ = await _call(_answer(502, "x" * 5000, "text/html"))
    assert isinstance(error, StsUnavailableError)
    assert error.detail.endswith("x... (5000 characters in all)")
    assert len(error.detail) < 1200


_XML_DTD = (
    '<?xml version="1.0" encoding="utf-16"?><!DOCTYPE r [<!ENTITY a "aaaa">]>'
    "<GetCallerIdentityResponse><GetCallerIdentityResult><Arn>&a;</Arn>"
    "</GetCallerIdentityResult></GetCallerIdentityResponse>"
)


@pytest.mark.parametrize(
    ("body", "content_type", "problem"),
    [
        (b"<html><body>Service Unavailable</body></html>", "text/html", "<html>"),
        (b"not json at all", "text/plain", "Expecting value"),
        (b"", "", "no content type"),
        (b'{"Error": "nope"}', "application/json", "no GetCallerIdentityResponse"),
        (b"<GetCallerIdentityResponse><oops>", "text/xml", "invalid XML"),
        (b'{"GetCallerIdentityResponse":{"GetCallerIdentityResult":{"Arn":1}}}', "", "strings"),
        (b"[" * 100000, "application/json", "exceeded maximum nesting depth"),
        (
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa">]><GetCallerIdentityResponse/>',
            "text/xml",
            "document type declaration",
        ),
        # UTF-16 walks past a byte search for "<!DOCTYPE"; expat decodes it first.
        (_XML_DTD.encode("utf-16-le"), "text/xml", "document type declaration"),
        (b"<!DOCTYPE r><GetCallerIdentityResponse/>", "text/xml", "document type declaration"),
    ],
)
async def test_unreadable_200_is_unavailable(body: bytes, content_type: str, problem: str) -> None:
    """A 200 that is neither STS JSON nor STS XML is transient and says what it got."""
    error, _ = await _call(_answer(200, body[: MAX_BODY_BYTES - 1], content_type))
    assert isinstance(error, StsUnavailableError) and error.status == 200
    assert "unreadable GetCallerIdentity answer" in error.detail
    assert problem in error.detail


def test_moto_s3_answer_is_unreadable() -> None:
    """moto's S3 answer to an unrouted presigned GET is not mistaken for an identity."""
    body = (
        b'<?xml version="1.0" encoding="utf-8"?>\n<ListAllMyBucketsResult xmlns="http://s3.'
        b'amazonaws.com/doc/2006-03-01/"><Buckets/></ListAllMyBucketsResult>'
    )
    with pytest.raises(StsUnavailableError, match="unexpected XML element <listallmybuckets"):
        parse_identity(body, "application/xml", access_key_id="A", host="h")


# ---------------------------------------------------------------------------------------------
# Against moto itself: real sockets, real SigV4 presigning by botocore.


class _MotoFront(httpx.AsyncBaseTransport):
    """Plays STS in front of moto: adds the Authorization header moto routes on.

    See moto in docs/upstream-compat.md.
    """

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.seen: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        query = dict(parse_qsl(sent_url(request).query.decode()))
        request.headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={query['X-Amz-Credential']}, "
            f"SignedHeaders={query['X-Amz-SignedHeaders']}, Signature={query['X-Amz-Signature']}"
        )
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """A moto server on a free loopback port, stopped after this module's tests."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def _moto_client(endpoint: str, service: str, credentials: Credentials | None = None) -> Any:
    """A botocore client for moto, with explicit credentials so no local config is read."""
    credentials = credentials or Credentials("AKIAIOSFODNN7EXAMPLE", "bootstrap")
    return botocore.session.get_session().create_client(
        service,
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id=credentials.access_key,
        aws_secret_access_key=credentials.secret_key,
        aws_session_token=credentials.token,
    )


def _role_credentials(endpoint: str) -> Credentials:
    """An IAM user in moto assumes a role; returns the session credentials."""
    iam = _moto_client(endpoint, "iam")
    iam.create_user(UserName="sts-test-alice")
    key = iam.create_access_key(UserName="sts-test-alice")["AccessKey"]
    trust = {"Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "*"}]}
    role = iam.create_role(RoleName="StsTestAdmin", AssumeRolePolicyDocument=json.dumps(trust))
    user = Credentials(key["AccessKeyId"], key["SecretAccessKey"])
    assumed = _moto_client(endpoint, "sts", user).assume_role(
        RoleArn=role["Role"]["Arn"], RoleSessionName="alice-laptop"
    )["Credentials"]
    return Credentials(assumed["AccessKeyId"], assumed["SecretAccessKey"], assumed["SessionToken"])


def _presign(endpoint: str, credentials: Credentials) -> str:
    """Presign GetCallerIdentity as the token client does, signing the cluster ID header."""
    request = AWSRequest(
        method="GET",
        url=f"{endpoint}/?Action=GetCallerIdentity&Version=2011-06-15",
        headers={"x-k8s-aws-id": CLUSTER},
    )
    SigV4QueryAuth(credentials, "sts", "us-east-1", expires=60).add_auth(request)
    return str(request.url)


async def test_identity_from_moto(moto_endpoint: str) -> None:
    """A role session token verified locally and sent to moto yields the role identity."""
    credentials = _role_credentials(moto_endpoint)
    policy = EndpointPolicy.create(partition="aws", extra_origins=[moto_endpoint])
    request = verify(
        encode(_presign(moto_endpoint, credentials)), now=datetime.now(UTC), policy=policy
    )
    front = _MotoFront()
    async with front:
        identity = await StsClient(front, timeout=10).get_caller_identity(
            request, cluster_id=CLUSTER
        )
    assert identity.canonical_arn == "arn:aws:iam::123456789012:role/StsTestAdmin"
    assert identity.arn.endswith(":assumed-role/StsTestAdmin/alice-laptop")
    assert identity.user_id.startswith("AROA") and identity.session_name == "alice-laptop"
    assert identity.access_key_id == credentials.access_key
    assert identity.sts_endpoint == moto_endpoint.removeprefix("http://")
    (sent,) = front.seen
    assert str(sent_url(sent)) == request.url and sent.headers["x-k8s-aws-id"] == CLUSTER
