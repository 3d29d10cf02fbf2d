"""Ask STS who signed a verified presigned request, and turn its answer into an Identity.

The one network adapter for GetCallerIdentity (E in docs/upstream-compat.md): a single GET
through an injected `httpx.AsyncBaseTransport`, classified into the error kinds of authd 4 in
docs/upstream-compat.md.
Retries, caching and rate limits belong to the caller.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import xml.etree.ElementTree as ET
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any
from xml.parsers import expat

import httpx

from authd import jsoncodec
from authd.arn import PrincipalType, canonicalize
from authd.errors import (
    ArnError,
    StsError,
    StsRejectedError,
    StsThrottledError,
    StsUnavailableError,
    TokenFormatError,
)
from authd.gotext import go_quote
from authd.identity import Identity
from authd.server.proxies import Proxies, ProxyRouter
from authd.server.sts.transport import Http1Transport
from authd.token import CLUSTER_ID_HEADER, PresignedRequest

MAX_BODY_BYTES = 64 * 1024
"""A GetCallerIdentity answer is under 1 KiB; anything far bigger is not STS talking."""
MAX_BODY_TEXT = 1024
"""How much of an error body goes into the error message."""
MAX_CONNECTIONS = 100
"""Connections open to STS at once (direct, and per proxy); beyond that a call waits."""
KEEPALIVE_EXPIRY = 5.0
"""Seconds an idle connection is kept for reuse (httpx's default)."""

_PREPARED_KEPT = 1024
"""(scheme, origin, cluster ID) triples whose URL and headers are kept built; the allowlist
and the cluster IDs bound them, this only guards against a policy that allows very many."""
_NO_BODY = httpx.ByteStream(b"")
"""A GET's body, shared: a request given `stream=` skips httpx's per-request body encoding."""
_FIELDS = ("arn", "account", "userid")
# JSON: real STS answers GetCallerIdentity in JSON when asked. No compression (Go's transport
# asks for gzip): an answer is under 1 KiB, and a raw read keeps the size cap honest.
_HEADERS = {
    "accept": "application/json",
    # identity: the body is read raw, so no answer can be expanded past MAX_BODY_BYTES.
    "accept-encoding": "identity",
    "user-agent": f"python-httpx/{httpx.__version__}",
}
# STS' error code, in its JSON (`"Code":"SignatureDoesNotMatch"`) or XML (`<Code>...</Code>`)
# answer; codes are short CamelCase words, so anything else is not one.
_ERROR_CODE = re.compile(
    rb'"Code"\s*:\s*"([A-Za-z][A-Za-z.]{0,63})"|<Code>([A-Za-z][A-Za-z.]{0,63})</Code>'
)
# Failures a second try cannot cure: the name does not resolve, the certificate is not trusted,
# or authd's own client refused the request (all within one review's few seconds).
_FINAL_CAUSES: tuple[type[BaseException], ...] = (socket.gaierror, ssl.SSLCertVerificationError)
_LOCAL_ERRORS: tuple[type[httpx.HTTPError], ...] = (
    httpx.LocalProtocolError,
    httpx.UnsupportedProtocol,
    httpx.PoolTimeout,
)
_RESPONSE = "getcalleridentityresponse"
_RESULT = "getcalleridentityresult"
_ROLE_TYPES = (PrincipalType.ROLE, PrincipalType.ASSUMED_ROLE)


class StsClient:
    """Calls STS GetCallerIdentity for tokens that passed `authd.token.verify`.

    Every call is one `handle_async_request` on the `httpx.AsyncBaseTransport` it is given:
    the daemon's comes from `open_sts_client` (pool, proxies, TLS), a test's may be an
    `httpx.MockTransport`. No `httpx.AsyncClient` sits in between: STS needs none of its
    cookie, redirect, auth or hook handling (Go's client, which upstream uses, has no cookie jar
    and is told not to follow redirects), and it cost a third of a review's CPU
    (docs/BENCHMARKS.md). Redirects are never followed: one could reach another host.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport, *, timeout: float = 5.0) -> None:
        """Send every call through `transport`; the caller owns and closes it.

        Args:
            timeout: seconds, httpx's per-step timeout (connect, write, read, pool wait).
        """
        self._transport = transport
        self._timeout = httpx.Timeout(timeout).as_dict()
        self._prepared: dict[tuple[str, str, str], tuple[httpx.URL, httpx.Headers]] = {}

    async def get_caller_identity(self, request: PresignedRequest, *, cluster_id: str) -> Identity:
        """Send the presigned GET with this server's cluster ID and return who signed it.

        Args:
            request: the checked request from `authd.token.verify`; its URL is sent untouched.
            cluster_id: sent as `x-k8s-aws-id`; STS fails the signature if it differs.

        Raises:
            StsThrottledError: STS answered 429 or a body naming `Throttling`.
            StsRejectedError: any other 4xx, or an ARN/UserId that is not an identity.
            StsUnavailableError: 3xx, 5xx, timeout, transport failure, unreadable body.
        """
        status, body, content_type = await self._fetch(request, cluster_id)
        if status != 200:
            raise _status_error(status, body, request.region_label)
        return parse_identity(
            body, content_type, access_key_id=request.access_key_id, host=request.host
        )

    async def _fetch(self, request: PresignedRequest, cluster_id: str) -> tuple[int, bytes, str]:
        """One GET, never following redirects; returns status, body and content type."""
        try:
            outgoing = self._request(request, cluster_id)
            response = await self._transport.handle_async_request(outgoing)
        except httpx.HTTPError as exc:
            raise StsUnavailableError(
                f"error during GET: {_cause(exc)} on {request.region_label} endpoint",
                retryable=can_retry(exc),
            ) from exc
        except (httpx.InvalidURL, UnicodeError) as exc:
            # A URL that passed the local checks but that httpx or the resolver cannot use (a
            # host label idna cannot encode): the token is malformed, a definitive denial.
            raise TokenFormatError(f"unusable pre-signed URL host {request.host}: {exc}") from exc
        response.request = outgoing
        try:
            body = await _read_body(response)
        finally:
            await response.aclose()
        return response.status_code, body, response.headers.get("content-type", "")

    def _request(self, request: PresignedRequest, cluster_id: str) -> httpx.Request:
        """The GET for `request`: its origin as the URL, its path and query as the target.

        The target goes in httpx's `target` extension, byte for byte as signed (authd.token
        allows only bytes a query may carry, so nothing would be re-encoded anyway), and the
        URL is the origin's, parsed once: parsing each presigned URL cost 26 us a call. The
        signature is thus not in `request.url` (but for a proxied request, whose URL the
        router rebuilds whole), so httpx's error messages do not carry it.
        """
        scheme, _, rest = request.url.partition("://")
        origin, slash, path = rest.partition("/")
        key = (scheme, origin, cluster_id)
        prepared = self._prepared.get(key)
        if prepared is None:
            if len(self._prepared) >= _PREPARED_KEPT:
                self._prepared.clear()
            url = httpx.URL(f"{scheme}://{origin}/")
            headers = httpx.Headers(
                [
                    ("host", url.netloc.decode("ascii")),
                    *_HEADERS.items(),
                    (CLUSTER_ID_HEADER, cluster_id),
                ]
            )
            prepared = self._prepared[key] = (url, headers)
        url, headers = prepared
        extensions = {"timeout": self._timeout, "target": (slash + path).encode("ascii")}
        return httpx.Request("GET", url, headers=headers, stream=_NO_BODY, extensions=extensions)


@contextlib.asynccontextmanager
async def open_sts_client(
    *,
    step_timeout: float,
    proxies: Proxies,
    ssl_context: ssl.SSLContext | None = None,
    max_connections: int = MAX_CONNECTIONS,
    transport: str = "authd",
) -> AsyncIterator[StsClient]:
    """The StsClient the server and `authd verify` use; its connections close with the block.

    Requests go straight to STS or through the proxy `proxies` names for their URL
    (authd/server/proxies.py: upstream's environment rules, loopback never proxied), over a
    keep-alive pool of at most `max_connections`; `step_timeout` bounds each step (connect, write,
    read, pool wait).

    Args:
        step_timeout: seconds, httpx's per-step timeout (`--sts-timeout`).
        proxies: from the environment (`Proxies.from_env`), passed in by the CLI.
        ssl_context: verifies STS (through a proxy's tunnel too); the system's trust store
            (`ssl.create_default_context()`, which honours SSL_CERT_FILE) when None, as Go's.
        max_connections: connections to STS open at once, kept alive as long as idle.
        transport: "authd" (Http1Transport, about 2x the reviews/s of httpx's own pool in
            docs/BENCHMARKS.md) or "httpx" (`httpx.AsyncHTTPTransport`); the latter only for
            the server benchmark's A/B, not a setting.
    """
    context = ssl_context or ssl.create_default_context()
    direct = _direct_transport(transport, context, max_connections)

    def through(proxy: str) -> httpx.AsyncBaseTransport:
        return httpx.AsyncHTTPTransport(
            proxy=proxy, verify=context, limits=_limits(max_connections), trust_env=False
        )

    if not proxies:  # no request can go through a proxy: no router in the way
        async with direct:
            yield StsClient(direct, timeout=step_timeout)
        return
    async with ProxyRouter(direct, proxies, through=through) as router:
        yield StsClient(router, timeout=step_timeout)


def _limits(max_connections: int) -> httpx.Limits:
    """Every connection may stay alive idle: STS traffic comes back in bursts."""
    return httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=KEEPALIVE_EXPIRY,
    )


def _direct_transport(
    kind: str, context: ssl.SSLContext, max_connections: int
) -> httpx.AsyncBaseTransport:
    """The transport for requests that no proxy applies to."""
    if kind == "authd":
        return Http1Transport(
            ssl_context=context, max_connections=max_connections, keepalive_expiry=KEEPALIVE_EXPIRY
        )
    if kind != "httpx":
        raise ValueError(f"unknown STS transport {kind!r}")
    return httpx.AsyncHTTPTransport(
        verify=context, limits=_limits(max_connections), trust_env=False
    )


async def _read_body(response: httpx.Response) -> bytes:
    """Read the body as sent, at most MAX_BODY_BYTES of it; a content-encoded body is refused.

    authd asks for `identity` (an answer is under 1 KiB: compression would gain nothing) and
    reads raw bytes: decoding first would expand each 64 KiB read up to a thousandfold (64 MB of
    gzipped zeros) before the cap could see it.
    """
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise StsUnavailableError(
            f"error reading HTTP result: content encoding {go_quote(encoding)} was not asked for",
            status=response.status_code,
        )
    status = response.status_code
    if response.is_stream_consumed:  # read already (a MockTransport's answer)
        if len(response.content) > MAX_BODY_BYTES:
            raise _too_large(status)
        return response.content
    stream = response.stream
    if not isinstance(stream, httpx.AsyncByteStream):
        raise TypeError("an async transport must answer with an async byte stream")
    chunks = stream.__aiter__()
    pieces: list[bytes] = []
    size = 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _too_large(status)
            pieces.append(chunk)
    except httpx.HTTPError as exc:
        raise StsUnavailableError(
            f"error reading HTTP result: {_cause(exc)}", status=status
        ) from exc
    finally:
        # A generator left early must be finalised now, not whenever it is collected.
        if isinstance(chunks, AsyncGenerator):
            await chunks.aclose()
    return b"".join(pieces)


def _too_large(status: int) -> StsUnavailableError:
    return StsUnavailableError(
        f"error reading HTTP result: body larger than {MAX_BODY_BYTES} bytes", status=status
    )


def can_retry(exc: httpx.HTTPError) -> bool:
    """Whether another try of the request that failed with `exc` could succeed.

    Not when the failure is authd's own (a request its client refuses, no pooled connection
    free) or cannot change within a review (the host does not resolve, its certificate is not
    trusted): retrying those only spends the deadline and the STS allowance.
    """
    if isinstance(exc, _LOCAL_ERRORS):
        return False
    seen: BaseException | None = exc
    for _ in range(8):  # httpx -> httpcore -> OSError: a short chain, never a cycle to follow
        if seen is None:
            break
        if isinstance(seen, _FINAL_CAUSES):
            return False
        seen = seen.__cause__ or seen.__context__
    return True


def _cause(exc: Exception) -> str:
    """The text of a transport error; some httpx errors have none, so fall back to the type."""
    return str(exc) or type(exc).__name__


def _status_error(status: int, body: bytes, region: str) -> StsError:
    """Classify a non-200 answer (E3, authd 4 in docs/upstream-compat.md)."""
    text = body.decode("utf-8", "replace")
    if status == 429 or "Throttling" in text:
        return StsThrottledError(_shorten(text), status=status)
    detail = f"error from AWS (expected 200, got {status}) on {region} endpoint. Body: "
    if 400 <= status < 500:
        return StsRejectedError(detail + _shorten(text), status=status, code=error_code(body))
    return StsUnavailableError(detail + _shorten(text), status=status, code=error_code(body))


def error_code(body: bytes) -> str:
    """STS' error code in an error answer (JSON or XML), or "" when it names none."""
    found = _ERROR_CODE.search(body[: MAX_BODY_TEXT * 4])
    if found is None:
        return ""
    return (found.group(1) or found.group(2)).decode("ascii")


def _shorten(text: str) -> str:
    """Keep error messages readable when a proxy answers with a whole web page."""
    if len(text) <= MAX_BODY_TEXT:
        return text
    return f"{text[:MAX_BODY_TEXT]}... ({len(text)} characters in all)"


def parse_identity(body: bytes, content_type: str, *, access_key_id: str, host: str) -> Identity:
    """Turn a 200 GetCallerIdentity answer into an Identity (E4-E5 in docs/upstream-compat.md).

    Real STS answers JSON when asked; moto answers XML whatever is asked
    (moto in docs/upstream-compat.md), so the body's first character decides. JSON field names match
    in any case, as Go's decoder does.

    Raises:
        StsUnavailableError: the body is neither such JSON nor such XML.
        StsRejectedError: the ARN does not canonicalise, or a role's UserId is not `id:session`.
    """
    if body.lstrip().startswith(b"<"):
        fields = _xml_fields(body, content_type)
    else:
        fields = _json_fields(body, content_type)
    return _identity(fields, access_key_id=access_key_id, host=host)


def _unreadable(problem: str, content_type: str) -> StsUnavailableError:
    """A 200 we cannot read is transient: the caller may retry.

    See authd 4 in docs/upstream-compat.md.
    """
    kind = content_type or "no content type"
    return StsUnavailableError(
        f"unreadable GetCallerIdentity answer ({kind}): {problem}", status=200
    )


def _json_fields(body: bytes, content_type: str) -> dict[str, str]:
    """Arn, Account and UserId from `GetCallerIdentityResponse.GetCallerIdentityResult`."""
    try:
        document = jsoncodec.loads(body)
    except ValueError as exc:  # bad JSON or text, or absurd nesting
        raise _unreadable(str(exc), content_type) from exc
    result = _member(_member(document, _RESPONSE), _RESULT)
    if not isinstance(result, dict):
        raise _unreadable("no GetCallerIdentityResponse.GetCallerIdentityResult", content_type)
    fields = {name: _member(result, name) for name in _FIELDS}
    if not all(value is None or isinstance(value, str) for value in fields.values()):
        raise _unreadable("Arn, Account and UserId must be strings", content_type)
    return {name: value or "" for name, value in fields.items()}


def _member(document: Any, name: str) -> Any:
    """A JSON object's member matched ignoring case (the last match wins, as in Go); or None."""
    if not isinstance(document, dict):
        return None
    found = None
    for key, value in document.items():
        if key.lower() == name:
            found = value
    return found


def _xml_fields(body: bytes, content_type: str) -> dict[str, str]:
    """Arn, Account and UserId from moto's `<GetCallerIdentityResponse>` XML answer."""
    try:
        root = _parse_xml(body)
    except _DocumentTypeError as exc:
        raise _unreadable("XML with a document type declaration", content_type) from exc
    except expat.ExpatError as exc:
        raise _unreadable(f"invalid XML: {exc}", content_type) from exc
    result = _xml_child(root, _RESULT) if _local_name(root) == _RESPONSE else None
    if result is None:
        raise _unreadable(f"unexpected XML element <{_local_name(root)}>", content_type)
    return {name: _xml_text(result, name) for name in _FIELDS}


class _DocumentTypeError(ValueError):
    """The XML has a document type declaration (where entities are declared): refused."""


def _parse_xml(body: bytes) -> ET.Element:
    """Parse `body` with expat, refusing any DTD once expat has decoded it, in any encoding.

    A byte search for `<!DOCTYPE` misses a UTF-16 body; expat's own declaration handlers see
    every encoding it accepts. Only elements and text are kept: an STS answer needs no more.

    Raises:
        _DocumentTypeError: a document type or entity declaration.
        expat.ExpatError: the body is not well-formed XML.
    """
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate(namespace_separator="}")

    def refuse(*_: object) -> None:
        raise _DocumentTypeError

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.Parse(body, True)
    return builder.close()


def _local_name(element: ET.Element) -> str:
    """The lower-cased tag without its `{namespace}`."""
    return element.tag.rpartition("}")[2].lower()


def _xml_child(element: ET.Element, name: str) -> ET.Element | None:
    """The first child with that local name, ignoring case; or None."""
    return next((child for child in element if _local_name(child) == name), None)


def _xml_text(element: ET.Element, name: str) -> str:
    """The text of a child element, "" when absent (as missing JSON fields are)."""
    child = _xml_child(element, name)
    return "" if child is None else (child.text or "")


def _identity(fields: dict[str, str], *, access_key_id: str, host: str) -> Identity:
    """Build the Identity; role sessions split UserId into role ID and session name (E5)."""
    try:
        kind, canonical = canonicalize(fields["arn"])
    except ArnError as exc:
        raise StsRejectedError(str(exc), status=200) from exc
    user_id, session = fields["userid"], ""
    if kind in _ROLE_TYPES:
        parts = user_id.split(":")
        if len(parts) != 2:
            raise StsRejectedError(f"malformed UserID {go_quote(user_id)}", status=200)
        user_id, session = parts
    return Identity(
        arn=fields["arn"],
        canonical_arn=canonical,
        account_id=fields["account"],
        user_id=user_id,
        session_name=session,
        access_key_id=access_key_id,
        sts_endpoint=host,
    )
