"""Reload storm: 1,000 reloads of the config file and the DynamicFile under review load, every
tenth version broken in one of several ways, against the real daemon process.

Two loopback STS stand-ins (bench/reload.py's, one per identity) name two IAM users: `config`
(mapped by the `--config` file, MountedFile) and `dynamic` (mapped by the DynamicFile only).
Version v of either file maps its user to username `u<v>` in group `g<v>`; version numbers are
unique across both files. Reviewer threads send TokenReviews for both users without pause, one
in `NEW_TOKEN_EVERY` with a token never sent before (an STS call), the others with a token the
daemon has cached. A review is failed when it gets no answer, not 200 or not allowed, and wrong
when its username and group disagree or name a version of that user's file that was never good.

Each reload writes one file and waits until the daemon has judged it: a good version must be
logged as reloaded with its own sha256 (`configuration reloaded` / `dynamic file reloaded`),
a broken one as refused (`reload failed; keeping the last good mapping`, naming the file). At
the end each refusal must have been counted once in `authd_backend_reload_errors_total` and
`authd_reloads_total{result="error"}` (docs/reload.md), and logged exactly once.

The breakages (docs/RELIABILITY.md says why each is faithful):

- `bad YAML`: the config file with an unterminated flow sequence;
- `truncated JSON`: the DynamicFile cut in half;
- `directory`: a directory swapped in for the file (renameat2 RENAME_EXCHANGE, so the file is
  never missing for a moment);
- `permission`: a new version written with mode 000 and renamed over the file. root reads any
  file, so when run as root the daemon starts without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH
  (`setpriv --bounding-set`): uid 0 still, but the kernel applies the mode bits as for any user;
- `FIFO`: a named pipe renamed over the file.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from authd.client.presign import AwsCredentials, Endpoint, make_token
from bench import report
from bench.reload import LogWatch, _Sts, free_port, judge, pct, save, sts_stand_in

SECTION = "reload-storm"
DESCRIPTION = "1,000 reloads of config and DynamicFile under review load, every tenth broken"
DOCS = {
    report.BENCHMARKS: "## Reload storm: 1,000 reloads, every tenth broken, under review load\n\n",
    report.BENCHMARKS.parent / "RELIABILITY.md": "",  # under its "## Reload under load"
}
RELOADS = 1000
REVIEW_THREADS = 2  # per user
NEW_TOKEN_EVERY = 5
ACCOUNT = "123456789012"
ARNS = {
    "config": f"arn:aws:iam::{ACCOUNT}:user/storm-config",
    "dynamic": f"arn:aws:iam::{ACCOUNT}:user/storm-dynamic",
}
REFUSED = "reload failed; keeping the last good mapping"
APPLIED = {"config": "configuration reloaded", "dynamic": "dynamic file reloaded"}
BACKEND = {"config": "MountedFile", "dynamic": "DynamicFile"}
SOURCE = {"config": "config", "dynamic": "DynamicFile"}
BREAKAGES = ("bad YAML", "truncated JSON", "directory", "permission", "FIFO")
DROP_DAC = "-dac_override,-dac_read_search"


def config_bytes(version: int) -> bytes:
    """Config version `version`: the config user is `u<version>` in group `g<version>`."""
    return (
        "clusterID: bench\nserver:\n  mapUsers:\n"
        f"  - userarn: {ARNS['config']}\n    username: u{version}\n    groups: [g{version}]\n"
    ).encode()


def dynamic_bytes(version: int) -> bytes:
    """DynamicFile version `version`: the dynamic user is `u<version>` in `g<version>`."""
    user = {"userarn": ARNS["dynamic"], "username": f"u{version}", "groups": [f"g{version}"]}
    doc = {
        "Version": "1",
        "LastUpdatedDateTime": str(int(time.time())),
        "mapRoles": [],
        "mapUsers": [user],
        "mapAccounts": [],
    }
    return json.dumps(doc, indent=1).encode()


RENDER = {"config": config_bytes, "dynamic": dynamic_bytes}


def daemon_prefix() -> list[str]:
    """What to run the daemon under so that a mode-000 file is unreadable to it.

    Empty when not root. As root: `setpriv` dropping CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH
    from the bounding set (and inheritable set), so the daemon is uid 0 without the
    capabilities that let root ignore file modes.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise RuntimeError("running as root needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
    return [setpriv, "--bounding-set", DROP_DAC, "--inh-caps", DROP_DAC, "--"]


def prefix_works(prefix: list[str], probe_dir: Path) -> bool:
    """True when a process run under `prefix` cannot read a mode-000 file."""
    probe = probe_dir / ".mode000-probe"
    probe.write_bytes(b"x")
    probe.chmod(0)
    try:
        done = subprocess.run(
            [*prefix, sys.executable, "-c", f"open({str(probe)!r}).read()"],
            capture_output=True,
            check=False,
        )
    except OSError:
        return False
    finally:
        probe.unlink()
    return done.returncode != 0 and b"PermissionError" in done.stderr


def exchange(a: Path, b: Path) -> bool:
    """Swap two names atomically (Linux renameat2 RENAME_EXCHANGE); False when unsupported."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return bool(renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0)


def put(path: Path, data: bytes) -> None:
    """Write a good version at `path` with no moment where nothing is there.

    A rename replaces a file, a mode-000 file or a FIFO at once; a directory left by a breakage
    is swapped out by `exchange`, so the DynamicFile never looks deleted (which would clear its
    mappings, docs/reload.md).
    """
    if not (path.is_dir() and not path.is_symlink()):
        save(path, data)
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    if exchange(tmp, path):
        tmp.rmdir()  # the directory, now under the temporary name
    else:
        path.rmdir()
        os.replace(tmp, path)


def break_file(path: Path, kind: str, data: bytes) -> None:
    """Put a broken version of kind `kind` at `path` (holding a good one); `data` is a good
    version to spoil. Each is one atomic step, as `put`."""
    tmp = path.with_name(f".{path.name}.tmp")
    if kind in ("bad YAML", "truncated JSON"):
        spoiled = b"clusterID: bench\nserver:\n  mapUsers: [\n" if kind == "bad YAML" else data
        save(path, spoiled[: len(spoiled) // 2] if kind == "truncated JSON" else spoiled)
    elif kind == "permission":
        tmp.write_bytes(data)
        tmp.chmod(0)
        os.replace(tmp, path)
    elif kind == "directory":
        tmp.mkdir()
        if exchange(tmp, path):
            tmp.unlink()  # the file, now under the temporary name
        else:
            tmp.rmdir()
            path.unlink()
            path.mkdir()
    elif kind == "FIFO":
        os.mkfifo(tmp)
        os.replace(tmp, path)
    else:
        raise ValueError(f"unknown breakage {kind!r}")


def file_for(kind: str, occurrence: int) -> str:
    """Which file a breakage hits: YAML the config, JSON the DynamicFile, others alternate."""
    if kind == "bad YAML":
        return "config"
    if kind == "truncated JSON":
        return "dynamic"
    return "config" if occurrence % 2 == 0 else "dynamic"


@dataclass
class Tally:
    """Everything a storm counted."""

    reloads: int = 0
    applied: Counter[str] = field(default_factory=Counter)
    broken: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, file)
    errors: dict[tuple[str, str], str] = field(default_factory=dict)  # first logged error
    judged: list[float] = field(default_factory=list)  # seconds from write to logged outcome
    reviews: int = 0
    new_tokens: int = 0
    failed: int = 0
    wrong: int = 0
    examples: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def broken_in(self, file: str) -> int:
        """Broken versions written to `file`."""
        return sum(n for (_, f), n in self.broken.items() if f == file)


class Storm:
    """Writes versions of both files and checks each outcome in the daemon's log lines."""

    def __init__(self, paths: dict[str, Path], lines: list[str], kinds: tuple[str, ...]) -> None:
        self.paths = paths
        self.lines = lines  # appended to by a reader thread
        self.kinds = kinds
        self.tally = Tally()
        self.good: dict[str, set[int]] = {"config": {1}, "dynamic": {2}}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self._next_file = "config"

    def write_initial(self) -> None:
        """Version 1 of the config, version 2 of the DynamicFile."""
        self.paths["config"].write_bytes(config_bytes(1))
        self.paths["dynamic"].write_bytes(dynamic_bytes(2))

    def reload(self, k: int, *, timeout: float = 30.0) -> None:
        """Reload number `k` (from 1): every tenth broken; wait until the daemon judged it."""
        version = k + 2
        mark = len(self.lines)
        begin = time.monotonic()
        if k % 10 == 0:
            occurrence = k // 10 - 1
            kind = self.kinds[occurrence % len(self.kinds)]
            file = file_for(kind, occurrence // len(self.kinds))
            break_file(self.paths[file], kind, RENDER[file](version))
            line = self._wait(mark, REFUSED, file, None, timeout)
            self.tally.broken[kind, file] += 1
            self.tally.errors.setdefault((kind, file), str(line.get("error")))
            self._next_file = file  # the next good version repairs it
        else:
            file = self._next_file
            data = RENDER[file](version)
            with self.lock:
                self.good[file].add(version)
            put(self.paths[file], data)
            self._wait(mark, APPLIED[file], file, hashlib.sha256(data).hexdigest()[:12], timeout)
            self.tally.applied[file] += 1
            self._next_file = "dynamic" if file == "config" else "config"
        self.tally.judged.append(time.monotonic() - begin)
        self.tally.reloads += 1

    def _wait(
        self, mark: int, event: str, file: str, sha: str | None, timeout: float
    ) -> dict[str, object]:
        """The first log line after `mark` with `event` for `file` (and `sha256`), or raise.

        Any other reload outcome on the way is an error: a version judged twice, or wrongly.
        """
        deadline = time.monotonic() + timeout
        seen = mark
        while time.monotonic() < deadline:
            while seen < len(self.lines):
                doc = _event(self.lines[seen])
                seen += 1
                name = doc.get("event")
                if name not in (REFUSED, *APPLIED.values()):
                    continue
                same_file = doc.get("file") == str(self.paths[file])
                if name == event and same_file and sha in (None, doc.get("sha256")):
                    return doc
                raise AssertionError(f"expected {event} of {file} ({sha}), got {doc}")
            time.sleep(0.005)
        tail = "".join(self.lines[-10:])
        raise AssertionError(f"no {event!r} for {file} within {timeout}s:\n{tail}")

    def review_loop(self, file: str, client: httpx.Client, new_token: Callable[[], str]) -> None:
        """Review `file`'s user until stopped; one token in NEW_TOKEN_EVERY is new."""
        token, sent = "", 0
        while not self.stop.is_set():
            if sent % NEW_TOKEN_EVERY == 0:
                token = new_token()
            sent += 1
            verdict = judge(client, token, self.good[file])
            with self.lock:
                self.tally.reviews += 1
                self.tally.new_tokens += sent % NEW_TOKEN_EVERY == 1
                if verdict == "failed":
                    self.tally.failed += 1
                elif verdict != "ok":
                    self.tally.wrong += 1
                if verdict != "ok" and len(self.tally.examples) < 5:
                    self.tally.examples.append(f"{file}: {verdict}")

    def logged_refusals(self) -> int:
        """`reload failed` lines in the whole log."""
        return sum(1 for line in list(self.lines) if _event(line).get("event") == REFUSED)


def _event(line: str) -> dict[str, object]:
    try:
        doc = json.loads(line)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def reload_counters(text: str) -> dict[str, float]:
    """The reload counters of a /metrics page, keyed `name{labels}` with labels sorted."""
    wanted = (
        "authd_backend_reload_errors_total{",
        "authd_reloads_total{",
        "authd_backend_reloads_total{",
    )
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(wanted):
            series, value = line.rsplit(" ", 1)
            name, labels = series.split("{", 1)
            ordered = ",".join(sorted(labels.rstrip("}").split(",")))
            found[f"{name}{{{ordered}}}"] = float(value)
    return found


def expected_counts(tally: Tally) -> dict[str, float]:
    """What each reload counter must have grown by during the storm."""
    out: dict[str, float] = {}
    for file in ("config", "dynamic"):
        backend, source = BACKEND[file], SOURCE[file]
        out[f'authd_backend_reload_errors_total{{backend="{backend}"}}'] = tally.broken_in(file)
        out[f'authd_backend_reloads_total{{backend="{backend}"}}'] = tally.applied[file]
        out[f'authd_reloads_total{{result="error",source="{source}"}}'] = tally.broken_in(file)
        out[f'authd_reloads_total{{result="ok",source="{source}"}}'] = tally.applied[file]
    return out


def growth(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """`after - before` for every series in `after`."""
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


# --------------------------------------------------------------------------------------------
# The bench.


class _StsDynamic(_Sts):
    """bench/reload.py's stand-in, naming the DynamicFile's user."""

    body = json.dumps(
        {
            "GetCallerIdentityResponse": {
                "GetCallerIdentityResult": {
                    "Arn": ARNS["dynamic"],
                    "Account": ACCOUNT,
                    "UserId": "AIDADYNAMIC",
                }
            }
        }
    ).encode()


class _StsConfig(_Sts):
    """bench/reload.py's stand-in, naming the config file's user."""

    body = _StsDynamic.body.replace(b"storm-dynamic", b"storm-config").replace(b"DYNAMIC", b"CONF")


@contextlib.contextmanager
def running_daemon(
    work: Path, sts_ports: dict[str, int], *, env: dict[str, str] | None = None
) -> Iterator[tuple[int, LogWatch]]:
    """The daemon over `work`'s files (under `daemon_prefix()`); (port, its log lines).

    `env` defaults to this process's environment with a region and no instance metadata.
    """
    port = free_port()
    argv = [
        *daemon_prefix(), sys.executable, "-m", "authd", "server",
        f"--config={work / 'config.yaml'}", f"--port={port}",
        "--backend-mode=MountedFile,DynamicFile", f"--dynamicfile-path={work / 'dynamic.json'}",
        f"--state-dir={work / 'state'}", f"--generate-kubeconfig={work / 'kubeconfig.yaml'}",
        *(f"--extra-sts-endpoint=http://127.0.0.1:{p}" for p in sts_ports.values()),
        # The reloads are under test here, not authd's STS protection: no rate limit.
        "--sts-qps=1000000", "--sts-burst=1000000",
    ]  # fmt: skip
    if env is None:
        env = {**os.environ, "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    logs = LogWatch(proc.stderr)
    try:
        logs.wait("listening", 1)
        yield port, logs
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()  # never leave a wedged daemon behind
            proc.wait()
            raise
        finally:
            logs.close()


def storm(work: Path, reloads: int) -> tuple[Tally, dict[str, float], dict[str, float], int]:
    """Run the storm; (tally, counter growth, expected growth, refusals logged)."""
    paths = {"config": work / "config.yaml", "dynamic": work / "dynamic.json"}
    if not prefix_works(daemon_prefix(), work):
        raise RuntimeError("cannot make a mode-000 file unreadable to the daemon here")
    with (
        sts_stand_in(_StsConfig) as config_sts,
        sts_stand_in(_StsDynamic) as dynamic_sts,
    ):
        ports = {"config": config_sts, "dynamic": dynamic_sts}
        lines: list[str] = []
        run = Storm(paths, lines, BREAKAGES)
        run.write_initial()
        with running_daemon(work, ports) as (port, logs):
            run.lines = logs.lines
            context = ssl.create_default_context(cafile=str(work / "state" / "cert.pem"))
            base = f"https://127.0.0.1:{port}"
            with httpx.Client(base_url=base, verify=context, timeout=10) as client:
                before = reload_counters(client.get("/metrics").text)
                threads = [
                    threading.Thread(
                        target=_reviewer,
                        args=(run, file, httpx.Client(base_url=base, verify=context, timeout=10)),
                        kwargs={"sts": f"http://127.0.0.1:{sts_port}"},
                    )
                    for file, sts_port in ports.items()
                    for _ in range(REVIEW_THREADS)
                ]
                for thread in threads:
                    thread.start()
                start = time.monotonic()
                try:
                    for k in range(1, reloads + 1):
                        run.reload(k)
                finally:
                    run.tally.seconds = time.monotonic() - start
                    run.stop.set()
                    for thread in threads:
                        thread.join(timeout=30)
                after = reload_counters(client.get("/metrics").text)
            refusals = run.logged_refusals()
    return run.tally, growth(before, after), expected_counts(run.tally), refusals


def _reviewer(run: Storm, file: str, client: httpx.Client, *, sts: str) -> None:
    """One reviewer thread of the bench: make_token for the stand-in naming `file`'s user."""
    endpoint = Endpoint(url=sts, signing_region="us-east-1")

    key = "AKIASTORMCONFIG00000" if file == "config" else "AKIASTORMDYNAMIC0000"

    def new_token() -> str:
        # One access key per user, as a real client; a random secret makes each token new.
        creds = AwsCredentials(access_key_id=key, secret_access_key=os.urandom(20).hex())
        return make_token(creds, cluster_id="bench", endpoint=endpoint).token

    with client:
        run.review_loop(file, client, new_token)


def run(*, runs: int) -> str:
    """Storm once (`runs` is unused); return the Markdown."""
    del runs
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="authd-bench-storm-") as tmp:
        tally, grew, expected, refusals = storm(Path(tmp), RELOADS)
    return render(tally, grew, expected, refusals, load=load)


def render(
    t: Tally, grew: dict[str, float], expected: dict[str, float], refusals: int, *, load: float
) -> str:
    """The Markdown section."""
    counted = all(grew.get(key, 0.0) == value for key, value in expected.items())
    broken = sum(t.broken.values())
    ok = t.failed == 0 and t.wrong == 0 and counted and refusals == broken
    lines = [
        f"- Date: {report.now()}",
        f"- Machine: {report.machine()}; 1-minute load average before the run: {load:.2f} "
        "(other work on the machine shows in the timings only)",
        "- Command: `python -m bench reload-storm` (real daemon process, real inotify, "
        "production timings; as root the daemon runs under `setpriv --bounding-set "
        f"{DROP_DAC}` so a mode-000 file is unreadable to it)",
        f"- {t.reloads:,} reloads in {t.seconds:.1f} s: {sum(t.applied.values())} good versions "
        f"(config {t.applied['config']}, DynamicFile {t.applied['dynamic']}), each logged "
        f"as applied with its own sha256; {broken} broken, each refused with one log line "
        f"({refusals} `{REFUSED}` lines in the whole log).",
        f"- Write to logged outcome: median {statistics.median(t.judged) * 1000:.1f} ms, "
        f"p99 {pct(t.judged, 99) * 1000:.1f} ms, max {max(t.judged) * 1000:.1f} ms.",
        f"- Reviews meanwhile ({2 * REVIEW_THREADS} threads, both users, one token in "
        f"{NEW_TOKEN_EVERY} new): {t.reviews:,} reviews ({t.new_tokens:,} with a new token), "
        f"{t.failed} failed, {t.wrong} wrong.",
        f"- Target zero failed or wrong reviews, every good version applied, every broken one "
        f"counted and logged once: **{'met' if ok else 'MISSED'}**.",
        "",
        "| Breakage | file | versions | logged error (first of its kind) |",
        "|---|---|---:|---|",
    ]
    for (kind, file), count in sorted(t.broken.items()):
        error = t.errors.get((kind, file), "").replace("|", "\\|")
        lines.append(f"| {kind} | {file} | {count} | `{error[:140]}` |")
    lines += ["", "| Counter | grew by | expected |", "|---|---:|---:|"]
    for key, value in expected.items():
        lines.append(f"| `{key}` | {grew.get(key, 0.0):g} | {value:g} |")
    lines += [f"  - {example}" for example in t.examples]
    return "\n".join(lines) + "\n"
