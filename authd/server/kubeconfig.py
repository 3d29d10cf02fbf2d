"""The webhook kubeconfig kube-apiserver reads to reach authd, in upstream's exact text.

kube-apiserver's `--authentication-token-webhook-config-file` points at this file. The text is
byte for byte what the Go tool writes (server 5 in docs/upstream-compat.md), so tools that diff or
template it keep working; the CA data is the base64 of the PEM of the serving certificate (the first
one in the file, as upstream takes `Certificate[0]`).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import ssl
from pathlib import Path

import structlog

from authd.errors import ConfigError
from authd.files import write_atomic

__all__ = ["KUBECONFIG_MODE", "render_kubeconfig", "server_url", "write_kubeconfig"]

KUBECONFIG_MODE = 0o644

_TEMPLATE = """
clusters:
  - name: aws-iam-authenticator
    cluster:
      certificate-authority-data: {ca}
      server: {url}
# user refers to the API server client
users:
  - name: apiserver
current-context: webhook
contexts:
- name: webhook
  context:
    cluster: aws-iam-authenticator
    user: apiserver
"""

_log = structlog.get_logger("authd.server.kubeconfig")


def server_url(*, hostname: str, port: int) -> str:
    """`https://<host>:<port>/authenticate`, with an IPv6 host in brackets (Go's JoinHostPort).

    Raises:
        ConfigError: the hostname is empty or the port is outside 1-65535.
    """
    host = hostname.strip("[]")
    if not host:
        raise ConfigError("server.hostname: must not be empty")
    if not 0 < port < 65536:
        raise ConfigError(f"server.port: {port} is not a TCP port (1-65535)")
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{port}/authenticate"


def render_kubeconfig(*, cert_pem: bytes, hostname: str, port: int) -> str:
    """The webhook kubeconfig text for a server at `hostname:port` serving `cert_pem`.

    Raises:
        ConfigError: `cert_pem` holds no PEM certificate, or hostname/port are unusable.
    """
    leaf_pem = _first_certificate(cert_pem)
    if leaf_pem is None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as exc:
            raise ConfigError(
                f"could not create webhook kubeconfig: bad certificate: {exc}"
            ) from exc
        leaf_pem = cert.public_bytes(serialization.Encoding.PEM)
    ca = base64.standard_b64encode(leaf_pem).decode("ascii")
    return _TEMPLATE.format(ca=ca, url=server_url(hostname=hostname, port=port))


_PEM_CERTIFICATE = re.compile(
    rb"\s*-----BEGIN CERTIFICATE-----\r?\n((?:[A-Za-z0-9+/=]+\r?\n)+)-----END CERTIFICATE-----\s*"
)


def _first_certificate(cert_pem: bytes) -> bytes | None:
    """The first certificate of `cert_pem` re-encoded as PEM, without loading cryptography.

    Only a file made of nothing but well-formed PEM certificates, each of which OpenSSL parses,
    is read here; for anything else this returns None and cryptography reads the file and names
    what is wrong (docs/memory.md). The PEM is the one cryptography writes: 64-column base64.
    """
    ders: list[bytes] = []
    position = 0
    while position < len(cert_pem):
        block = _PEM_CERTIFICATE.match(cert_pem, position)
        if block is None or block.end() == position:
            return None
        try:
            ders.append(base64.b64decode(b"".join(block[1].split()), validate=True))
        except binascii.Error:
            return None
        position = block.end()
    if not ders:
        return None
    try:
        for der in ders:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=der)
    except (ssl.SSLError, ValueError):
        return None
    return ssl.DER_cert_to_PEM_cert(ders[0]).encode("ascii")


def write_kubeconfig(path: str | os.PathLike[str], text: str) -> bool:
    """Write `text` to `path` atomically with mode 0644, creating missing parent directories.

    Returns:
        True if the file changed, False if it already held `text`.

    Raises:
        ConfigError: the file or its directories cannot be written; the message names the path.
    """
    target = Path(path)
    _log.info("writing webhook kubeconfig file", kubeconfigPath=str(target))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return write_atomic(target, text.encode("utf-8"), mode=KUBECONFIG_MODE)
    except OSError as exc:
        raise ConfigError(
            f"could not generate a webhook kubeconfig at {target}: {exc.strerror or exc}"
        ) from exc
