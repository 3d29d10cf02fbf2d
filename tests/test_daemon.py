"""The real `authd server` process: start-up, state files, signals, bad input, kops flags."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.daemon import Daemon, base_env, free_port

CONFIG = """\
clusterID: daemon-test
server:
  mapUsers:
  - userarn: arn:aws:iam::123456789012:user/alice
    username: alice
    groups: [dev]
"""
BROKEN = """\
clusterID: daemon-test
server:
  mapRoles:
  - rolearn: not-an-arn
    username: x
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A valid MountedFile config."""
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def daemon(tmp_path: Path, config: Path) -> Iterator[Daemon]:
    """A running daemon on the valid config, stopped after the test."""
    proc = Daemon([f"--config={config}"], state=tmp_path, env=base_env())
    proc.wait_for("listening")
    yield proc
    proc.stop()


def review(token: object) -> dict[str, object]:
    """A TokenReview request document."""
    return {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token},
    }


def test_state_files_are_written_safely(daemon: Daemon) -> None:
    """Start-up writes a 0600 key, a certificate, and upstream's webhook kubeconfig."""
    state = daemon.state / "state"
    assert stat.S_IMODE((state / "key.pem").stat().st_mode) == 0o600
    assert (state / "cert.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    doc = yaml.safe_load(daemon.kubeconfig.read_text())
    cluster = doc["clusters"][0]["cluster"]
    assert cluster["server"] == f"https://localhost:{daemon.port}/authenticate"
    assert doc["current-context"] == "webhook"


def test_existing_keypair_is_reused(tmp_path: Path, config: Path) -> None:
    """A second start reuses cert.pem and key.pem byte for byte."""
    first = Daemon([f"--config={config}"], state=tmp_path, env=base_env())
    first.wait_for("listening")
    assert first.stop() == 0
    cert = (tmp_path / "state" / "cert.pem").read_bytes()
    second = Daemon([f"--config={config}"], state=tmp_path, env=base_env())
    second.wait_for("listening")
    assert second.stop() == 0
    assert (tmp_path / "state" / "cert.pem").read_bytes() == cert
    assert second.events("loaded existing keypair")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_reaches_the_webhook_with_the_generated_kubeconfig(
    daemon: Daemon, tmp_path: Path
) -> None:
    """kubectl (client-go, as kube-apiserver's webhook client) trusts the generated kubeconfig."""
    body = tmp_path / "review.json"
    body.write_text(json.dumps(review("k8s-aws-v1.bm90LWEtdXJs")))
    seen = len(daemon.events("review"))
    out = subprocess.run(
        [
            "kubectl",
            f"--kubeconfig={daemon.kubeconfig}",
            f"--server=https://localhost:{daemon.port}",
            "--token=kubectl-needs-some-credential",
            "create",
            "--raw",
            "/authenticate",
            "-f",
            str(body),
        ],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["status"] == {"authenticated": False, "user": {}}  # cacheable: no error
    line = daemon.wait_for("review", count=seen + 1)[seen]
    assert (line["decision"], line["reason"]) == ("deny", "bad_token")


def test_bad_input_never_crashes_the_daemon(daemon: Daemon) -> None:
    """Malformed bodies and tokens get 400s or denials, never a 500; the daemon keeps serving."""
    bodies: list[bytes] = [
        b"",
        b"{",
        b"null",
        json.dumps({"kind": "TokenReview"}).encode(),
        json.dumps(review(None)).encode(),
        json.dumps(review("k8s-aws-v1." + "A" * 5000)).encode(),
        json.dumps(review("k8s-aws-v1.!!!")).encode(),
        json.dumps(review("k8s-aws-v1.aHR0cHM6Ly9leGFtcGxlLmNvbS8_YT0xJmE9Mg")).encode(),
        b"\xff\xfe" * 100,
    ]
    with daemon.client() as client:
        statuses = [client.post("/authenticate", content=body).status_code for body in bodies]
        too_big = client.post("/authenticate", content=b"x" * (2 * 1024 * 1024))
        assert client.get("/healthz").text == "ok"
    assert set(statuses) <= {200, 400}
    assert too_big.status_code == 413
    assert daemon.proc.poll() is None


def test_sigterm_exits_zero(daemon: Daemon) -> None:
    """SIGTERM stops the daemon gracefully with exit code 0."""
    assert daemon.stop() == 0
    assert daemon.events("stopped")


def test_sighup_keeps_the_last_good_mapping(daemon: Daemon, config: Path) -> None:
    """A broken edit plus SIGHUP keeps serving the old mapping and reports not ready until fixed."""
    with daemon.client() as client:
        assert client.get("/readyz").status_code == 200
        config.write_text(BROKEN)
        daemon.signal(signal.SIGHUP)
        daemon.wait_for("reload failed; keeping the last good mapping")
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503
        assert "rolearn" in not_ready.text
        config.write_text(CONFIG.replace("alice", "alice2"))
        daemon.signal(signal.SIGHUP)
        daemon.wait_for("configuration reloaded")
        assert client.get("/readyz").status_code == 200


def test_invalid_config_at_start_names_file_line_and_key(tmp_path: Path) -> None:
    """A config that does not validate stops start-up with exit 1 and file:line: key."""
    path = tmp_path / "config.yaml"
    path.write_text(BROKEN)
    proc = Daemon([f"--config={path}"], state=tmp_path, env=base_env())
    assert proc.proc.wait(timeout=20) == 1
    proc.stop()
    text = "".join(proc.lines)
    assert f"{path}:4" in text
    assert "mapRoles[0].rolearn" in text
    assert "Traceback" not in text


def test_missing_config_file_is_fatal(tmp_path: Path) -> None:
    """A --config path that does not exist exits 1 and names the file."""
    proc = Daemon([f"--config={tmp_path / 'nope.yaml'}"], state=tmp_path, env=base_env())
    assert proc.proc.wait(timeout=20) == 1
    proc.stop()
    assert "nope.yaml" in "".join(proc.lines)


def test_kops_flags_without_an_api_server_exit_naming_the_in_cluster_variables(
    tmp_path: Path, config: Path
) -> None:
    """kops' DaemonSet arguments parse; with no API server to reach (no in-cluster variables,
    no --kubeconfig) the CRD backend cannot start, and authd exits 1 saying why in one line.
    tests/test_kube_daemon.py runs the same arguments against an API server."""
    proc = Daemon(
        [
            f"--config={config}",
            "--cluster-id=kops.example.com",
            "--kubeconfig-pregenerated=true",
            "--backend-mode=CRD,MountedFile",
        ],
        state=tmp_path,
        env=base_env(),
    )
    assert proc.proc.wait(timeout=20) == 1
    proc.stop()
    text = "".join(proc.lines)
    assert "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be defined" in text
    assert "Traceback" not in text


def test_init_writes_upstream_files_into_the_current_directory(tmp_path: Path) -> None:
    """`init -i ID` writes cert.pem, key.pem and aws-iam-authenticator.kubeconfig in the cwd."""
    out = subprocess.run(
        [sys.executable, "-m", "authd", "init", "-i", "tarmak-cluster"],
        cwd=tmp_path,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert {p.name for p in tmp_path.iterdir()} >= {
        "cert.pem",
        "key.pem",
        "aws-iam-authenticator.kubeconfig",
    }
    assert stat.S_IMODE(os.stat(tmp_path / "key.pem").st_mode) == 0o600
    kubeconfig = yaml.safe_load((tmp_path / "aws-iam-authenticator.kubeconfig").read_text())
    assert kubeconfig["clusters"][0]["cluster"]["server"] == "https://localhost:21362/authenticate"
    assert "copy cert.pem to /var/aws-iam-authenticator/cert.pem" in out.stderr


def test_unreadable_keypair_is_fatal_and_said_once(tmp_path: Path, config: Path) -> None:
    """A cert.pem that does not parse stops start-up with exit 1, named once, never replaced."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "cert.pem").write_text("junk")
    (state / "key.pem").write_text("junk")
    proc = Daemon([f"--config={config}"], state=tmp_path, env=base_env())
    assert proc.proc.wait(timeout=20) == 1
    proc.stop()
    text = "".join(proc.lines)
    assert text.count("could not load/generate a certificate") == 1
    assert f"{state / 'cert.pem'}" in text
    assert (state / "cert.pem").read_text() == "junk"


def test_busy_port_is_one_line_and_exit_1(tmp_path: Path, config: Path) -> None:
    """A port another socket holds ends start-up with exit 1 and one line naming the address
    and the cause, not trio's exception-group traceback."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        args = [f"--config={config}", "--address=127.0.0.1", f"--port={port}"]
        proc = Daemon(args, state=tmp_path, env=base_env())
        assert proc.proc.wait(timeout=20) == 1
    proc.stop()
    assert "Traceback" not in "".join(proc.lines)
    # Everything else on stderr is a JSON log line of the start-up (keypair, kubeconfig).
    plain = [line for line in proc.lines if not line.startswith("{")]
    assert plain == [f"cannot listen on 127.0.0.1:{port}: Address already in use\n"]


def test_reviews_are_answered_while_nobody_reads_stderr(tmp_path: Path, config: Path) -> None:
    """With stderr a pipe that nobody reads, the daemon keeps answering reviews (far more log
    lines than the pipe holds) and counts the lines it had to drop."""
    import ssl
    import time

    import httpx

    from tests.daemon import free_port

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "authd",
            "server",
            f"--config={config}",
            f"--port={port}",
            f"--state-dir={tmp_path / 'state'}",
            f"--generate-kubeconfig={tmp_path / 'kubeconfig.yaml'}",
        ],
        env=base_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,  # never read
    )
    try:
        cert = tmp_path / "state" / "cert.pem"
        deadline = time.monotonic() + 20
        while not cert.exists() or not _answers(port, cert):
            assert proc.poll() is None, "daemon exited"
            assert time.monotonic() < deadline, "daemon never answered /healthz"
            time.sleep(0.05)
        context = ssl.create_default_context(cafile=str(cert))
        body = review("k8s-aws-v1.bm90LWEtdXJs")
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=context, timeout=10) as c:
            for _ in range(2000):  # ~2,000 review lines: far past a 64 KiB pipe and the queue
                answer = c.post("/authenticate", json=body)
                assert answer.status_code == 200
                assert answer.json()["status"]["authenticated"] is False
            metrics = c.get("/metrics").text
        dropped = [
            float(line.split()[1])
            for line in metrics.splitlines()
            if line.startswith("authd_log_lines_dropped_total ")
        ]
        assert dropped and dropped[0] > 0
    finally:
        proc.kill()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def _answers(port: int, cert: Path) -> bool:
    """Whether the daemon on `port` answers /healthz over TLS yet."""
    import ssl

    import httpx

    try:
        context = ssl.create_default_context(cafile=str(cert))
        return httpx.get(f"https://127.0.0.1:{port}/healthz", verify=context).status_code == 200
    except (httpx.HTTPError, ssl.SSLError, OSError):
        return False


def test_loose_prewritten_key_is_warned_about_and_counted(tmp_path: Path, config: Path) -> None:
    """A pre-written key that others can read is used, named in a start-up warning that says
    how to fix it, and shown as authd_state_files_loose{file="key"} 1."""
    first = Daemon([f"--config={config}"], state=tmp_path, env=base_env())
    first.wait_for("listening")
    assert first.stop() == 0
    key = tmp_path / "state" / "key.pem"
    key.chmod(0o644)
    second = Daemon([f"--config={config}"], state=tmp_path, env=base_env())
    try:
        second.wait_for("listening")
        warned = [
            json.loads(line)["event"]
            for line in second.lines
            if line.startswith("{") and json.loads(line).get("level") == "warning"
        ]
        assert any(f"chmod 600 {key}" in text for text in warned)
        with second.client() as client:
            text = client.get("/metrics").text
        assert 'authd_state_files_loose{file="key"} 1.0' in text
        assert 'authd_state_files_loose{file="state_dir"} 0.0' in text
    finally:
        second.stop()


def test_health_address_serves_probes_and_metrics_never_reviews(
    tmp_path: Path, config: Path
) -> None:
    """The plain-HTTP listener answers /healthz, /readyz and /metrics (what kubelet and a scraper
    on another node need) and 404s TokenReviews, which stay on the TLS webhook port."""
    port = free_port()
    proc = Daemon(
        [f"--config={config}", f"--health-address=127.0.0.1:{port}", "--max-header-bytes=4096"],
        state=tmp_path,
        env=base_env(),
    )
    try:
        proc.wait_for("listening")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as plain:
            # The webhook's limits hold here too (this port may face other nodes).
            oversized = plain.get("/healthz", headers={"x-big": "b" * 5000})
            assert oversized.status_code == 431
            assert (plain.get("/healthz").status_code, plain.get("/healthz").text) == (200, "ok")
            assert plain.get("/readyz").status_code == 200
            metrics = plain.get("/metrics")
            assert metrics.status_code == 200
            assert "authd_serving_certificate_expiry_timestamp_seconds" in metrics.text
            refused = plain.post("/authenticate", json=review("k8s-aws-v1.x"))
            assert refused.status_code == 404
        with proc.client() as tls:
            assert tls.post("/authenticate", json=review("k8s-aws-v1.x")).status_code == 200
    finally:
        assert proc.stop() == 0
