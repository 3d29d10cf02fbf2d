"""Whatever a token's URL holds, a review gets a verdict: hypothesis over host, path and query."""

from __future__ import annotations

import json
import string
from datetime import UTC, datetime, timedelta

import httpx
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authd.config import FileConfig, MappingConfig
from authd.mapping.chain import Backend, MapperChain
from authd.mapping.file import MountedFileTable
from authd.metrics import Metrics
from authd.server.app import App
from authd.server.authenticator import Authenticator
from authd.server.http import Request
from authd.server.sts.client import StsClient
from authd.token import EndpointPolicy, encode

NOW = datetime(2024, 1, 15, 12, 0, tzinfo=UTC)
STAMP = (NOW - timedelta(minutes=5)).strftime("%Y%m%dT%H%M%SZ")
LONG_LABEL_ORIGIN = "https://sts." + "a" * 64 + ".example.com"
QUERY = (
    "Action=GetCallerIdentity&Version=2011-06-15&X-Amz-Algorithm=AWS4-HMAC-SHA256"
    f"&X-Amz-Credential=AKIAALICE%2F{STAMP[:8]}%2Fus-east-1%2Fsts%2Faws4_request"
    f"&X-Amz-Date={STAMP}&X-Amz-Expires=60&X-Amz-SignedHeaders=host%3Bx-k8s-aws-id"
    "&X-Amz-Signature=" + "ab" * 32
)
ALICE = {
    "GetCallerIdentityResponse": {
        "GetCallerIdentityResult": {
            "Arn": "arn:aws:iam::123456789012:user/Alice",
            "Account": "123456789012",
            "UserId": "AIDAALICE",
        }
    }
}
CONFIG = """\
clusterID: test-cluster
server:
  mapUsers:
  - userarn: arn:aws:iam::123456789012:user/Alice
    username: alice
"""


def resolving_sts(request: httpx.Request) -> httpx.Response:
    """An STS that first resolves the host as the socket layer does (idna), then answers Alice."""
    request.url.host.encode("idna")  # what getaddrinfo does with a str host; may raise
    return httpx.Response(200, json=ALICE)


def build_app(lines: list[dict[str, object]]) -> App:
    """An App over the real authenticator and mapping, with a resolving stand-in STS.

    Its review log lines are appended to `lines`.
    """
    mapping = MappingConfig.from_file_config(FileConfig.from_text(CONFIG, path="config.yaml"))
    backend = Backend("MountedFile", MountedFileTable.from_config(mapping))
    client = httpx.MockTransport(resolving_sts)
    metrics = Metrics(process_collector=False)
    policy = EndpointPolicy.create(
        partition="aws", region="us-east-1", extra_origins=[LONG_LABEL_ORIGIN]
    )
    authenticator = Authenticator(
        policy=policy,
        sts=StsClient(client),
        chain=MapperChain([backend]),
        cluster_ids=("test-cluster",),
        metrics=metrics,
        clock=lambda: NOW,
    )
    return App(authenticator=authenticator, metrics=metrics, review_log=lines.append)


def review(url: str) -> tuple[int, bool, str]:
    """Review a token for `url`: the HTTP status, `authenticated`, and its log line's reason."""
    lines: list[dict[str, object]] = []
    app = build_app(lines)
    doc = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview"}
    body = json.dumps({**doc, "spec": {"token": encode(url)}}).encode()
    request = Request(
        method="POST", path="/authenticate", query="", headers=(), body=body, client=None
    )
    response = trio.run(app, request)
    [line] = lines
    return (
        response.status,
        json.loads(response.body)["status"]["authenticated"],
        str(line["reason"]),
    )


URL_CHARS = string.ascii_letters + string.digits + "-._~:/?#[]@!$&'()*+,;=% \"<>\\^`{|}\x7f\u00e9"
hosts = st.one_of(
    st.sampled_from(
        ["sts.amazonaws.com", "sts.us-east-1.amazonaws.com", LONG_LABEL_ORIGIN[8:], "sts.s3.x"]
    ),
    st.text(alphabet=URL_CHARS, max_size=90),
    st.lists(st.text(string.ascii_lowercase + "-", min_size=0, max_size=70), max_size=5).map(
        ".".join
    ),
)
paths = st.one_of(st.just("/"), st.text(alphabet=URL_CHARS, max_size=20))
queries = st.one_of(
    st.just(QUERY), st.text(alphabet=URL_CHARS, max_size=60).map(lambda extra: QUERY + extra)
)


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(host=hosts, path=paths, query=queries)
def test_no_url_makes_a_server_error(host: str, path: str, query: str) -> None:
    """Any host, path and query gets a 200 verdict; a refusal is bad_token, never a 500."""
    status, authenticated, reason = review(f"https://{host}{path}?{query}")
    assert (status, reason) == (200, "" if authenticated else "bad_token")


def test_host_label_over_63_characters_is_a_definitive_denial() -> None:
    """A host the resolver cannot encode (a 64-character label) is bad_token, not a 500."""
    assert review(f"{LONG_LABEL_ORIGIN}/?{QUERY}") == (200, False, "bad_token")


def test_a_valid_url_is_allowed() -> None:
    """The stand-in answers a well-formed token, so the property above also sees allowed ones."""
    assert review(f"https://sts.us-east-1.amazonaws.com/?{QUERY}") == (200, True, "")
