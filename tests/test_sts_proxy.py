"""STS and EC2 go through HTTPS_PROXY/HTTP_PROXY as upstream does, except NO_PROXY and loopback.

The proxy is tests/fakes/connect_proxy.py, a real TCP proxy that routes every name it is asked
for to a local stand-in, so the tokens can name real-looking hosts (the real STS host, or names
under `.invalid`, which never resolve, so a request that wrongly skips the proxy fails instead
of reaching the internet). The STS stand-in speaks TLS with a certificate for those names; the
daemon test trusts it through SSL_CERT_FILE, as a node with a private CA would.
"""

from __future__ import annotations

import base64
import datetime as dt
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from authd.errors import Ec2Error, StsUnavailableError
from authd.server.ec2 import botocore_describer
from authd.server.proxies import Proxies
from authd.server.sts.client import open_sts_client
from authd.token import EndpointPolicy, verify
from tests.daemon import Daemon, base_env
from tests.fakes.connect_proxy import ConnectProxy, always_to
from tests.fakes.kube.tls import serving_cert
from tests.fakes.moto import ADMIN_KEY, ADMIN_SECRET, MotoServer
from tests.fakes.sts_standin import ALICE, StsStandIn

STS_HOST = "sts.us-east-1.amazonaws.com"
TEST_HOST = "sts.authd-test.invalid"
CLUSTER = "proxy-cluster"
P = "http://p:1"
VIA_P = {"HTTPS_PROXY": P}


# --- fixtures -----------------------------------------------------------------------------------


def write_cert(directory: Path, names: list[str]) -> tuple[Path, Path]:
    """A self-signed certificate (its own CA) for `names` and 127.0.0.1: (cert, key) paths."""
    return serving_cert(directory, names=names, common_name="sts stand-in", stem="sts")


@pytest.fixture
def cert(tmp_path: Path) -> tuple[Path, Path]:
    """The TLS stand-in's certificate and key."""
    return write_cert(tmp_path, [STS_HOST, TEST_HOST])


@pytest.fixture
def trusting(cert: tuple[Path, Path]) -> ssl.SSLContext:
    """A client context that trusts only the stand-in's certificate."""
    return ssl.create_default_context(cafile=str(cert[0]))


@pytest.fixture
def tls_sts(cert: tuple[Path, Path]) -> Iterator[StsStandIn]:
    """The STS stand-in over TLS on 127.0.0.1."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert)
    standin = StsStandIn().start(tls=context)
    yield standin
    standin.stop()


@pytest.fixture
def plain_sts() -> Iterator[StsStandIn]:
    """The STS stand-in over plain HTTP on 127.0.0.1."""
    standin = StsStandIn().start()
    yield standin
    standin.stop()


def port_of(url: str) -> int:
    """The port of a stand-in's `http(s)://127.0.0.1:<port>` URL."""
    return int(url.rsplit(":", 1)[1])


@pytest.fixture
def proxy_to_tls(tls_sts: StsStandIn) -> Iterator[ConnectProxy]:
    """A proxy that sends every target to the TLS stand-in."""
    proxy = ConnectProxy(always_to(port_of(tls_sts.url)))
    yield proxy
    proxy.stop()


def token_for(origin: str) -> str:
    """A well-formed token naming `origin` (the stand-ins check no signature)."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    url = (
        f"{origin}/?Action=GetCallerIdentity&Version=2011-06-15"
        "&X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential=AKIAALICE%2F{stamp[:8]}%2Fus-east-1%2Fsts%2Faws4_request"
        f"&X-Amz-Date={stamp}&X-Amz-Expires=60&X-Amz-SignedHeaders=host%3Bx-k8s-aws-id"
        "&X-Amz-Signature=" + "ab" * 32
    )
    return "k8s-aws-v1." + base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")


async def identify(origin: str, env: dict[str, str], context: ssl.SSLContext | None = None) -> str:
    """Verify a token for `origin` and ask STS through the daemon's own client construction."""
    policy = EndpointPolicy.create(partition="aws", region="us-east-1", extra_origins=[origin])
    request = verify(token_for(origin), now=dt.datetime.now(dt.UTC), policy=policy)
    proxies = Proxies.from_env(env)
    async with open_sts_client(step_timeout=5, proxies=proxies, ssl_context=context) as sts:
        identity = await sts.get_caller_identity(request, cluster_id=CLUSTER)
    return identity.arn


# --- which requests a proxy applies to ------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "url", "expected"),
    [
        ({"HTTPS_PROXY": "http://p:3128"}, f"https://{STS_HOST}/", "http://p:3128"),
        (
            {"https_proxy": "http://low:1", "HTTPS_PROXY": "http://up:2"},
            "https://a.b/",
            "http://low:1",
        ),
        ({"HTTPS_PROXY": "p:3128"}, "https://a.b/", "http://p:3128"),
        (VIA_P, "http://a.b/", None),
        ({"HTTP_PROXY": P}, "http://a.b/", P),
        ({"HTTP_PROXY": P}, "https://a.b/", None),
        ({**VIA_P, "NO_PROXY": "amazonaws.com"}, f"https://{STS_HOST}/", None),
        ({**VIA_P, "no_proxy": ".amazonaws.com"}, f"https://{STS_HOST}/", None),
        (
            {**VIA_P, "NO_PROXY": ".amazonaws.com"},
            "https://amazonaws.com/",
            P,
        ),
        (
            {**VIA_P, "NO_PROXY": "*.amazonaws.com"},
            f"https://{STS_HOST}/",
            None,
        ),
        (
            {**VIA_P, "NO_PROXY": "zonaws.com"},
            f"https://{STS_HOST}/",
            P,
        ),
        ({**VIA_P, "NO_PROXY": "a, *"}, "https://x.y/", None),
        ({**VIA_P, "NO_PROXY": "10.0.0.0/8"}, "https://10.1.2.3/", None),
        (
            {**VIA_P, "NO_PROXY": "10.0.0.0/8"},
            "https://11.1.2.3/",
            P,
        ),
        ({**VIA_P, "NO_PROXY": "10.1.2.3"}, "https://10.1.2.3:8443/", None),
        ({**VIA_P, "NO_PROXY": "a.b:8443"}, "https://a.b:8443/", None),
        ({**VIA_P, "NO_PROXY": "a.b:8443"}, "https://a.b/", P),
        (VIA_P, "https://localhost:9/", None),
        (VIA_P, "https://127.0.0.1/", None),
        (VIA_P, "https://127.3.2.1/", None),
        (VIA_P, "https://[::1]:8443/", None),
        ({}, f"https://{STS_HOST}/", None),
    ],
)
def test_proxy_choice_follows_upstream_rules(
    env: dict[str, str], url: str, expected: str | None
) -> None:
    """Scheme picks the variable, lower case wins, NO_PROXY exempts domains, subdomains, IPs,
    CIDR blocks and ports, `*` exempts all, and loopback is never proxied."""
    assert Proxies.from_env(env).proxy_for(url) == expected


# --- STS through the proxy, in process ------------------------------------------------------------


async def test_sts_over_https_goes_through_the_proxy_tunnel(
    proxy_to_tls: ConnectProxy, tls_sts: StsStandIn, trusting: ssl.SSLContext
) -> None:
    """With HTTPS_PROXY set, GetCallerIdentity travels in one CONNECT tunnel to the STS host,
    TLS verified end to end against the stand-in's certificate; the review gets the identity."""
    env = {"HTTPS_PROXY": proxy_to_tls.url}
    arn = await identify(f"https://{TEST_HOST}", env, trusting)
    assert arn == ALICE["Arn"]
    assert proxy_to_tls.tunnels == {f"{TEST_HOST}:443": 1}
    assert tls_sts.calls() == 1


async def test_sts_host_in_no_proxy_is_not_proxied(
    proxy_to_tls: ConnectProxy, tls_sts: StsStandIn, trusting: ssl.SSLContext
) -> None:
    """With NO_PROXY covering the host, the request goes direct: the `.invalid` name does not
    resolve, so STS is unavailable, and the proxy saw nothing."""
    env = {"HTTPS_PROXY": proxy_to_tls.url, "NO_PROXY": "authd-test.invalid"}
    with pytest.raises(StsUnavailableError, match="error during GET"):
        await identify(f"https://{TEST_HOST}", env, trusting)
    assert proxy_to_tls.total() == 0 and tls_sts.calls() == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_loopback_sts_endpoint_is_never_proxied(plain_sts: StsStandIn, host: str) -> None:
    """A loopback extra endpoint is reached directly even with both proxy variables set and no
    NO_PROXY: the proxy (which would also reach the stand-in) is never asked."""
    proxy = ConnectProxy(always_to(port_of(plain_sts.url)))
    env = {"HTTPS_PROXY": proxy.url, "HTTP_PROXY": proxy.url}
    try:
        arn = await identify(f"http://{host}:{port_of(plain_sts.url)}", env)
    finally:
        proxy.stop()
    assert arn == ALICE["Arn"]
    assert proxy.total() == 0 and plain_sts.calls() == 1


# --- EC2 through the proxy ------------------------------------------------------------------------


@pytest.fixture
def ec2_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials for botocore's chain; no instance metadata; no EC2 endpoint override."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ADMIN_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ADMIN_SECRET)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_ENDPOINT_URL_EC2", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.mark.usefixtures("ec2_credentials")
def test_ec2_describe_instances_goes_through_http_proxy(moto_server: MotoServer) -> None:
    """DescribeInstances to the EC2 host goes through HTTP_PROXY (forwarded to moto); with the
    host in NO_PROXY it goes direct, and the `.invalid` name fails without touching the proxy."""
    moto = httpx.URL(moto_server.url)
    proxy = ConnectProxy(always_to(moto.port or 80, moto.host))
    try:
        env = {"HTTP_PROXY": proxy.url}
        describe = botocore_describer(
            region="us-east-1",
            endpoint_url="http://ec2.authd-test.invalid",
            proxies=Proxies.from_env(env),
        )
        names, calls = describe(["i-0123456789abcdef0"])
        assert (names, calls) == ({}, 1)
        assert proxy.forwarded["ec2.authd-test.invalid:80"] == 1
        before = proxy.total()
        bypassing = botocore_describer(
            region="us-east-1",
            endpoint_url="http://ec2.authd-test.invalid",
            proxies=Proxies.from_env({**env, "NO_PROXY": ".invalid"}),
            timeout=2,
        )
        with pytest.raises(Ec2Error, match="DescribeInstances failed"):
            bypassing(["i-0123456789abcdef0"])
        assert proxy.total() == before
    finally:
        proxy.stop()


# --- the real daemon ------------------------------------------------------------------------------


def review(daemon: Daemon, token: str) -> dict[str, Any]:
    """POST a TokenReview; the answer's status section."""
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token},
    }
    with daemon.client() as client:
        response = client.post("/authenticate", json=body)
    assert response.status_code == 200, response.text
    status: dict[str, Any] = response.json()["status"]
    return status


def test_daemon_reaches_the_real_sts_host_through_https_proxy(
    tmp_path: Path,
    cert: tuple[Path, Path],
    tls_sts: StsStandIn,
    proxy_to_tls: ConnectProxy,
) -> None:
    """`authd server` with HTTPS_PROXY in its environment sends a token for
    sts.us-east-1.amazonaws.com through one CONNECT tunnel to that host (no extra endpoint
    configured: the token names the real STS host) and allows the user."""
    config = tmp_path / "config.yaml"
    config.write_text(
        f"clusterID: {CLUSTER}\nserver:\n  mapUsers:\n"
        f"  - userarn: {ALICE['Arn']}\n    username: alice\n"
    )
    env = base_env(HTTPS_PROXY=proxy_to_tls.url, SSL_CERT_FILE=str(cert[0]))
    daemon = Daemon([f"--config={config}"], state=tmp_path, env=env)
    try:
        daemon.wait_for("listening")
        status = review(daemon, token_for(f"https://{STS_HOST}"))
        assert status["authenticated"] is True, status
        assert status["user"]["username"] == "alice"
        assert proxy_to_tls.tunnels == {f"{STS_HOST}:443": 1}
    finally:
        assert daemon.stop() == 0
