"""Tests for authd.server.tls: upstream's certificate, reuse of existing pairs, TLS context."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import stat
import warnings
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from authd.errors import ConfigError
from authd.server.tls import KeyPair, load_or_create_keypair, server_ssl_context

ANY_V4 = "0.0.0.0"  # noqa: S104 - the unspecified listen address is a case under test


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _sans(pair: KeyPair) -> tuple[set[str], set[str]]:
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(san.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return dns, ips


async def _handshake(
    pair: KeyPair, *, cadata: str, server_hostname: str, alpn: list[str]
) -> tuple[str | None, str | None]:
    """Run a real TLS handshake over an in-memory pipe; returns the ALPN choice and version."""
    client_ctx = ssl.create_default_context(cadata=cadata)
    client_ctx.set_alpn_protocols(alpn)
    left, right = trio.testing.memory_stream_pair()
    server = trio.SSLStream(left, server_ssl_context(pair), server_side=True)
    client = trio.SSLStream(right, client_ctx, server_hostname=server_hostname)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.do_handshake)
    return client.selected_alpn_protocol(), client.version()


def test_new_pair_follows_upstream(tmp_path: Path) -> None:
    """A generated pair has upstream's key format, modes, subject, lifetime and extensions."""
    state = tmp_path / "state"
    now = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    pair = load_or_create_keypair(state, address="127.0.0.1", hostname="localhost", now=now)
    assert pair.generated is True
    assert pair.cert_path == state / "cert.pem"
    assert pair.key_path == state / "key.pem"
    assert _mode(state) == 0o700
    assert _mode(pair.key_path) == 0o600
    assert _mode(pair.cert_path) == 0o644
    assert pair.key_path.read_bytes() == pair.key_pem
    assert pair.key_pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----\n")
    assert pair.cert_pem.startswith(b"-----BEGIN CERTIFICATE-----\n")
    key = serialization.load_pem_private_key(pair.key_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 2048

    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    cn = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    assert cn == ["aws-iam-authenticator"]
    assert cert.issuer == cert.subject
    assert 0 < cert.serial_number < 2**128
    assert cert.not_valid_before_utc == now
    assert cert.not_valid_after_utc - now == datetime.timedelta(hours=876000)
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length is None
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and usage.key_cert_sign
    assert not usage.crl_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    cert.verify_directly_issued_by(cert)  # self-signed by its own key
    assert _sans(pair) == ({"localhost"}, {"127.0.0.1", "::1"})


@pytest.mark.parametrize(
    ("address", "hostname", "dns", "ips"),
    [
        (ANY_V4, "auth.example.com", {"auth.example.com", "localhost"}, {"127.0.0.1", "::1"}),
        ("::", "localhost", {"localhost"}, {"127.0.0.1", "::1"}),
        ("10.0.0.5", "10.0.0.6", {"localhost"}, {"10.0.0.5", "10.0.0.6", "127.0.0.1", "::1"}),
        ("10.0.0.5", "10.0.0.5", {"localhost"}, {"10.0.0.5", "127.0.0.1", "::1"}),
        ("", "fd00::1", {"localhost"}, {"fd00::1", "127.0.0.1", "::1"}),
        ("127.0.0.1", "[fd00::2]", {"localhost"}, {"fd00::2", "127.0.0.1", "::1"}),
    ],
)
def test_subject_alt_names_follow_address_and_hostname(
    tmp_path: Path, address: str, hostname: str, dns: set[str], ips: set[str]
) -> None:
    """SANs follow upstream's address/hostname rules, plus localhost, 127.0.0.1 and ::1."""
    pair = load_or_create_keypair(tmp_path, address=address, hostname=hostname)
    assert _sans(pair) == (dns, ips)


def test_address_that_is_not_an_ip_is_refused(tmp_path: Path) -> None:
    """A listen address that is not an IP literal is a clear error and writes nothing."""
    with pytest.raises(ConfigError, match="not an IP address"):
        load_or_create_keypair(tmp_path / "s", address="example.com", hostname="localhost")
    assert not (tmp_path / "s").exists()


def test_existing_pair_is_reused_untouched(tmp_path: Path) -> None:
    """A second start loads the same pair and does not rewrite either file."""
    first = load_or_create_keypair(tmp_path, address="127.0.0.1", hostname="localhost")
    stamps = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in (first.cert_path, first.key_path)]
    second = load_or_create_keypair(tmp_path, address="10.1.1.1", hostname="other.example")
    assert second.generated is False
    assert (second.cert_pem, second.key_pem) == (first.cert_pem, first.key_pem)
    after = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in (first.cert_path, first.key_path)]
    assert after == stamps


def test_missing_cert_regenerates_both_files(tmp_path: Path) -> None:
    """With only key.pem present, a new pair replaces it (upstream: either missing = new)."""
    first = load_or_create_keypair(tmp_path, address="127.0.0.1", hostname="localhost")
    first.cert_path.unlink()
    second = load_or_create_keypair(tmp_path, address="127.0.0.1", hostname="localhost")
    assert second.generated is True
    assert second.key_pem != first.key_pem
    assert second.key_path.read_bytes() == second.key_pem
    assert second.cert_path.read_bytes() == second.cert_pem


def _self_signed_ca(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, name: x509.Name, *, now: datetime.datetime
) -> x509.Certificate:
    """A CA certificate for `key`, valid from a day before `now` for 30 days."""
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def _ca_signed_pair(directory: Path) -> tuple[bytes, bytes, bytes]:
    """Write a nodeup-style pair: leaf + CA chain in cert.pem, PKCS#8 EC key in key.pem."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes-ca")])
    ca = _self_signed_ca(ca_key, ca_name, now=now)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aws-iam-auth")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    cert_pem = leaf.public_bytes(pem) + ca.public_bytes(pem)
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (directory / "cert.pem").write_bytes(cert_pem)
    (directory / "key.pem").write_bytes(key_pem)
    return cert_pem, key_pem, ca.public_bytes(pem)


async def test_ca_signed_pkcs8_pair_from_nodeup_is_served(tmp_path: Path) -> None:
    """A CA-signed chain with a PKCS#8 key is loaded as is and verifies against its CA."""
    cert_pem, key_pem, ca_pem = _ca_signed_pair(tmp_path)
    pair = load_or_create_keypair(tmp_path, address="127.0.0.1", hostname="localhost")
    assert (pair.generated, pair.cert_pem, pair.key_pem) == (False, cert_pem, key_pem)
    alpn, _ = await _handshake(
        pair, cadata=ca_pem.decode(), server_hostname="localhost", alpn=["http/1.1"]
    )
    assert alpn == "http/1.1"


@pytest.mark.parametrize(
    ("which", "content", "message"),
    [
        (
            "key.pem",
            b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
            "key",
        ),
        ("cert.pem", b"not a certificate\n", "not a PEM certificate"),
        ("key.pem", None, "does not match"),
        ("key.pem", "encrypted", "not an unencrypted PEM private key"),
    ],
)
def test_unusable_existing_pair_is_an_error_not_a_regeneration(
    tmp_path: Path, which: str, content: bytes | str | None, message: str
) -> None:
    """A pair that does not parse or match is reported with its path and left unchanged."""
    load_or_create_keypair(tmp_path, address="127.0.0.1", hostname="localhost")
    target = tmp_path / which
    if content is None:  # a valid key that belongs to another certificate
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        content = other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    elif content == "encrypted":
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        content = other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    assert isinstance(content, bytes)
    target.write_bytes(content)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ConfigError, match=message) as info:
        load_or_create_keypair(tmp_path, address="127.0.0.1", hostname="localhost")
    assert str(target) in str(info.value)
    assert str(info.value).startswith("could not load/generate a certificate: ")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_unwritable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    """A state dir path that is a file gives a ConfigError naming it."""
    blocker = tmp_path / "state"
    blocker.write_text("a file, not a directory")
    with pytest.raises(ConfigError, match="could not load/generate a certificate"):
        load_or_create_keypair(blocker, address="127.0.0.1", hostname="localhost")


async def test_context_offers_only_http11_and_verifies_for_ip_and_name(tmp_path: Path) -> None:
    """The server picks http/1.1 over h2, needs TLS 1.2+, and its cert verifies by IP and name."""
    pair = load_or_create_keypair(tmp_path, address="127.0.0.1", hostname="localhost")
    assert server_ssl_context(pair).minimum_version == ssl.TLSVersion.TLSv1_2
    for name in ("localhost", "127.0.0.1", "::1"):
        alpn, version = await _handshake(
            pair, cadata=pair.cert_pem.decode(), server_hostname=name, alpn=["h2", "http/1.1"]
        )
        assert alpn == "http/1.1"
        assert version in ("TLSv1.2", "TLSv1.3")


async def test_client_capped_below_tls12_is_refused(tmp_path: Path) -> None:
    """A client that only speaks TLS 1.1 cannot complete a handshake."""
    pair = load_or_create_keypair(tmp_path, address="127.0.0.1", hostname="localhost")
    client_ctx = ssl.create_default_context(cadata=pair.cert_pem.decode())
    try:
        with warnings.catch_warnings():
            # Deliberately configuring the deprecated protocol the server must refuse.
            warnings.simplefilter("ignore", DeprecationWarning)
            client_ctx.minimum_version = ssl.TLSVersion.TLSv1
            client_ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        # OpenSSL 3 refuses TLS 1.1 at its default security level even as a client.
        client_ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError) as exc:
        pytest.skip(f"this OpenSSL cannot even configure a TLS 1.1 client: {exc}")
    left, right = trio.testing.memory_stream_pair()
    server = trio.SSLStream(left, server_ssl_context(pair), server_side=True)
    client = trio.SSLStream(right, client_ctx, server_hostname="localhost")
    failed: list[str] = []

    async def handshake(side: str, stream: trio.SSLStream[trio.abc.Stream]) -> None:
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError:
            failed.append(side)
            await stream.transport_stream.aclose()  # let the other side see the end

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(handshake, "server", server)
            nursery.start_soon(handshake, "client", client)
    assert "server" in failed


def test_context_load_failure_is_a_config_error(tmp_path: Path) -> None:
    """A KeyPair whose files vanished gives a ConfigError, not an ssl traceback."""
    pair = load_or_create_keypair(tmp_path, address="127.0.0.1", hostname="localhost")
    pair.key_path.unlink()
    with pytest.raises(ConfigError, match=str(pair.key_path)):
        server_ssl_context(pair)


# --- issue 13: renegotiation, client certificates, loose state files --------------------------


def test_context_refuses_renegotiation(tmp_path: Path) -> None:
    """The server context sets OP_NO_RENEGOTIATION, so a client cannot make it re-handshake."""
    pair = load_or_create_keypair(tmp_path, address="127.0.0.1", hostname="localhost")
    assert server_ssl_context(pair).options & ssl.OP_NO_RENEGOTIATION


def _client_ca(directory: Path) -> tuple[Path, bytes, bytes]:
    """A client CA (written to `directory/client-ca.pem`) and a client certificate it signed:
    (CA file, client cert PEM, client key PEM)."""
    now = datetime.datetime.now(datetime.UTC)
    pem = serialization.Encoding.PEM
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "apiserver-webhook-ca")])
    ca = _self_signed_ca(ca_key, ca_name, now=now)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "client-ca.pem"
    ca_file.write_bytes(ca.public_bytes(pem))
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return ca_file, leaf.public_bytes(pem), key_pem


async def _server_handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> bool:
    """Handshake over an in-memory pipe, then one byte each way; True when the server side
    got through (with TLS 1.3 the client learns of a refusal only when it next reads)."""
    left, right = trio.testing.memory_stream_pair()
    server = trio.SSLStream(left, server_ctx, server_side=True)
    client = trio.SSLStream(right, client_ctx, server_hostname="localhost")
    served: list[bool] = []

    async def serve() -> None:
        try:
            await server.do_handshake()
            await server.send_all(b"x")
            served.append(True)
        except trio.BrokenResourceError:
            served.append(False)
            await server.transport_stream.aclose()

    async def connect() -> None:
        try:
            await client.do_handshake()
            await client.receive_some(1)
        except trio.BrokenResourceError:
            pass

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            nursery.start_soon(connect)
    return served == [True]


async def test_client_ca_file_admits_only_clients_with_a_certificate_it_signed(
    tmp_path: Path,
) -> None:
    """With `client_ca_file`, a client presenting a certificate from that CA completes the
    handshake; one with no certificate, or one signed by another CA, is refused."""
    pair = load_or_create_keypair(tmp_path / "state", address="127.0.0.1", hostname="localhost")
    ca_file, cert_pem, key_pem = _client_ca(tmp_path)
    server_ctx = server_ssl_context(pair, client_ca_file=str(ca_file))
    (tmp_path / "client.pem").write_bytes(cert_pem + key_pem)
    other = tmp_path / "other"
    other.mkdir()
    _, other_cert, other_key = _client_ca(other)
    (tmp_path / "other.pem").write_bytes(other_cert + other_key)

    def client(certfile: str | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=pair.cert_pem.decode())
        if certfile is not None:
            ctx.load_cert_chain(certfile)
        return ctx

    assert await _server_handshake(server_ctx, client(str(tmp_path / "client.pem")))
    assert not await _server_handshake(server_ctx, client(None))
    assert not await _server_handshake(server_ctx, client(str(tmp_path / "other.pem")))
    # Without the setting, a client without a certificate is served as before.
    assert await _server_handshake(server_ssl_context(pair), client(None))


def test_unreadable_client_ca_file_is_a_config_error(tmp_path: Path) -> None:
    """A client CA file that is missing or not PEM stops the start with a message naming it."""
    pair = load_or_create_keypair(tmp_path, address="127.0.0.1", hostname="localhost")
    with pytest.raises(ConfigError, match="client-ca-file"):
        server_ssl_context(pair, client_ca_file=str(tmp_path / "missing.pem"))


def test_new_state_dir_and_key_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """A state dir and key that authd creates are 0700 and 0600 even under umask 0, and not
    reported as loose."""
    import os

    old = os.umask(0)
    try:
        state = tmp_path / "state"
        pair = load_or_create_keypair(state, address="127.0.0.1", hostname="localhost")
        again = load_or_create_keypair(state, address="127.0.0.1", hostname="localhost")
    finally:
        os.umask(old)
    assert (_mode(state), _mode(pair.key_path)) == (0o700, 0o600)
    assert again.loose == ()


@pytest.mark.parametrize(
    ("key_mode", "dir_mode", "loose"),
    [
        (0o644, 0o700, ("key",)),
        (0o620, 0o700, ("key",)),
        (0o600, 0o777, ("state_dir",)),
        (0o604, 0o770, ("key", "state_dir")),
        (0o600, 0o755, ()),
        (0o400, 0o700, ()),
    ],
)
def test_loose_existing_key_or_state_dir_is_used_but_named_in_a_warning(
    tmp_path: Path, key_mode: int, dir_mode: int, loose: tuple[str, ...]
) -> None:
    """A pre-written key others can read or change, or a state dir others can write, is still
    loaded (kops and tarmak write them) but named in a warning saying how to fix it."""
    from structlog.testing import capture_logs

    state = tmp_path / "state"
    first = load_or_create_keypair(state, address="127.0.0.1", hostname="localhost")
    first.key_path.chmod(key_mode)
    state.chmod(dir_mode)
    try:
        with capture_logs() as logs:
            pair = load_or_create_keypair(state, address="127.0.0.1", hostname="localhost")
    finally:
        state.chmod(0o700)
    assert (pair.generated, pair.key_pem, pair.loose) == (False, first.key_pem, loose)
    warned = [line["event"] for line in logs if line["log_level"] == "warning"]
    assert len(warned) == len(loose)
    if "key" in loose:
        assert any(f"chmod 600 {first.key_path}" in text for text in warned)
    if "state_dir" in loose:
        assert any(f"chmod 700 {state}" in text for text in warned)
