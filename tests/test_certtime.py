"""The serving certificate's notAfter read from DER (authd/server/certtime.py), checked against
cryptography on real certificates: authd's own, CA-signed chains, both time encodings."""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from authd.server.certtime import CertificateError, not_after
from authd.server.tls import generate_self_signed

UTC = datetime.UTC


def certificate(not_valid_after: datetime.datetime) -> bytes:
    """A small self-signed EC certificate valid until `not_valid_after`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certtime")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(not_valid_after)
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def expected(pem: bytes) -> float:
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()


def test_authds_own_hundred_year_certificate() -> None:
    """Upstream's 100-year lifetime ends after 2049: a GeneralizedTime."""
    cert_pem, _ = generate_self_signed(address="127.0.0.1", hostname="localhost")
    assert not_after(cert_pem) == expected(cert_pem)
    assert not_after(cert_pem) > datetime.datetime(2100, 1, 1, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    "when",
    [
        datetime.datetime(2027, 3, 4, 5, 6, 7, tzinfo=UTC),  # UTCTime, 20xx
        datetime.datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC),  # last UTCTime year
        datetime.datetime(2050, 1, 1, 0, 0, 0, tzinfo=UTC),  # first GeneralizedTime year
        datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),  # RFC 5280's "no end"
    ],
)
def test_both_time_encodings(when: datetime.datetime) -> None:
    pem = certificate(when)
    assert not_after(pem) == expected(pem) == when.timestamp()


@pytest.mark.parametrize(
    "layout",
    [
        lambda leaf, ca: leaf + ca,
        lambda leaf, ca: b"# issued by our CA\n\n" + leaf + b"\n" + ca,
        lambda leaf, ca: (leaf + ca).replace(b"\n", b"\r\n"),
    ],
    ids=["chain", "text-around", "crlf"],
)
def test_a_chain_gives_the_leafs_date(layout: Callable[[bytes, bytes], bytes]) -> None:
    """A CA-issued pair (nodeup's, or an admin's) is often the leaf then its CA, sometimes with
    text or CRLFs around: the first certificate counts, as for ssl."""
    leaf = certificate(datetime.datetime(2028, 1, 1, tzinfo=UTC))
    ca = certificate(datetime.datetime(2040, 1, 1, tzinfo=UTC))
    assert not_after(layout(leaf, ca)) == datetime.datetime(2028, 1, 1, tzinfo=UTC).timestamp()


def test_a_date_that_is_no_date_is_refused() -> None:
    """Month 13 in a notAfter (OpenSSL may load it): an error, never a crash of the start."""
    pem = certificate(datetime.datetime(2030, 1, 1, tzinfo=UTC))
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    assert der.count(b"300101000000Z") == 1
    bad = ssl.DER_cert_to_PEM_cert(der.replace(b"300101000000Z", b"301301000000Z")).encode()
    with pytest.raises(CertificateError, match="is not a date"):
        not_after(bad)


@pytest.mark.parametrize(
    ("pem", "message"),
    [
        (b"", "no PEM certificate"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a SEQUENCE"),
        (b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", "bad length"),
    ],
)
def test_what_is_not_a_certificate_is_refused(pem: bytes, message: str) -> None:
    with pytest.raises(CertificateError, match=message):
        not_after(pem)


def test_a_truncated_certificate_is_refused() -> None:
    pem = certificate(datetime.datetime(2030, 1, 1, tzinfo=UTC))
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    cut = ssl.DER_cert_to_PEM_cert(der[:60]).encode()
    with pytest.raises(CertificateError):
        not_after(cut)
