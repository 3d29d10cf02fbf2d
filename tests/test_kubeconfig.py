"""Tests for authd.server.kubeconfig: upstream's exact text, YAML and kubectl acceptance."""

from __future__ import annotations

import base64
import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from authd.errors import ConfigError
from authd.server.kubeconfig import render_kubeconfig, server_url, write_kubeconfig
from authd.server.tls import generate_self_signed

# The template of server 5 in docs/upstream-compat.md, with its two placeholders (filled with
# str.format: replacing a word such as "URL" could hit the base64 of the certificate first).
UPSTREAM_TEMPLATE = (
    "\n"
    "clusters:\n"
    "  - name: aws-iam-authenticator\n"
    "    cluster:\n"
    "      certificate-authority-data: {ca}\n"
    "      server: {url}\n"
    "# user refers to the API server client\n"
    "users:\n"
    "  - name: apiserver\n"
    "current-context: webhook\n"
    "contexts:\n"
    "- name: webhook\n"
    "  context:\n"
    "    cluster: aws-iam-authenticator\n"
    "    user: apiserver\n"
)


@pytest.fixture(scope="module")
def cert_pem() -> bytes:
    """One self-signed certificate for the whole module (RSA generation is slow)."""
    cert, _key = generate_self_signed(address="127.0.0.1", hostname="localhost")
    return cert


def test_text_is_upstreams_byte_for_byte(cert_pem: bytes) -> None:
    """The default rendering equals upstream's template filled with the base64 PEM and URL."""
    text = render_kubeconfig(cert_pem=cert_pem, hostname="localhost", port=21362)
    ca = base64.b64encode(cert_pem).decode()
    expected = UPSTREAM_TEMPLATE.format(ca=ca, url="https://localhost:21362/authenticate")
    assert text == expected
    assert text.startswith("\nclusters:\n")


@pytest.mark.parametrize(
    ("hostname", "port", "url"),
    [
        ("localhost", 21362, "https://localhost:21362/authenticate"),
        ("10.0.0.5", 443, "https://10.0.0.5:443/authenticate"),
        ("fd00::1", 21362, "https://[fd00::1]:21362/authenticate"),
        ("[::1]", 8443, "https://[::1]:8443/authenticate"),
    ],
)
def test_server_url_brackets_ipv6(hostname: str, port: int, url: str) -> None:
    """The URL joins host and port as Go's JoinHostPort does, IPv6 in brackets."""
    assert server_url(hostname=hostname, port=port) == url


@pytest.mark.parametrize(("hostname", "port"), [("", 1), ("localhost", 0), ("x", 70000)])
def test_bad_host_or_port_is_refused(cert_pem: bytes, hostname: str, port: int) -> None:
    """An empty hostname or a port outside 1-65535 is a ConfigError."""
    with pytest.raises(ConfigError):
        render_kubeconfig(cert_pem=cert_pem, hostname=hostname, port=port)


def test_bad_certificate_is_refused() -> None:
    """Bytes that hold no certificate give a ConfigError, not an empty CA."""
    with pytest.raises(ConfigError, match="bad certificate"):
        render_kubeconfig(cert_pem=b"nope", hostname="localhost", port=1)


def test_parses_as_yaml_with_the_certificate(cert_pem: bytes) -> None:
    """The text is YAML whose CA data decodes to the serving certificate."""
    doc = yaml.safe_load(render_kubeconfig(cert_pem=cert_pem, hostname="fd00::1", port=9))
    cluster = doc["clusters"][0]
    assert cluster["name"] == "aws-iam-authenticator"
    assert cluster["cluster"]["server"] == "https://[fd00::1]:9/authenticate"
    assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]) == cert_pem
    assert doc["current-context"] == "webhook"
    assert doc["contexts"][0]["context"] == {
        "cluster": "aws-iam-authenticator",
        "user": "apiserver",
    }
    assert doc["users"] == [{"name": "apiserver"}]


def test_chain_uses_only_the_first_certificate(cert_pem: bytes) -> None:
    """With a chain in cert.pem, the CA data is the first (serving) certificate, as upstream."""
    other, _ = generate_self_signed(address="127.0.0.1", hostname="other")
    doc = yaml.safe_load(render_kubeconfig(cert_pem=cert_pem + other, hostname="localhost", port=1))
    data = doc["clusters"][0]["cluster"]["certificate-authority-data"]
    assert base64.b64decode(data) == cert_pem


def test_write_creates_parents_mode_0644_and_skips_same_text(
    tmp_path: Path, cert_pem: bytes
) -> None:
    """Writing creates missing directories, sets 0644, and a same-text rewrite changes nothing."""
    target = tmp_path / "etc" / "kubernetes" / "aws-iam-authenticator" / "kubeconfig.yaml"
    text = render_kubeconfig(cert_pem=cert_pem, hostname="localhost", port=21362)
    assert write_kubeconfig(target, text) is True
    assert target.read_text() == text
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert write_kubeconfig(target, text) is False
    assert write_kubeconfig(target, text.replace("21362", "21363")) is True


def test_write_failure_names_the_path(tmp_path: Path) -> None:
    """A kubeconfig path under a regular file is a ConfigError naming the path."""
    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" / "kubeconfig.yaml"
    with pytest.raises(ConfigError, match="could not generate a webhook kubeconfig at"):
        write_kubeconfig(target, "x")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_reads_it(tmp_path: Path, cert_pem: bytes) -> None:
    """kubectl loads the written file and reports its server URL, CA data and context."""
    target = tmp_path / "kubeconfig.yaml"
    write_kubeconfig(target, render_kubeconfig(cert_pem=cert_pem, hostname="::1", port=21362))
    result = subprocess.run(
        ["kubectl", "config", "view", "--kubeconfig", str(target), "--raw", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    view = json.loads(result.stdout)
    cluster = view["clusters"][0]
    assert cluster["name"] == "aws-iam-authenticator"
    assert cluster["cluster"]["server"] == "https://[::1]:21362/authenticate"
    assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]) == cert_pem
    assert view["current-context"] == "webhook"
