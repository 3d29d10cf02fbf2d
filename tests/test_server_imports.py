"""What the real `authd server` loads: nothing it does not use on the path it takes.

The daemon runs with `PYTHONPROFILEIMPORTTIME=1`, so every module it imports, at start or
later, is named on its stderr. A daemon on a config file with its key pair already in the state
dir must not load cryptography (only a new pair needs it), botocore (EC2 and instance metadata
only), the client, the Kubernetes modules, or what httpx's command-line client needs. The
budget this keeps is in docs/memory.md; the figures are in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from authd.server import kubeconfig, tls
from tests.daemon import Daemon, base_env

CONFIG = """\
clusterID: imports-test
server:
  mapUsers:
  - userarn: arn:aws:iam::123456789012:user/alice
    username: alice
    groups: [dev]
"""
# Module-name prefixes the daemon must not import on this path.
UNUSED = (
    "cryptography",
    "botocore",
    "authd.client",
    "authd.server.kube",
    "authd.server.kubebackends",
    "authd.mapping.dynamicfile",
    # httpx's command-line client (httpx._main) pulls these in where they are installed, as in
    # the test environment. httpx._main itself is named even though it is refused: the
    # interpreter times the refused import too.
    "click",
    "pygments",
)
IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$")


def imported_modules(lines: list[str]) -> set[str]:
    """The module names of the `-X importtime` lines among `lines`."""
    return {found[1] for line in lines if (found := IMPORT_LINE.match(line))}


def unused_loaded(modules: set[str]) -> list[str]:
    """The modules of `modules` that fall under UNUSED."""
    return sorted(m for m in modules if any(m == u or m.startswith(f"{u}.") for u in UNUSED))


def test_the_checker_names_unused_modules() -> None:
    """The line parser and the prefix rule find what the daemon test looks for."""
    lines = [
        "import time: self [us] | cumulative | imported package\n",
        "import time:       120 |      18709 |   cryptography.x509\n",
        "import time:        90 |         90 | authd.server.kubeconfig\n",
        '{"event": "listening"}\n',
    ]
    modules = imported_modules(lines)
    assert modules == {"cryptography.x509", "authd.server.kubeconfig"}
    assert unused_loaded(modules) == ["cryptography.x509"]
    assert unused_loaded({"authd.server.kubeconfig", "clicker"}) == []


def test_daemon_with_an_existing_pair_loads_only_what_it_uses(tmp_path: Path) -> None:
    """Start, serve a health check and /metrics, stop: no unused module was ever imported."""
    tls.load_or_create_keypair(tmp_path / "state", address="127.0.0.1", hostname="localhost")
    config = tmp_path / "config" / "config.yaml"
    config.parent.mkdir()
    config.write_text(CONFIG)
    env = base_env(PYTHONPROFILEIMPORTTIME="1")
    daemon = Daemon([f"--config={config}"], state=tmp_path, env=env)
    try:
        daemon.wait_for("listening")
        assert not daemon.events("generated a new private key and certificate")
        with daemon.client() as client:
            assert client.get("/healthz").status_code == 200
            assert "authd_reviews_total" in client.get("/metrics").text
    finally:
        assert daemon.stop() == 0
    modules = imported_modules(daemon.lines)
    # The lines were read: the daemon's own modules and its HTTP client library are there.
    assert {"authd.server.daemon", "authd.server.tls", "httpx", "trio"} <= modules
    assert unused_loaded(modules) == []


@pytest.fixture(scope="module")
def pair() -> tuple[bytes, bytes]:
    """A self-signed certificate and its key, as the daemon makes them."""
    return tls.generate_self_signed(address="127.0.0.1", hostname="localhost")


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(lambda pem: pem, id="as-written"),
        pytest.param(lambda pem: pem.replace(b"\n", b"\r\n"), id="crlf"),
        pytest.param(lambda pem: b"# serving certificate\n" + pem, id="text-before"),
        pytest.param(lambda pem: pem + pem, id="chain"),
    ],
)
def test_kubeconfig_ca_data_is_the_same_with_or_without_cryptography(
    pair: tuple[bytes, bytes], variant: Callable[[bytes], bytes]
) -> None:
    """The CA data is cryptography's PEM of the first certificate, whichever reader took it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert_pem = variant(pair[0])
    leaf = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.PEM)
    expected = kubeconfig.render_kubeconfig(cert_pem=leaf, hostname="localhost", port=21362)
    assert kubeconfig.render_kubeconfig(cert_pem=cert_pem, hostname="localhost", port=21362) == (
        expected
    )


def test_existing_pair_loaded_without_cryptography_is_the_files(
    tmp_path: Path, pair: tuple[bytes, bytes]
) -> None:
    """A pair OpenSSL accepts is returned as the bytes of its files, not regenerated."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / tls.KEY_FILE).write_bytes(pair[1])
    (state / tls.KEY_FILE).chmod(0o600)
    (state / tls.CERT_FILE).write_bytes(pair[0] + pair[0])
    loaded = tls.load_or_create_keypair(state, address="127.0.0.1", hostname="localhost")
    assert (loaded.cert_pem, loaded.key_pem, loaded.generated) == (
        pair[0] + pair[0],
        pair[1],
        False,
    )
