"""systemd: the units pass `systemd-analyze`, and the real daemon speaks `Type=notify`.

The units in systemd/ are checked offline (`verify`, `security --offline=true`) with the
ExecStart binary pointed at this venv's `authd`, the one change made to them. The readiness
protocol is checked over a real AF_UNIX datagram socket, the daemon being the real process
(tests/daemon.py) with `NOTIFY_SOCKET` in its environment, as systemd starts it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from authd.cli import build_parser
from authd.config import FileConfig, ServerSettings
from authd.metrics import Metrics
from authd.server.backends import Backends
from authd.server.daemon import EXTEND_BY, Lifecycle
from authd.server.reload import Timing
from authd.server.sdnotify import Notifier, monotonic_usec, socket_address
from tests.conftest import BIN
from tests.daemon import Daemon, base_env
from tests.deploy_helpers import shell_blocks

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"
INSTALLED_BINARY = "/opt/authd/bin/authd"
WAIT = 20.0
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (Debian package systemd)"
)
ACCOUNT = "123456789012"


# --- the unit files ----------------------------------------------------------------------------


def unit_lines(name: str) -> list[tuple[str, str]]:
    """(key, value) of every setting of a unit file, continuation lines joined, in order."""
    text = (UNITS / name).read_text().replace("\\\n", " ")
    pairs = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            pairs.append((key.strip(), value.strip()))
    return pairs


def setting(name: str, key: str) -> list[str]:
    """Every value of `key` in unit `name`."""
    return [value for k, value in unit_lines(name) if k == key]


def env_file_values(path: Path) -> dict[str, str]:
    """KEY=value lines of an EnvironmentFile (double quotes removed), as systemd reads them."""
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().removeprefix('"').removesuffix('"')
    return values


def default_environment(name: str) -> dict[str, str]:
    """The unit's `Environment="KEY=value"` defaults."""
    found = {}
    for value in setting(name, "Environment"):
        key, _, rest = value.strip('"').partition("=")
        found[key] = rest
    return found


def local_copy(tmp_path: Path, name: str) -> Path:
    """The unit with its ExecStart binary pointed at this venv's authd (verify checks that
    the binary exists); nothing else changes."""
    text = (UNITS / name).read_text()
    assert INSTALLED_BINARY in text
    copy = tmp_path / name
    copy.write_text(text.replace(INSTALLED_BINARY, str(BIN / "authd")))
    return copy


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `systemd-analyze ARGS...` (no pager, no running systemd needed)."""
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"},
    )


RATING = re.compile(r"Overall exposure level for \S+: (\d+\.\d) (\w+)")


def exposure(unit: Path) -> tuple[float, str]:
    """The offline security rating of `unit`: (exposure, SAFE/OK/MEDIUM/EXPOSED/UNSAFE)."""
    out = analyze("security", "--offline=true", str(unit))
    match = RATING.search(out.stdout)
    assert match is not None, out.stdout + out.stderr
    return float(match.group(1)), match.group(2)


@needs_analyze
def test_units_verify_clean(tmp_path: Path) -> None:
    """`systemd-analyze verify` has nothing to say about either unit."""
    units = [str(local_copy(tmp_path, name)) for name in ("authd.service", "authd-init.service")]
    out = analyze("verify", "--man=no", *units)
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")


@needs_analyze
def test_verify_reports_a_broken_unit(tmp_path: Path) -> None:
    """The same check fails on a typo, so a clean result above means something."""
    unit = local_copy(tmp_path, "authd.service")
    unit.write_text(unit.read_text().replace("Type=notify", "Type=notfy"))
    out = analyze("verify", "--man=no", str(unit))
    assert "Failed to parse service type, ignoring: notfy" in out.stderr  # rc stays 0


@needs_analyze
@pytest.mark.parametrize("name", ["authd.service", "authd-init.service"])
def test_security_rating_is_ok_or_better(tmp_path: Path, name: str) -> None:
    """`systemd-analyze security --offline=true` rates each unit SAFE or OK."""
    level, word = exposure(local_copy(tmp_path, name))
    assert word in ("SAFE", "OK"), (name, level, word)


@needs_analyze
def test_security_rating_sees_a_missing_sandbox(tmp_path: Path) -> None:
    """Without its sandboxing lines the daemon's unit rates worse than OK."""
    unit = local_copy(tmp_path, "authd.service")
    text = unit.read_text()
    start, end = text.index("NoNewPrivileges="), text.index("[Install]")
    unit.write_text(text[:start] + text[end:])
    level, word = exposure(unit)
    assert word not in ("SAFE", "OK"), (level, word)


def test_service_contract() -> None:
    """Type=notify, flags from /etc/default/authd, reload by SIGHUP, restart, state dir."""
    name = "authd.service"
    assert setting(name, "Type") == ["notify"]
    assert setting(name, "EnvironmentFile") == ["-/etc/default/authd"]
    assert setting(name, "ExecStart") == [f"{INSTALLED_BINARY} server $AUTHD_FLAGS"]
    assert setting(name, "ExecReload") == ["/bin/kill -HUP $MAINPID"]
    assert setting(name, "Restart") == ["on-failure"]
    assert setting(name, "CapabilityBoundingSet") == [""]
    assert setting(name, "SystemCallFilter")[0] == "@system-service"
    assert "kube-apiserver.service" not in " ".join(setting(name, "Before"))
    assert "authd-init.service" in " ".join(setting(name, "After"))


def test_init_contract() -> None:
    """authd-init: a oneshot before kube-apiserver that runs `authd init` in the state dir
    and copies the kubeconfig where the daemon's flags say it is."""
    name = "authd-init.service"
    assert setting(name, "Type") == ["oneshot"]
    assert "kube-apiserver.service" in setting(name, "Before")[0].split()
    assert setting(name, "ExecStart") == [f"{INSTALLED_BINARY} init $AUTHD_INIT_FLAGS"]
    [state] = setting(name, "StateDirectory")
    assert setting(name, "WorkingDirectory") == [f"/var/lib/{state}"]
    assert setting("authd.service", "StateDirectory") == [state]
    [copy] = setting(name, "ExecStartPost")
    flags = shlex.split(env_file_values(UNITS / "authd.env")["AUTHD_FLAGS"])
    assert f"--generate-kubeconfig={copy.split()[-1]}" in flags
    assert copy.split()[-2] == "aws-iam-authenticator.kubeconfig"  # what `init` writes


def test_env_file_matches_the_unit_and_parses() -> None:
    """The shipped /etc/default/authd and the unit's defaults are the same flags; they parse
    as `authd server` / `authd init` flags; the state dir is the unit's StateDirectory."""
    values = env_file_values(UNITS / "authd.env")
    assert set(values) == {"AUTHD_FLAGS", "AUTHD_INIT_FLAGS"}
    assert default_environment("authd.service")["AUTHD_FLAGS"] == values["AUTHD_FLAGS"]
    assert (
        default_environment("authd-init.service")["AUTHD_INIT_FLAGS"]
        == (values["AUTHD_INIT_FLAGS"])
    )
    server = build_parser().parse_args(["server", *shlex.split(values["AUTHD_FLAGS"])])
    [state] = setting("authd.service", "StateDirectory")
    assert server.state_dir == f"/var/lib/{state}"
    init = build_parser().parse_args(["init", *shlex.split(values["AUTHD_INIT_FLAGS"])])
    assert init.config == server.config


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers missing")
def test_sysusers_creates_the_service_user(tmp_path: Path) -> None:
    """systemd/authd.sysusers makes the User= both units run as, with the state dir as home."""
    (tmp_path / "etc").mkdir()
    for name in ("passwd", "group", "shadow", "gshadow"):
        (tmp_path / "etc" / name).touch()
    out = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(UNITS / "authd.sysusers")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    [entry] = (tmp_path / "etc" / "passwd").read_text().splitlines()
    user, _, _, _, _, home, _ = entry.split(":")
    for unit in ("authd.service", "authd-init.service"):
        assert setting(unit, "User") == [user]
        assert setting(unit, "Group") == [user]
    assert home == f"/var/lib/{setting('authd.service', 'StateDirectory')[0]}"


# --- the notify socket -------------------------------------------------------------------------


class NotifySocket:
    """systemd's side: a bound AF_UNIX datagram socket, path or abstract (`@name`)."""

    def __init__(self, value: str) -> None:
        self.value = value
        address = socket_address(value)
        assert address is not None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)

    def receive(self, timeout: float = WAIT) -> dict[str, str]:
        """The next message as a dict of its fields (fails after `timeout` seconds)."""
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096)
        lines = data.decode().splitlines()
        return dict(line.split("=", 1) for line in lines)

    def pending(self) -> bool:
        """True when a message is already waiting (does not wait for one)."""
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        """Close the socket (and remove its path)."""
        self.sock.close()
        if not self.value.startswith("@"):
            os.unlink(self.value)


@pytest.fixture
def abstract_socket() -> Iterator[NotifySocket]:
    """A notify socket with an abstract name, as systemd uses for user services."""
    listener = NotifySocket(f"@authd-test-{uuid.uuid4().hex}")
    yield listener
    listener.close()


@pytest.fixture
def path_socket() -> Iterator[NotifySocket]:
    """A notify socket at a short path (AF_UNIX paths are limited to 107 bytes)."""
    directory = tempfile.mkdtemp(prefix="authd-notify-")
    listener = NotifySocket(os.path.join(directory, "notify"))
    yield listener
    listener.close()
    os.rmdir(directory)


def test_socket_address_forms() -> None:
    """`@name` is abstract, an absolute path is kept, anything else is refused."""
    assert socket_address("@x/y") == b"\0x/y"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("vsock:2:1234") is None
    assert socket_address("relative/notify") is None
    assert socket_address("@") is None


def test_notifier_without_socket_does_nothing() -> None:
    """No NOTIFY_SOCKET (or an unsupported one): nothing is sent, nothing fails."""
    for value in (None, "", "vsock:2:1"):
        notifier = Notifier(value)
        assert not notifier.enabled
        assert notifier.ready("x") is False


def test_notifier_sends_datagrams(path_socket: NotifySocket) -> None:
    """READY/STATUS in one datagram; a newline in a status cannot split the message."""
    notifier = Notifier(path_socket.value)
    assert notifier.ready("line one\nline two")
    assert path_socket.receive() == {"READY": "1", "STATUS": "line one line two"}
    before = monotonic_usec()
    assert notifier.reloading("r")
    message = path_socket.receive()
    assert message["RELOADING"] == "1"
    assert before <= int(message["MONOTONIC_USEC"]) <= monotonic_usec()


def test_notifier_survives_a_gone_manager(tmp_path: Path) -> None:
    """A socket nobody listens on any more: send returns False, the daemon goes on."""
    notifier = Notifier(str(tmp_path / "gone"))
    assert notifier.enabled
    assert notifier.stopping("bye") is False


def waiting_backends(tmp_path: Path) -> tuple[Backends, Path]:
    """MountedFile and DynamicFile backends, loaded, whose DynamicFile does not exist yet; and
    that file's path."""
    config = tmp_path / "config.yaml"
    config.write_text("clusterID: notify-test\n")
    dynamic = tmp_path / "dynamic.json"
    settings = ServerSettings.resolve(
        flags={"backend_mode": "MountedFile,DynamicFile", "dynamicfile_path": str(dynamic)},
        env={},
        file=FileConfig.from_file(config),
    )
    backends = Backends(settings, Metrics(process_collector=False))
    backends.load_all()
    return backends, dynamic


async def test_ready_waits_for_the_first_snapshot(
    tmp_path: Path, path_socket: NotifySocket
) -> None:
    """With the DynamicFile missing, start-up says why in STATUS and never READY; READY comes
    with the first snapshot, and its STATUS shows every backend ok."""
    backends, dynamic = waiting_backends(tmp_path)
    shutdown = trio.Event()
    lifecycle = Lifecycle(Notifier(path_socket.value), backends, shutdown, poll=0.01)
    timing = Timing(debounce=0.02, empty_grace=0.3, resync=60.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: backends.serve_reloads(timing=timing, task_status=task_status)
        )
        nursery.start_soon(lifecycle.announce_ready, "127.0.0.1:1")
        first = await trio.to_thread.run_sync(path_socket.receive)
        assert "READY" not in first
        assert "DynamicFile" in first["STATUS"] and "does not exist yet" in first["STATUS"]
        # Many polls later (the reloader's own checks tick on), still no READY.
        [reloader] = [r for r in backends.reloaders if r.path == str(dynamic)]
        checks = reloader.checks
        reloader.trigger()
        await reloader.wait_checked(checks + 1)
        await trio.sleep(0.05)  # several polls of the 0.01 s loop
        assert not lifecycle.is_ready and not path_socket.pending()
        doc = {"mapRoles": [{"rolearn": f"arn:aws:iam::{ACCOUNT}:role/R", "username": "r"}]}
        dynamic.write_text(json.dumps(doc))
        ready = await trio.to_thread.run_sync(path_socket.receive)
        assert ready["READY"] == "1"
        assert ready["STATUS"] == "serving on 127.0.0.1:1; MountedFile: ok; DynamicFile: ok"
        assert backends.by_name["DynamicFile"].table is not None
        nursery.cancel_scope.cancel()


async def test_a_long_wait_for_a_backend_asks_systemd_for_more_time(
    tmp_path: Path, path_socket: NotifySocket
) -> None:
    """While a backend has no snapshot, the daemon (serving already) keeps telling systemd it is
    alive, so TimeoutStartSec never kills it for a slow API server; READY still waits."""
    backends, _ = waiting_backends(tmp_path)
    lifecycle = Lifecycle(
        Notifier(path_socket.value), backends, trio.Event(), poll=0.01, extend_every=0.05
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lifecycle.announce_ready, "127.0.0.1:1")
        first = await trio.to_thread.run_sync(path_socket.receive)
        assert "STATUS" in first and "EXTEND_TIMEOUT_USEC" not in first
        extensions = [await trio.to_thread.run_sync(path_socket.receive) for _ in range(3)]
        assert extensions == [{"EXTEND_TIMEOUT_USEC": str(int(EXTEND_BY * 1_000_000))}] * 3
        assert not lifecycle.is_ready
        nursery.cancel_scope.cancel()


def accepts(port: int) -> bool:
    """True when 127.0.0.1:`port` accepts a TCP connection now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return True
    except OSError:
        return False


def test_daemon_notify_sequence(tmp_path: Path, abstract_socket: NotifySocket) -> None:
    """The real daemon: a waiting STATUS while the DynamicFile is missing (the port already
    accepts, /readyz 503), READY with the first snapshot, RELOADING then READY on SIGHUP,
    STOPPING on SIGTERM, exit 0."""
    config = tmp_path / "config.yaml"
    config.write_text("clusterID: notify-cluster\n")
    dynamic = tmp_path / "mappings" / "dynamic.json"
    daemon = Daemon(
        [
            f"--config={config}",
            "--backend-mode=MountedFile,DynamicFile",
            f"--dynamicfile-path={dynamic}",
        ],
        state=tmp_path,
        env=base_env(NOTIFY_SOCKET=abstract_socket.value),
    )
    try:
        waiting = abstract_socket.receive()
        assert "READY" not in waiting, waiting
        assert f"listening on 127.0.0.1:{daemon.port}" in waiting["STATUS"]
        assert "DynamicFile" in waiting["STATUS"]
        assert accepts(daemon.port)
        with daemon.client() as client:
            assert client.get("/readyz").status_code == 503
        assert not abstract_socket.pending()

        dynamic.parent.mkdir()
        doc = {"mapRoles": [{"rolearn": f"arn:aws:iam::{ACCOUNT}:role/R", "username": "r"}]}
        dynamic.write_text(json.dumps(doc))
        ready = abstract_socket.receive()
        assert ready == {
            "READY": "1",
            "STATUS": f"serving on 127.0.0.1:{daemon.port}; MountedFile: ok; DynamicFile: ok",
        }
        with daemon.client() as client:
            assert client.get("/readyz").status_code == 200

        before = monotonic_usec()
        daemon.signal(signal.SIGHUP)
        reloading = abstract_socket.receive()
        assert reloading["RELOADING"] == "1"
        assert before <= int(reloading["MONOTONIC_USEC"]) <= monotonic_usec()
        assert abstract_socket.receive()["READY"] == "1"
        assert len(daemon.wait_for("dynamic file reloaded", count=2)) == 2

        daemon.signal(signal.SIGTERM)
        assert "STOPPING" in abstract_socket.receive()
        assert daemon.proc.wait(timeout=WAIT) == 0
    finally:
        assert daemon.stop() == 0


def test_daemon_ready_first_when_everything_is_there(
    tmp_path: Path, path_socket: NotifySocket
) -> None:
    """With every file present the first message is READY, and by then the port accepts."""
    config = tmp_path / "config.yaml"
    config.write_text("clusterID: notify-cluster\n")
    daemon = Daemon(
        [f"--config={config}"],
        state=tmp_path,
        env=base_env(NOTIFY_SOCKET=path_socket.value),
    )
    try:
        first = path_socket.receive()
        assert first["READY"] == "1", first
        assert first["STATUS"] == f"serving on 127.0.0.1:{daemon.port}; MountedFile: ok"
        assert accepts(daemon.port)
    finally:
        assert daemon.stop() == 0
    assert "STOPPING" in path_socket.receive()


# --- docs/deploy-systemd.md ------------------------------------------------------------------

ON_NODE = "# as root on the control-plane node"
FROM_CHECKOUT = "# from a checkout (tests/test_systemd.py runs this block)"


def doc_blocks() -> list[list[str]]:
    """The lines of every ```sh block of docs/deploy-systemd.md."""
    return shell_blocks(ROOT / "docs" / "deploy-systemd.md")


def test_every_doc_command_is_tested_or_for_a_real_node() -> None:
    """Each shell block says where it runs, with one of the two comments the doc explains."""
    kinds = [
        "node"
        if block[0].startswith(ON_NODE)
        else "checkout"
        if block[0] == FROM_CHECKOUT
        else block[0]
        for block in doc_blocks()
    ]
    assert set(kinds) == {"node", "checkout"}, kinds


@needs_analyze
def test_doc_commands_from_a_checkout_run() -> None:
    """The blocks marked "from a checkout" succeed, line by line, in this checkout."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    ran = 0
    for block in doc_blocks():
        if block[0] != FROM_CHECKOUT:
            continue
        for line in block[1:]:
            out = subprocess.run(
                shlex.split(line),
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert out.returncode == 0, (line, out.stdout, out.stderr)
            ran += 1
    assert ran >= 3
