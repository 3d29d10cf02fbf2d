"""The webhook's TLS key pair: reuse the one in the state dir, or make and save a self-signed one.

Upstream's rules (server 4 in docs/upstream-compat.md): when both `cert.pem` and `key.pem` exist
they are used as they are, whoever made them (kops' nodeup writes a CA-signed pair, key in PKCS#1 or
PKCS#8); a pair that does not load is an error, never a reason to overwrite it. When either is
missing, a new self-signed RSA 2048 pair valid for 100 years is written. authd also puts
`localhost`, `127.0.0.1` and `::1` in every new certificate, so local health checks can verify it.

A new state dir is made 0700 and a new key 0600. An existing key that others can read, or that
someone other than authd's user (or root) can change, and a state dir that others can write
into, are still used (kops and tarmak write these files before authd starts) but named in a
warning that says how to fix them, and counted in `/metrics` (docs/server.md).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import secrets
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from authd.errors import ConfigError
from authd.files import write_atomic

if TYPE_CHECKING:
    from cryptography import x509

__all__ = [
    "CERT_FILE",
    "KEY_FILE",
    "LOOSE_FILES",
    "KeyPair",
    "check_permissions",
    "generate_self_signed",
    "load_or_create_keypair",
    "server_ssl_context",
]

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
COMMON_NAME = "aws-iam-authenticator"
# Upstream: 876000 h, i.e. 100 x 365 days.
LIFETIME = datetime.timedelta(hours=876000)
KEY_MODE = 0o600
CERT_MODE = 0o644
STATE_DIR_MODE = 0o700
# What `KeyPair.loose` may name (the label values of authd_state_files_loose).
LOOSE_FILES = ("key", "state_dir")

_log = structlog.get_logger("authd.server.tls")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyPair:
    """A certificate and its private key, as PEM bytes and the files they were read from.

    `cert_pem` is the whole certificate file (a chain when nodeup wrote one); `generated` says
    whether this start created the pair; `loose` names (from LOOSE_FILES) what others may read
    or change.
    """

    cert_pem: bytes
    key_pem: bytes
    cert_path: Path
    key_path: Path
    generated: bool = False
    loose: tuple[str, ...] = ()


def load_or_create_keypair(
    state_dir: str | Path,
    *,
    address: str,
    hostname: str,
    now: datetime.datetime | None = None,
) -> KeyPair:
    """Load `<state_dir>/cert.pem` and `key.pem`, or generate and save a new pair.

    Args:
        state_dir: the directory holding the pair; created with mode 0700 if missing.
        address: the listen IP; an IP SAN unless unspecified (`0.0.0.0`, `::`, empty).
        hostname: the kubeconfig host; an IP SAN if it is an IP literal other than `address`,
            otherwise a DNS SAN.
        now: the start of the validity period of a new certificate (default: the current time).

    Returns:
        The pair; `generated` is True when it was created now.

    Raises:
        ConfigError: an existing pair does not parse or does not match, `address` is not an IP,
            or the files cannot be read or written. The message names the file.
    """
    directory = Path(state_dir)
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    if cert_path.exists() and key_path.exists():
        pair = _load_existing(cert_path, key_path)
        _log.info("loaded existing keypair", certPath=str(cert_path), keyPath=str(key_path))
        return dataclasses.replace(pair, loose=check_permissions(directory, key_path))
    _log.info("Creating certificate with address", address=address, hostname=hostname)
    cert_pem, key_pem = generate_self_signed(address=address, hostname=hostname, now=now)
    _log.info("generated a new private key and certificate")
    _log.info("saving new key and certificate", certPath=str(cert_path), keyPath=str(key_path))
    _save(directory, cert_path, key_path, cert_pem, key_pem)
    return KeyPair(
        cert_pem=cert_pem, key_pem=key_pem, cert_path=cert_path, key_path=key_path, generated=True
    )


def generate_self_signed(
    *, address: str, hostname: str, now: datetime.datetime | None = None
) -> tuple[bytes, bytes]:
    """Make upstream's self-signed certificate and its key, as (cert PEM, PKCS#1 key PEM).

    Raises:
        ConfigError: `address` is neither empty nor an IP literal.
    """
    # cryptography costs the daemon ~9 MiB of RSS; a start that reuses its pair never needs
    # it (docs/memory.md).
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    start = now or datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, COMMON_NAME)])
    usage = x509.KeyUsage(
        digital_signature=True,
        key_encipherment=True,
        key_cert_sign=True,
        content_commitment=False,
        data_encipherment=False,
        key_agreement=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        # Upstream draws from [0, 2^128); X.509 wants a positive serial, so 0 is skipped.
        .serial_number(secrets.randbelow(2**128 - 1) + 1)
        .not_valid_before(start)
        .not_valid_after(start + LIFETIME)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(subject_alt_names(address=address, hostname=hostname), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,  # PEM block "RSA PRIVATE KEY"
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def subject_alt_names(*, address: str, hostname: str) -> x509.SubjectAlternativeName:
    """The SANs of a new certificate: upstream's address/hostname rules plus loopback names.

    Raises:
        ConfigError: `address` is neither empty nor an IP literal.
    """
    from cryptography import x509

    ips: list[IPAddress] = []
    dns: list[str] = []
    addr_ip = _parse_ip(address) if address else None
    if address and addr_ip is None:
        raise ConfigError(
            f"could not load/generate a certificate: address {address!r} is not an IP address"
        )
    if addr_ip is not None and not addr_ip.is_unspecified:
        ips.append(addr_ip)
    host = hostname.strip("[]")
    host_ip = _parse_ip(host)
    if host_ip is not None:
        if host_ip != addr_ip:
            ips.append(host_ip)
    elif host:
        dns.append(host)
    ips += [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    dns.append("localhost")
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dict.fromkeys(dns)]
    names += [x509.IPAddress(ip) for ip in dict.fromkeys(ips)]
    return x509.SubjectAlternativeName(names)


def check_permissions(directory: Path, key_path: Path) -> tuple[str, ...]:
    """Name (from LOOSE_FILES) what others may read or change, with a warning for each.

    The key is loose when its group or others may read or write it, or when it belongs to
    someone other than this process's user or root; the state dir when its group or others
    may write into it (they could swap the key) or it belongs to someone else.
    """
    loose: list[str] = []
    key = _stat(key_path)
    if key is not None and (key.st_mode & 0o066 or _foreign(key)):
        loose.append("key")
        _log.warning(
            "TLS key can be read or changed by others; "
            f"fix with: chown {os.geteuid()} {key_path} && chmod 600 {key_path}",
            keyPath=str(key_path),
            mode=f"{stat.S_IMODE(key.st_mode):04o}",
            owner=key.st_uid,
        )
    state = _stat(directory)
    if state is not None and (state.st_mode & 0o022 or _foreign(state)):
        loose.append("state_dir")
        _log.warning(
            "state dir can be written by others, who could replace the TLS key; "
            f"fix with: chown {os.geteuid()} {directory} && chmod 700 {directory}",
            stateDir=str(directory),
            mode=f"{stat.S_IMODE(state.st_mode):04o}",
            owner=state.st_uid,
        )
    return tuple(loose)


def _stat(path: Path) -> os.stat_result | None:
    """`path`'s status, or None when it cannot be read (loading it reports that)."""
    try:
        return path.stat()
    except OSError:
        return None


def _foreign(info: os.stat_result) -> bool:
    """True when a file belongs to neither this process's user nor root."""
    return info.st_uid not in (os.geteuid(), 0)


def server_ssl_context(pair: KeyPair, *, client_ca_file: str = "") -> ssl.SSLContext:
    """A server-side TLS context for `pair`: TLS 1.2 or later, ALPN `http/1.1` only, no
    renegotiation.

    authd speaks HTTP/1.1 only; kube-apiserver's webhook client falls back to it when no `h2`
    is offered. Renegotiation (TLS 1.2) is refused: a client could use it to make the server
    redo handshakes on one connection, and nothing legitimate needs it.

    Args:
        pair: the certificate and key to serve.
        client_ca_file: when given, every client must present a certificate signed by a CA in
            this PEM file (kube-apiserver's webhook kubeconfig can carry one); others fail the
            handshake.

    Raises:
        ConfigError: the files cannot be loaded by OpenSSL.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(pair.cert_path, pair.key_path)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"could not load/generate a certificate: {pair.cert_path}, {pair.key_path}: {exc}"
        ) from exc
    if client_ca_file:
        try:
            context.load_verify_locations(cafile=client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"--client-ca-file {client_ca_file}: {exc}") from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _parse_ip(text: str) -> IPAddress | None:
    """The IP address `text` spells, or None when it is not an IP literal."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _load_existing(cert_path: Path, key_path: Path) -> KeyPair:
    """Read and check an existing pair; any problem is a ConfigError naming the file.

    A pair OpenSSL loads as a server's certificate chain and unencrypted matching key is
    taken as it is, without loading cryptography (docs/memory.md); any other is
    checked with cryptography, whose errors name what is wrong.
    """
    cert_pem = _read(cert_path)
    key_pem = _read(key_path)
    pair = KeyPair(cert_pem=cert_pem, key_pem=key_pem, cert_path=cert_path, key_path=key_path)
    if _openssl_loads(cert_path, key_path):
        return pair
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise _bad(cert_path, f"not a PEM certificate ({exc})") from exc
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise _bad(key_path, f"not an unencrypted PEM private key ({exc})") from exc
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if cert.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        raise _bad(key_path, f"private key does not match the certificate in {cert_path}")
    return pair


def _openssl_loads(cert_path: Path, key_path: Path) -> bool:
    """Whether OpenSSL loads the pair: PEM certificate(s), an unencrypted key, and they match.

    An encrypted key is refused without asking for a password (OpenSSL would otherwise prompt
    on the terminal).
    """

    def no_password() -> bytes:
        raise ValueError("the key is encrypted")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_path, key_path, password=no_password)
    except (OSError, ValueError, ssl.SSLError):
        return False
    return True


def _read(path: Path) -> bytes:
    """The bytes of `path`, or a ConfigError naming it."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _bad(path, exc.strerror or str(exc)) from exc


def _save(
    directory: Path, cert_path: Path, key_path: Path, cert_pem: bytes, key_pem: bytes
) -> None:
    """Write a new pair so that a crash at any point leaves no mismatched pair behind.

    The certificate is the commit marker: it is removed first and written last, so an
    interrupted save leaves `cert.pem` missing and the next start generates again.
    """
    try:
        directory.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
        cert_path.unlink(missing_ok=True)
        write_atomic(key_path, key_pem, mode=KEY_MODE)
        write_atomic(cert_path, cert_pem, mode=CERT_MODE)
    except OSError as exc:
        where = exc.filename or directory
        raise ConfigError(
            f"could not load/generate a certificate: {where}: {exc.strerror or exc}"
        ) from exc


def _bad(path: Path, detail: str) -> ConfigError:
    """The error for an unusable file of the pair."""
    return ConfigError(f"could not load/generate a certificate: {path}: {detail}")
