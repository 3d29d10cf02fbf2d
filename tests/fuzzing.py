"""The fuzzing properties of docs/RELIABILITY.md, shared by tests/test_fuzz_*.py and bench/fuzz.py.

Each target is a hypothesis strategy and a check that raises AssertionError when an invariant
breaks. `run` feeds one target N cases with reproducible settings (no example database,
derandomized) and returns how many ran; the tests run a few thousand, `python -m bench fuzz`
runs 100,000.

Invariants, for every case:
- no exception escapes but the documented error type (`ConfigError`, `TokenFormatError`);
- no 5xx, and no 429/503 either: nothing here may make STS throttle or fail;
- no false accept: `authenticated: true` only for a token the signing STS stand-in
  (tests/fakes/signing_sts.py) signed itself, checked from the token text alone and by the
  stand-in's record of what it answered;
- no request outside the allowlist: the canary (tests/fakes/canary.py), named in many spellings
  by the tokens, is never connected to, and every STS request goes to the stand-in or to an AWS
  STS host the policy allows (those are answered locally: no test reaches the internet);
- no token, token body or signature in any log line, as rendered by authd.logs;
- a config or DynamicFile version that fails to parse leaves the last good snapshot in place.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote_plus

import httpx
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from authd.config import FileConfig, MappingConfig
from authd.errors import TokenFormatError
from authd.logs import add_timestamp, render_json
from authd.mapping.chain import Backend, MapperChain
from authd.mapping.file import MountedFileTable
from authd.metrics import Metrics
from authd.server.app import App
from authd.server.authenticator import Authenticator
from authd.server.http import Limits, Request, Response, serve_stream
from authd.server.sts.client import StsClient
from authd.server.sts.guard import StsProtection
from authd.server.sts.transport import Http1Transport
from authd.token import EndpointPolicy, encode, verify
from tests.fakes.canary import Canary
from tests.fakes.signing_sts import SigningSts, decode_url, genuine, sign

T = TypeVar("T")

NOW = datetime(2024, 1, 15, 12, 0, tzinfo=UTC)
CLUSTER_ID = "fuzz-cluster"
CONFIG = f"""\
clusterID: {CLUSTER_ID}
server:
  mapUsers:
  - userarn: arn:aws:iam::123456789012:user/Alice
    username: alice
    groups: [dev]
"""
# AWS STS hosts the policy allows; requests to them are answered here, never sent.
_AWS_STS_HOST = re.compile(
    r"sts(-fips)?\.([a-z0-9-]+\.)?(amazonaws\.com(\.cn)?|api\.aws|amazonwebservices\.com\.cn)"
    r"(:[0-9]+)?",
    re.IGNORECASE,
)
_SECRET_KEYS = ("x-amz-signature", "x-amz-security-token")
MIN_SECRET = 16  # shorter texts may occur in a log line by chance (a request ID, a date)


def fuzz_settings(max_examples: int) -> settings:
    """Reproducible settings: no example database, derandomized, no deadline."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


def run(strategy: st.SearchStrategy[T], check: Callable[[T], None], max_examples: int) -> int:
    """Check `max_examples` cases drawn from `strategy`; returns how many ran.

    Raises:
        AssertionError (or any escaping exception): the first failing case, shrunk.
    """
    count = [0]

    @fuzz_settings(max_examples)
    @given(strategy)
    def prop(case: T) -> None:
        count[0] += 1
        check(case)

    try:
        prop()
    finally:
        _last_count[0] = count[0]
    return count[0]


_last_count = [0]  # cases the last `run` got through, failing or not (for `timed`)


# ---------------------------------------------------------------------------------------------
# The token harness: the real App on a trio loop in a thread, the signing STS, the canary


class _Routing(httpx.AsyncBaseTransport):
    """The real Http1Transport for loopback; AWS STS hosts answered 403 here; all requests noted."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.hosts: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Note the request's host; answer AWS hosts as STS would an unknown signature."""
        netloc = request.url.netloc.decode("ascii")
        self.hosts.append(netloc)
        if _AWS_STS_HOST.fullmatch(netloc):
            body = b"<Error><Code>SignatureDoesNotMatch</Code></Error>"
            return httpx.Response(403, content=body, headers={"content-type": "text/xml"})
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        """Close the real transport."""
        await self.inner.aclose()


class TokenHarness:
    """The App over the real authenticator, StsClient and Http1Transport, on its own trio loop.

    Use as a context manager; `review` and `exchange` call into the loop from any thread.
    """

    def __init__(self) -> None:
        self.sts = SigningSts()
        self.canary = Canary()
        self.lines: list[str] = []
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._routing = _Routing(Http1Transport(max_connections=20))
        self.app: App | None = None
        self._failure: BaseException | None = None

    def __enter__(self) -> TokenHarness:
        self.sts.start()
        self.canary.start()
        self._thread.start()
        self._ready.wait(30)
        if self._failure is not None or self._token is None:
            raise RuntimeError("the fuzzing loop did not start") from self._failure
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None and self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(30)
        self.canary.stop()
        self.sts.stop()

    async def _main(self) -> None:
        try:
            self._stop = trio.Event()
            async with self._routing as transport:
                self.app = self._build_app(transport)
                self._token = trio.lowlevel.current_trio_token()
                self._ready.set()
                await self._stop.wait()
        except Exception as exc:
            self._failure = exc
            self._ready.set()

    def _build_app(self, transport: httpx.AsyncBaseTransport) -> App:
        mapping = MappingConfig.from_file_config(FileConfig.from_text(CONFIG, path="config.yaml"))
        metrics = Metrics(process_collector=False)
        authenticator = Authenticator(
            policy=EndpointPolicy.create(
                partition="aws", region="us-east-1", extra_origins=[self.sts.url]
            ),
            sts=StsClient(transport, timeout=10.0),
            chain=MapperChain([Backend("MountedFile", MountedFileTable.from_config(mapping))]),
            cluster_ids=(CLUSTER_ID,),
            metrics=metrics,
            clock=lambda: NOW,
            # Far above what the fuzzer sends: a 429 here would be the fuzzer's doing.
            protection=StsProtection(qps=1e9, burst=10**9),
        )
        return App(authenticator=authenticator, metrics=metrics, review_log=self._write_line)

    def _write_line(self, fields: dict[str, object]) -> None:
        """The daemon's JSON review line (authd.logs.review_log), kept instead of written."""
        fields["event"] = "review"
        fields["level"] = "info"
        self.lines.append(render_json(None, "info", add_timestamp(None, "info", fields)))

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run async `fn(*args)` on the harness loop and return its result."""
        assert self._token is not None
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def review(self, body: bytes) -> Response:
        """POST `body` to /authenticate in-process."""
        request = Request(
            method="POST", path="/authenticate", query="", headers=(), body=body, client=None
        )
        assert self.app is not None
        return self.call(self.app, request)  # type: ignore[no-any-return]

    def exchange(self, raw: bytes) -> bytes:
        """Send `raw` to the real HTTP server (serve_stream over a memory stream), then EOF;
        return every byte it answered before closing."""
        return self.call(self._exchange, raw)  # type: ignore[no-any-return]

    async def _exchange(self, raw: bytes) -> bytes:
        client, server = trio.testing.memory_stream_pair()
        assert self.app is not None
        received = b""
        with trio.fail_after(30):  # a hang is a finding: the server must close after EOF
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(serve_stream, server, self.app, limits=Limits()))
                await client.send_all(raw)
                await client.send_eof()
                while chunk := await _receive(client):
                    received += chunk
        return received

    def take_hosts(self) -> list[str]:
        """The STS hosts requested since the last call."""
        hosts, self._routing.hosts = self._routing.hosts, []
        return hosts


async def _receive(stream: trio.abc.Stream) -> bytes:
    try:
        return bytes(await stream.receive_some(65536))
    except trio.BrokenResourceError:
        return b""


# ---------------------------------------------------------------------------------------------
# Token strategies

URL_CHARS = "abcXYZ019-._~:/?#[]@!$&'()*+,;=% \"<>\\^`{|}\x7f\x00\t\u00e9\u212a"
_PARAMS = (
    "Action",
    "Version",
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Security-Token",
)


@dataclass(frozen=True, slots=True)
class TokenCase:
    """A token, and whether it is an untouched token the stand-in signed (it must be allowed)."""

    token: str
    signed: bool = False


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%SZ")


@st.composite
def _query_params(draw: st.DrawFn) -> list[tuple[str, str]]:
    """The parameters of a well-formed presigned GetCallerIdentity, in a drawn order."""
    signed_at = NOW - timedelta(seconds=draw(st.integers(0, 14 * 60)))
    stamp = _stamp(signed_at)
    params = [
        ("Action", "GetCallerIdentity"),
        ("Version", "2011-06-15"),
        ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
        ("X-Amz-Credential", f"AKIAFUZZ%2F{stamp[:8]}%2Fus-east-1%2Fsts%2Faws4_request"),
        ("X-Amz-Date", stamp),
        ("X-Amz-Expires", str(draw(st.integers(0, 900)))),
        ("X-Amz-SignedHeaders", draw(st.sampled_from(["host%3Bx-k8s-aws-id", "x-k8s-aws-id"]))),
    ]
    if draw(st.booleans()):
        chunks = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=8, max_size=30)
        session = "%2B".join(draw(st.lists(chunks, min_size=1, max_size=3)))
        params.append(("X-Amz-Security-Token", session))
    return draw(st.permutations(params))


def signed_url(host: str, params: list[tuple[str, str]], *, cluster_id: str = CLUSTER_ID) -> str:
    """`http://<host>/?<params>&X-Amz-Signature=<the stand-in's signature for them>`."""
    query = "&".join(f"{key}={value}" for key, value in params)
    signature = sign(host=host, cluster_id=cluster_id, query=query)
    return f"http://{host}/?{query}&X-Amz-Signature={signature}"


def signed_tokens(harness: TokenHarness) -> st.SearchStrategy[TokenCase]:
    """Untouched tokens the stand-in signed for this cluster: each must be allowed."""
    return _query_params().map(lambda p: TokenCase(encode(signed_url(harness.sts.netloc, p)), True))


@st.composite
def _mutated_url(draw: st.DrawFn, harness: TokenHarness) -> str:
    """A signed URL, then edited: characters, parameters, host, scheme, or its signer."""
    params = draw(_query_params())
    host = harness.sts.netloc
    kinds = ["chars", "params", "respell", "host", "resign", "cluster", "aws"]
    kind = draw(st.sampled_from(kinds))
    if kind == "cluster":  # signed for another cluster: STS must refuse it
        return signed_url(host, params, cluster_id=draw(st.sampled_from(["other", "", "FUZZ"])))
    if kind == "resign":  # correctly signed, but for a canary spelling
        return signed_url(draw(st.sampled_from(harness.canary.netlocs())), params)
    if kind == "aws":
        aws = ["sts.amazonaws.com", "sts.us-east-1.amazonaws.com", "sts-fips.us-west-2.api.aws"]
        return signed_url(draw(st.sampled_from(aws)), params).replace("http://", "https://", 1)
    url = signed_url(host, params)
    if kind == "params":
        extra = draw(_param_edits())
        url = url + extra if draw(st.booleans()) else url.replace("/?", f"/?{extra[1:]}&", 1)
    elif kind == "host":
        url = draw(_rehosted(url, harness))
    elif kind == "respell":  # the same secret parameters, keys spelled as a parser may read them
        for key in ("X-Amz-Signature=", "X-Amz-Security-Token="):
            url = url.replace(f"&{key}", "&" + draw(st.sampled_from(_spellings(key))))
    if kind != "chars" and draw(st.booleans()):
        return url
    for _ in range(draw(st.integers(1, 3))):
        index = draw(st.integers(0, len(url)))
        op = draw(st.sampled_from(["insert", "replace", "delete"]))
        char = draw(st.sampled_from(URL_CHARS))
        tail = url[index + 1 :] if op != "insert" else url[index:]
        url = url[:index] + ("" if op == "delete" else char) + tail
    return url


def _spellings(key: str) -> list[str]:
    """`key` (ending `=`) as written, lower-cased, and with one character percent-escaped."""
    escaped = [f"{key[:i]}%{ord(key[i]):02X}{key[i + 1 :]}" for i in (0, 1, 5, len(key) - 2)]
    return [key, key.lower(), key.upper(), *escaped]


def _param_edits() -> st.SearchStrategy[str]:
    """Parameters appended to a query: duplicates, case changes, escapes, unknown keys."""
    key = st.one_of(
        st.sampled_from(_PARAMS),
        st.sampled_from(_PARAMS).map(str.lower),
        st.sampled_from(["X-Amz-Signatur%65", "X%2DAmz-Signature", "x-amz-signature", "Foo"]),
        st.text(URL_CHARS, max_size=10),
    )
    secret = st.text("abcdef0123456789", min_size=MIN_SECRET, max_size=64)
    value = st.one_of(secret, st.text(URL_CHARS, max_size=20))
    pair = st.tuples(key, st.sampled_from(["=", "", "==", "%3D"]), value).map("".join)
    return st.lists(pair, min_size=1, max_size=3).map(lambda items: "&" + "&".join(items))


@st.composite
def _rehosted(draw: st.DrawFn, url: str, harness: TokenHarness) -> str:
    """`url` with its scheme and authority replaced: canary spellings, userinfo tricks."""
    canary = draw(st.sampled_from(harness.canary.netlocs()))
    own = harness.sts.netloc
    authority = draw(
        st.sampled_from(
            [
                canary,
                f"{own}@{canary}",
                f"{canary}@{own}",
                f"{canary}#@{own}",
                f"{canary}\\@{own}",
                f"{canary}?@{own}",
                f"{own}.{canary}",
                f"{own}:{canary.rpartition(':')[2]}",
                f"user:pass@{own}",
                own.upper(),
                f"{own}.",
                f"{own}/..",
            ]
        )
    )
    scheme = draw(st.sampled_from(["http", "HTTP", "https", "hTTp", "ftp", "", "http:"]))
    rest = url.partition("://")[2].partition("/")[2]
    return f"{scheme}://{authority}/{rest}"


@st.composite
def _base64_edit(draw: st.DrawFn, token: str) -> str:
    """A token edited after encoding: its body, padding, line breaks or prefix."""
    prefix, body = token[:11], token[11:]
    op = draw(st.sampled_from(["char", "pad", "breaks", "prefix", "truncate"]))
    index = draw(st.integers(0, max(0, len(body) - 1)))
    if op == "char":
        char = draw(st.sampled_from("AZaz09-_+/=.\r\n \x00\u00e9"))
        body = body[:index] + char + body[index + 1 :]
    elif op == "pad":
        body += draw(st.sampled_from(["=", "==", "===", "A", "AA"]))
    elif op == "breaks":
        body = body[:index] + draw(st.sampled_from(["\n", "\r\n", "\r"])) + body[index:]
    elif op == "prefix":
        prefix = draw(
            st.sampled_from(["K8S-AWS-V1.", "k8s-aws-v1", "k8s-aws-v2.", "", " k8s-aws-v1."])
        )
    else:
        body = body[:index]
    return prefix + body


def tokens(harness: TokenHarness) -> st.SearchStrategy[TokenCase]:
    """Every kind of token the fuzzer makes (see docs/RELIABILITY.md)."""
    mutated = _mutated_url(harness).map(encode)
    return st.one_of(
        signed_tokens(harness),
        mutated.map(TokenCase),
        mutated.map(TokenCase),
        mutated.map(TokenCase),
        signed_tokens(harness).flatmap(lambda case: _base64_edit(case.token)).map(TokenCase),
        st.text(max_size=64).map(lambda text: TokenCase("k8s-aws-v1." + text)),
        st.text(URL_CHARS, max_size=300).map(lambda text: TokenCase(encode(text))),
        st.binary(max_size=200).map(lambda raw: TokenCase("k8s-aws-v1." + _b64(raw))),
        st.text(max_size=40).map(TokenCase),
        st.integers(4090, 4200).map(lambda n: TokenCase(("k8s-aws-v1." + "A" * n)[:n])),
    )


def _b64(raw: bytes) -> str:
    return encode(raw.decode("latin-1")).removeprefix("k8s-aws-v1.")


# ---------------------------------------------------------------------------------------------
# Token and review properties


def secrets_of(token: str) -> list[str]:
    """What must never be logged: the token, its body and its signature/session-token values."""
    found = [token, token[11:]] if len(token) - 11 >= MIN_SECRET else []
    url = decode_url(token) or ""
    public = []  # the URL's other pieces: a value that is also there is no secret
    for piece in re.split(r"[?&#;]", url):
        key, _, value = piece.partition("=")
        with contextlib.suppress(UnicodeError):
            if unquote_plus(key).lower() in _SECRET_KEYS and len(value) >= MIN_SECRET:
                found += [value, unquote_plus(value)]
                continue
        public.append(piece)
    return [secret for secret in found if not any(secret in piece for piece in public)]


def check_token(harness: TokenHarness, case: TokenCase) -> None:
    """The pure verifier, then a review through the App: every invariant above."""
    try:
        checked = verify(case.token, now=NOW, policy=_policy(harness))
    except TokenFormatError:
        pass
    else:
        origin = f"{checked.url.partition('://')[0]}://{checked.host.lower()}"
        allowed = origin == harness.sts.url or _AWS_STS_HOST.fullmatch(checked.host)
        assert allowed, f"verify passed a URL for {checked.host!r}"
    doc = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview"}
    body = json.dumps({**doc, "spec": {"token": case.token}}).encode()
    response = check_review(harness, body, secrets_of(case.token), token=case.token)
    assert response.status == 200, response
    authenticated = json.loads(response.body)["status"]["authenticated"]
    if case.signed:
        assert authenticated, "a token the stand-in signed was refused"


_POLICIES: dict[str, EndpointPolicy] = {}


def _policy(harness: TokenHarness) -> EndpointPolicy:
    url = harness.sts.url
    if url not in _POLICIES:
        _POLICIES[url] = EndpointPolicy.create(
            partition="aws", region="us-east-1", extra_origins=[url]
        )
    return _POLICIES[url]


def check_review(
    harness: TokenHarness, body: bytes, secrets: list[str], *, token: str | None
) -> Response:
    """Review `body` through the App and check the answer, the requests made and the logs."""
    harness.lines.clear()
    with capture_logs() as events:
        response = harness.review(body)
    assert response.status in (200, 400), f"status {response.status}: {response.body[:200]!r}"
    if response.status == 200:
        status = json.loads(response.body)["status"]
        if status["authenticated"]:
            assert token is not None and _stand_in_signed(harness, token), "false accept"
    assert harness.canary.hits == 0, f"the canary was reached: {harness.canary.kinds()}"
    for host in harness.take_hosts():
        assert host == harness.sts.netloc or _AWS_STS_HOST.fullmatch(host), host
    lines = harness.lines + [render_json(None, "info", dict(event)) for event in events]
    assert len(harness.lines) == 1, harness.lines
    for line in lines:
        for secret in secrets:
            assert secret not in line, f"logged a secret: {line}"
    return response


def _stand_in_signed(harness: TokenHarness, token: str) -> bool:
    """From the token text alone: the stand-in's signature over what the token carries; and the
    stand-in did answer that query with an identity."""
    url = decode_url(token)
    if url is None:
        return False
    scheme, _, rest = url.partition("://")
    authority, _, target = rest.partition("/")
    host = authority.rpartition("@")[2].lower()  # user info is not part of the request
    if not genuine(f"{scheme}://{host}/{target}", host=harness.sts.netloc, cluster_id=CLUSTER_ID):
        return False
    return harness.sts.was_accepted(target[1:].partition("#")[0])


_JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)


def _json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)


_JSON = st.recursive(_JSON_SCALARS, _json_containers, max_leaves=8)


@st.composite
def _review_doc(draw: st.DrawFn, harness: TokenHarness) -> tuple[bytes, str | None]:
    """A TokenReview-like JSON body: right or wrong kind, version, spec and token types."""
    token = draw(tokens(harness)).token
    api = st.sampled_from(["authentication.k8s.io/v1", "authentication.k8s.io/v1beta1", "v1"])
    doc: dict[str, Any] = {
        "apiVersion": draw(st.one_of(api, _JSON)),
        "kind": draw(st.one_of(st.just("TokenReview"), _JSON)),
    }
    spec = draw(
        st.one_of(
            st.just({"token": token}),
            st.just({"token": token + "\ud800"}),
            st.dictionaries(st.sampled_from(["token", "audiences", "x"]), _JSON, max_size=3),
            _JSON,
        )
    )
    if draw(st.booleans()):
        doc["spec"] = spec
    text = json.dumps(doc)
    if draw(st.integers(0, 9)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
    return text.encode(), token


def review_bodies(harness: TokenHarness) -> st.SearchStrategy[tuple[bytes, str | None]]:
    """TokenReview request bodies: JSON shapes, deep nesting, bytes that are no JSON."""
    return st.one_of(
        _review_doc(harness),
        st.binary(max_size=200).map(lambda raw: (raw, None)),
        st.integers(1, 5000).map(lambda depth: (b"[" * depth + b"]" * depth, None)),
        st.text(max_size=100).map(lambda text: (text.encode("utf-8", "surrogatepass"), None)),
    )


def check_review_body(harness: TokenHarness, case: tuple[bytes, str | None]) -> None:
    """Any body gets a 200 verdict or a 400, and the review invariants hold."""
    body, token = case
    secrets = secrets_of(token) if token and token.encode("utf-8", "surrogatepass") in body else []
    check_review(harness, body, secrets, token=token)


# ---------------------------------------------------------------------------------------------
# HTTP request heads, through the real HTTP server


@st.composite
def http_requests(draw: st.DrawFn, harness: TokenHarness) -> tuple[bytes, str]:
    """Raw request bytes: lines, targets, versions, headers and framing, valid and not."""
    method = draw(st.sampled_from(["POST", "GET", "HEAD", "PUT", "OPTIONS", "PO ST", "", "\x00"]))
    canary = f"http://{harness.canary.netlocs()[0]}"
    target = draw(
        st.one_of(
            st.sampled_from(["/authenticate", "/healthz", "/readyz", "/metrics", "*", "/"]),
            st.sampled_from(["/authenticate?x=1", f"{canary}/authenticate", "//a", "/%00"]),
            st.text(URL_CHARS, max_size=30),
        )
    )
    version = draw(
        st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.1 x", "", "http/1.1"])
    )
    eol = draw(st.sampled_from(["\r\n", "\n", "\r"]))
    body_token = draw(tokens(harness)).token
    doc = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview"}
    body = json.dumps({**doc, "spec": {"token": body_token}}).encode()
    names = st.sampled_from(
        [
            "Host",
            "Content-Length",
            "Transfer-Encoding",
            "Expect",
            "Connection",
            "X-Test",
            "Content-Type",
        ]
    )
    values = st.one_of(
        st.sampled_from(["chunked", "100-continue", "close", "keep-alive", "-1", "0", "1e3"]),
        st.sampled_from([str(len(body)), str(len(body) + 5), "99999999999999999999", canary]),
        st.text(st.characters(max_codepoint=255), max_size=20),
    )
    headers = draw(st.lists(st.tuples(names | st.text(URL_CHARS, max_size=8), values), max_size=6))
    head = f"{method} {target} {version}{eol}" + "".join(f"{k}: {v}{eol}" for k, v in headers)
    raw = head.encode("latin-1", "replace") + eol.encode() + body
    if draw(st.booleans()):  # a second request pipelined behind
        raw += b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    if draw(st.integers(0, 4)) == 0:
        raw = raw[: draw(st.integers(0, len(raw)))]
    return raw, body_token


_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([0-9]{3}) ")


def check_http(harness: TokenHarness, case: tuple[bytes, str]) -> None:
    """The server answers any bytes with well-formed responses, none of them a 5xx."""
    raw, token = case
    harness.lines.clear()
    with capture_logs() as events:
        answer = harness.exchange(raw)
    statuses = [int(code) for code in _STATUS_LINE.findall(answer)]
    assert all(code < 500 for code in statuses), (statuses, answer[:300])
    assert not answer or answer.startswith(b"HTTP/1.1 "), answer[:100]
    assert harness.canary.hits == 0, f"the canary was reached: {harness.canary.kinds()}"
    for host in harness.take_hosts():
        assert host == harness.sts.netloc or _AWS_STS_HOST.fullmatch(host), host
    lines = harness.lines + [render_json(None, "info", dict(event)) for event in events]
    secrets = secrets_of(token)
    for line in lines:
        for secret in secrets:
            assert secret not in line, f"logged a secret: {line}"


@contextlib.contextmanager
def token_harness() -> Iterator[TokenHarness]:
    """A started TokenHarness, stopped after the block."""
    with TokenHarness() as harness:
        yield harness


@dataclass
class Tally:
    """What a run of one target did, for the bench's table."""

    cases: int = 0
    failure: str = ""
    seconds: float = 0.0


def timed(strategy: st.SearchStrategy[T], check: Callable[[T], None], max_examples: int) -> Tally:
    """`run`, timed, with a failure caught and described instead of raised."""
    tally = Tally()
    started = time.perf_counter()
    try:
        tally.cases = run(strategy, check, max_examples)
    except Exception as exc:  # the bench reports a failure instead of stopping
        tally.cases = _last_count[0]
        tally.failure = f"{type(exc).__name__}: {str(exc)[:2000]}"
    tally.seconds = time.perf_counter() - started
    return tally


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` the way an editor or kubelet does: write aside, rename."""
    aside = path.with_name(f".{path.name}.tmp")
    aside.write_bytes(data)
    aside.replace(path)
