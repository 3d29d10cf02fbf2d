"""A certificate's notAfter, read from its DER without cryptography.

The daemon reuses the pair in its state dir without importing cryptography (~9 MiB of RSS,
docs/memory.md), yet exports when its serving certificate expires
(`authd_serving_certificate_expiry_timestamp_seconds`, docs/monitoring.md). The date sits at a
fixed place in every X.509 certificate (RFC 5280 section 4.1):
`Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
signature, issuer, validity SEQUENCE { notBefore, notAfter }, ... }, ... }`, so walking the DER
header of five elements finds it.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import re

__all__ = ["CertificateError", "not_after"]

# The first certificate of a file that may hold a chain, text around it, or CRLF line ends.
_FIRST_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL)
_SEQUENCE = 0x30
_VERSION = 0xA0
_UTC_TIME = 0x17
_GENERALIZED_TIME = 0x18


class CertificateError(ValueError):
    """The bytes are not a certificate this reader understands."""


def not_after(cert_pem: bytes) -> float:
    """Unix time at which the first (leaf) certificate of `cert_pem` expires.

    Raises:
        CertificateError: no PEM certificate, or its DER is not an X.509 certificate.
    """
    block = _FIRST_PEM.search(cert_pem)
    if block is None:
        raise CertificateError("no PEM certificate")
    try:
        der = base64.b64decode(b"".join(block[1].split()), validate=True)
    except binascii.Error as exc:
        raise CertificateError("PEM certificate is not base64") from exc
    tag, body, _ = _element(der, 0)
    _expect(tag, _SEQUENCE, "certificate")
    tag, tbs, _ = _element(der, body)
    _expect(tag, _SEQUENCE, "tbsCertificate")
    at = tbs
    tag, _, at = _element(der, at)
    if tag == _VERSION:
        tag, _, at = _element(der, at)  # serialNumber
    for _field in ("signature", "issuer"):
        _, _, at = _element(der, at)
    tag, validity, _ = _element(der, at)
    _expect(tag, _SEQUENCE, "validity")
    _, _, after = _element(der, validity)  # skip notBefore
    tag, start, end = _element(der, after)
    return _time(tag, der[start:end])


def _element(der: bytes, at: int) -> tuple[int, int, int]:
    """The element at `at`: (tag, where its content starts, where it ends)."""
    if at + 2 > len(der):
        raise CertificateError("certificate DER ends early")
    tag, first = der[at], der[at + 1]
    start = at + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if not 1 <= count <= 4 or start + count > len(der):
            raise CertificateError("certificate DER has a bad length")
        length = int.from_bytes(der[start : start + count], "big")
        start += count
    end = start + length
    if end > len(der):
        raise CertificateError("certificate DER ends early")
    return tag, start, end


def _expect(tag: int, wanted: int, name: str) -> None:
    if tag != wanted:
        raise CertificateError(f"certificate DER: {name} is not a SEQUENCE")


def _time(tag: int, value: bytes) -> float:
    """UTCTime (YYMMDDHHMMSSZ, 1950-2049) or GeneralizedTime (YYYYMMDDHHMMSSZ) as Unix time."""
    text = value.decode("ascii", "replace")
    if tag == _UTC_TIME and len(text) == 13:
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != _GENERALIZED_TIME or len(text) != 15:
        raise CertificateError("certificate notAfter is not a UTCTime or GeneralizedTime")
    if not (text[:14].isdigit() and text.endswith("Z")):
        raise CertificateError(f"certificate notAfter {text!r} is not a UTC time")
    year, month, day = int(text[0:4]), int(text[4:6]), int(text[6:8])
    hour, minute, second = int(text[8:10]), int(text[10:12]), int(text[12:14])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        raise CertificateError(f"certificate notAfter {text!r} is not a date")
    return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))
