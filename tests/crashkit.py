"""Kill `authd` with SIGKILL at random points while it writes, and check what it leaves.

Used by tests/test_crash_safety.py (a few dozen rounds) and bench/crash.py (200 rounds); what
it checks is in docs/RELIABILITY.md ("Crash safety").

Each round is a real `authd` process: a fork server (one Python process that has already
imported authd, single-threaded, so forking it is safe) forks a child that runs the command
line `authd ARGS` exactly as the console script does (`authd.cli.main`), sleeps a random delay
and sends the child SIGKILL. Forking a warm process instead of starting Python each time puts
the kill inside the writes instead of inside the imports: the delay is drawn uniformly over
the calibrated time a child takes from fork to exit, which is almost all writing (key
generation, the three files, the fsyncs; or signing and storing a token).

Two kinds of round:

- `state`: `authd init` in an empty directory (the writes of `authd server`'s first start:
  the same `write_state`, authd/server/daemon.py). Then the next start (`authd init` again, run
  to the end) must exit 0 and leave a whole certificate and key that match each other and a
  kubeconfig whose certificate-authority-data is that certificate.
- `token`: `authd token --cache` after the AWS config file changed (so the cached token is
  stale and a new one is written over it). The cache file must then be absent, the old file or
  a whole new one, never anything else, and the next `authd token --cache` must exit 0, print a
  token and warn about nothing.
"""

from __future__ import annotations

import base64
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_SERVER = r"""
import json, os, signal, socket, sys, time
import authd.cli, authd.cli.init, authd.cli.token, authd.server.daemon
import authd.client.presign, authd.client.tokencache, botocore.session, botocore.auth

def child(job, out, err):
    os.chdir(job["cwd"])
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.environ.clear()
    os.environ.update(job["env"])
    try:
        code = authd.cli.main(job["argv"], dict(job["env"]))
    except BaseException:
        code = 99
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

for line in sys.stdin:
    job = json.loads(line)
    out = os.open(job["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err = os.open(job["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        child(job, out, err)
    os.close(out)
    os.close(err)
    killed = False
    first = None
    status = None
    if job["watch"] is not None:
        # Note when the first new directory entry (a temporary file) appears: the writes begin.
        # With "kill_after", SIGKILL that long after it.
        def listing():
            try:
                return {(e.name, e.inode()) for e in os.scandir(job["watch"])}
            except OSError:
                return set()
        initial = listing()
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                if first is None and listing() - initial:
                    first = time.monotonic() - start  # between the last poll and now
                break
            if first is None and listing() - initial:
                first = time.monotonic() - start
                if job["kill_after"] is not None:
                    time.sleep(job["kill_after"])
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done == 0:
                        os.kill(pid, signal.SIGKILL)
                        killed = True
                        status = os.waitpid(pid, 0)[1]
                    break
            time.sleep(0.0001)
    elif job["until_port"] is not None:
        # A server: wait until it accepts on its port (or exits, or the timeout), then SIGTERM.
        done = 0
        while time.monotonic() - start < job["until_timeout"]:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            try:
                socket.create_connection(("127.0.0.1", job["until_port"]), timeout=0.5).close()
                first = time.monotonic() - start
                break
            except OSError:
                time.sleep(0.01)
        if not done:
            os.kill(pid, signal.SIGTERM)
            status = os.waitpid(pid, 0)[1]
    elif job["kill_after"] is None:
        status = os.waitpid(pid, 0)[1]
    else:
        time.sleep(job["kill_after"])
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == 0:  # still running
            os.kill(pid, signal.SIGKILL)
            killed = True
            status = os.waitpid(pid, 0)[1]
    elapsed = time.monotonic() - start
    print(json.dumps({"killed": killed, "code": os.waitstatus_to_exitcode(status),
                      "elapsed": elapsed, "first": first}), flush=True)
"""


class ForkServer:
    """The warm `authd` process that forks one child per round (see the module docstring)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        kill_after: float | None = None,
        watch: Path | None = None,
        until_port: int | None = None,
        until_timeout: float = 30.0,
    ) -> Child:
        """Run `authd ARGV` in `cwd`; SIGKILL it after `kill_after` seconds if still running.

        With `watch`, `Child.first_write` is when the first new entry appeared in that directory
        (the writes began), and `kill_after` counts from then instead of from the fork. With
        `until_port` (a server), the child gets SIGTERM once it accepts connections on that
        port (`Child.first_write` is then when it did) or after `until_timeout` seconds.
        """
        assert self.proc.stdin is not None and self.proc.stdout is not None
        out, err = cwd.parent / f".{cwd.name}.out", cwd.parent / f".{cwd.name}.err"
        job = {
            "argv": list(argv),
            "cwd": str(cwd),
            "env": dict(env),
            "out": str(out),
            "err": str(err),
            "kill_after": kill_after,
            "watch": None if watch is None else str(watch),
            "until_port": until_port,
            "until_timeout": until_timeout,
        }
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server exited {self.proc.wait()}")
        answer = json.loads(line)
        return Child(
            killed=answer["killed"],
            code=answer["code"],
            elapsed=answer["elapsed"],
            first_write=answer["first"],
            stdout=out.read_text(errors="replace"),
            stderr=err.read_text(errors="replace"),
        )

    def close(self) -> None:
        """Stop the fork server."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass(frozen=True, slots=True)
class Child:
    """How one forked `authd` ended."""

    killed: bool
    code: int
    elapsed: float
    first_write: float | None
    stdout: str
    stderr: str


@dataclass(slots=True)
class Tally:
    """What the rounds of one kind saw."""

    rounds: int = 0
    killed: int = 0
    window: tuple[float, float] = (0.0, 0.0)
    left: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    temp_files: int = 0

    def summary(self) -> dict[str, Any]:
        """The figures, for a report."""
        return {
            "rounds": self.rounds,
            "killed": self.killed,
            "window_ms": [round(t * 1000, 1) for t in self.window],
            "left": dict(sorted(self.left.items())),
            "failures": len(self.failures),
            "temp_files": self.temp_files,
        }


def calibrate(server: ForkServer, make: Any, runs: int = 5) -> tuple[float, float]:
    """The write window of an unkilled round: the median time from fork to the first new file
    in the watched directory, and to exit. `make()` gives argv, cwd, env and that directory."""
    firsts, ends = [], []
    for _ in range(runs):
        argv, cwd, env, watch = make()
        child = server.run(argv, cwd=cwd, env=env, watch=watch)
        if child.code != 0 or child.first_write is None:
            raise RuntimeError(f"calibration run failed ({child.code}): {child.stderr}")
        firsts.append(child.first_write)
        ends.append(child.elapsed)
    return statistics.median(firsts), statistics.median(ends)


# State rounds ---------------------------------------------------------------------------


def state_env(home: Path) -> dict[str, str]:
    """The environment of an `authd init` child: nothing from the caller's AWS or cluster."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}


STATE_ARGV = ("init", "-i", "crash-test")
KUBECONFIG = "aws-iam-authenticator.kubeconfig"


def calibrate_state(server: ForkServer, base: Path) -> tuple[float, float]:
    """The write window of `authd init` in an empty directory (see `calibrate`)."""
    home = base / "calibrate-home"
    home.mkdir(exist_ok=True)
    env = state_env(home)
    made = iter(range(10**9))

    def fresh() -> tuple[Sequence[str], Path, dict[str, str], Path]:
        cwd = base / f"calibrate-{next(made)}"
        while cwd.exists():
            cwd = base / f"calibrate-{next(made)}"
        cwd.mkdir()
        return STATE_ARGV, cwd, env, cwd

    return calibrate(server, fresh)


def state_rounds(server: ForkServer, base: Path, rounds: int, *, seed: int = 1) -> Tally:
    """`rounds` state rounds under `base` (see the module docstring)."""
    rng = random.Random(seed)  # noqa: S311  # kill points, not secrets
    home = base / "home"
    home.mkdir(exist_ok=True)
    env = state_env(home)
    tally = Tally(window=calibrate_state(server, base))
    for number in range(rounds):
        cwd = base / f"round-{number}"
        cwd.mkdir()
        child = server.run(STATE_ARGV, cwd=cwd, env=env, **kill_point(rng, tally.window, cwd))
        tally.rounds += 1
        tally.killed += child.killed
        tally.left[_state_left(cwd, cwd / KUBECONFIG)] += 1
        tally.temp_files += sum(1 for p in cwd.iterdir() if p.name.endswith(".tmp"))
        problem = check_state_files(cwd, cwd / KUBECONFIG, complete=False)
        if problem is None:
            after = server.run(STATE_ARGV, cwd=cwd, env=env)
            if after.code != 0:
                problem = f"next start exited {after.code}: {after.stderr.strip()[-300:]}"
            else:
                problem = check_state_files(cwd, cwd / KUBECONFIG, complete=True)
        if problem is not None:
            tally.failures.append(f"round {number} (killed={child.killed}): {problem}")
    return tally


def server_rounds(
    server: ForkServer, base: Path, rounds: int, *, window: tuple[float, float], seed: int = 3
) -> Tally:
    """`authd server`'s first start killed during its writes (`window`: the state rounds'
    calibration, the same `write_state`); then the next `authd server` start must accept
    connections and exit 0 on SIGTERM, and the files must be whole and consistent."""
    rng = random.Random(seed)  # noqa: S311  # kill points, not secrets
    home = base / "server-home"
    home.mkdir()
    env = {**state_env(home), "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    tally = Tally(window=window)
    first, end = window
    for number in range(rounds):
        cwd = base / f"server-{number}"
        cwd.mkdir()
        state, kube = cwd / "state", cwd / "kubeconfig.yaml"
        port = _free_port()
        argv = (
            "server",
            "-i",
            "crash-test",
            f"--state-dir={state}",
            f"--generate-kubeconfig={kube}",
            f"--port={port}",
        )
        offset = rng.uniform(0, (end - first) * 1.2)
        child = server.run(argv, cwd=cwd, env=env, kill_after=offset, watch=state)
        tally.rounds += 1
        tally.killed += child.killed
        tally.left[_state_left(state, kube)] += 1
        tally.temp_files += sum(1 for p in state.iterdir() if p.name.endswith(".tmp"))
        problem = check_state_files(state, kube, complete=False)
        if problem is None:
            after = server.run(argv, cwd=cwd, env=env, until_port=port)
            if after.first_write is None:
                problem = f"next start never accepted: {after.stderr.strip()[-300:]}"
            elif after.code != 0:
                problem = f"next start exited {after.code}: {after.stderr.strip()[-300:]}"
            else:
                problem = check_state_files(state, kube, complete=True)
        if problem is not None:
            tally.failures.append(f"round {number} (killed={child.killed}): {problem}")
    return tally


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _state_left(state: Path, kube: Path) -> str:
    """Which of the three files the killed child left: e.g. `key`, `cert+key+kubeconfig`."""
    files = (("cert", state / "cert.pem"), ("key", state / "key.pem"), ("kubeconfig", kube))
    return "+".join(name for name, path in files if path.exists()) or "nothing"


def check_state_files(state: Path, kube_path: Path, *, complete: bool) -> str | None:
    """None when the cert and key in `state` and the kubeconfig `kube_path` are usable; else
    what is wrong.

    Whatever is present must be whole: a certificate and key present together match; a
    kubeconfig present is YAML. With `complete`, all three must be present and the kubeconfig's
    CA data must be the certificate.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert_path, key_path = state / "cert.pem", state / "key.pem"
    if complete and not (cert_path.exists() and key_path.exists() and kube_path.exists()):
        return f"missing files after the next start: {sorted(p.name for p in state.iterdir())}"
    cert_pem = cert_path.read_bytes() if cert_path.exists() else None
    if cert_pem is not None and key_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except ValueError as exc:
            return f"a torn certificate or key: {exc}"
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        if cert.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
            return "certificate and key do not match"
    if kube_path.exists():
        try:
            doc = yaml.safe_load(kube_path.read_text())
            ca = doc["clusters"][0]["cluster"]["certificate-authority-data"]
        except (ValueError, yaml.YAMLError, KeyError, IndexError, TypeError) as exc:
            return f"a torn kubeconfig: {exc!r}"
        if complete and base64.b64decode(ca) != cert_pem:
            return "the kubeconfig's CA data is not the certificate"
    return None


def kill_point(rng: random.Random, window: tuple[float, float], watch: Path) -> dict[str, Any]:
    """Where to kill a round: mostly (4 in 5) uniformly over the writes themselves, counted from
    the moment the first temporary file appears, to a little past their calibrated length;
    otherwise uniformly over the whole run from the fork (the key generation or signing before
    the writes, and the imports' tail)."""
    first, end = window
    if rng.random() < 0.8:
        return {"kill_after": rng.uniform(0, (end - first) * 1.2), "watch": watch}
    return {"kill_after": rng.uniform(0, end * 1.05)}


# Token rounds ---------------------------------------------------------------------------

TOKEN_ARGV = ("token", "-i", "crash-test", "--cache")


def token_env(home: Path) -> dict[str, str]:
    """A client environment with static keys (signing needs no network)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def token_dir(home: Path) -> Path:
    """The token cache directory."""
    return home / ".kube" / "cache" / "aws-iam-authenticator" / "tokens"


def token_files(home: Path) -> list[Path]:
    """The token cache's files (temporary ones included)."""
    directory = token_dir(home)
    return sorted(directory.iterdir()) if directory.exists() else []


def _stale(home: Path, number: int) -> None:
    """Change the AWS config file so the cached token no longer counts: the next run writes."""
    config = home / ".aws" / "config"
    config.parent.mkdir(exist_ok=True)
    config.write_text(f"[default]\n# round {number}\n")
    os.utime(config, ns=(number * 10**9, number * 10**9))


def token_rounds(server: ForkServer, base: Path, rounds: int, *, seed: int = 2) -> Tally:
    """`rounds` token rounds in one HOME under `base` (see the module docstring)."""
    rng = random.Random(seed)  # noqa: S311  # kill points, not secrets
    home = base / "token-home"
    home.mkdir()
    env = token_env(home)
    counter = iter(range(1, 10**9))

    def stale() -> tuple[Sequence[str], Path, dict[str, str], Path]:
        _stale(home, next(counter))
        return TOKEN_ARGV, home, env, token_dir(home)

    tally = Tally(window=calibrate(server, stale))
    for number in range(rounds):
        _stale(home, next(counter))
        before = {p.name: p.read_bytes() for p in token_files(home) if not p.name.startswith(".")}
        child = server.run(
            TOKEN_ARGV, cwd=home, env=env, **kill_point(rng, tally.window, token_dir(home))
        )
        tally.rounds += 1
        tally.killed += child.killed
        after = {p.name: p.read_bytes() for p in token_files(home) if not p.name.startswith(".")}
        tally.temp_files = sum(1 for p in token_files(home) if p.name.startswith("."))
        problem = None
        for name, data in after.items():
            if before.get(name) == data:
                tally.left["old"] += 1
            elif _whole_token_file(data):
                tally.left["new"] += 1
            else:
                problem = f"cache file {name} is neither the old one nor a whole new one"
        if not after:
            tally.left["absent"] += 1
        if problem is None:
            next_run = server.run(TOKEN_ARGV, cwd=home, env=env)
            if next_run.code != 0:
                problem = f"next run exited {next_run.code}: {next_run.stderr.strip()[-300:]}"
            elif next_run.stderr.strip():
                problem = f"next run warned: {next_run.stderr.strip()[-300:]}"
            elif not json.loads(next_run.stdout)["status"]["token"].startswith("k8s-aws-v1."):
                problem = "next run printed no token"
        if problem is not None:
            tally.failures.append(f"round {number} (killed={child.killed}): {problem}")
    return tally


def _whole_token_file(data: bytes) -> bool:
    """True for a complete token cache document."""
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    return isinstance(doc, dict) and str(doc.get("token", "")).startswith("k8s-aws-v1.")


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """`fn(*args, **kwargs)` and the seconds it took."""
    start = time.monotonic()
    result = fn(*args, **kwargs)
    return result, time.monotonic() - start
