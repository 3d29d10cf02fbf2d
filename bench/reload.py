"""Hot reload: change-to-applied latency, big files, lookups, memory, and 1,000 live reloads.

In-process parts use the real `Backends` with real inotify on a temporary directory and the
production timings (50 ms debounce): a file is replaced by write-then-rename and the clock stops
when the reloader has swapped the new table in. The big-file figures time what one reload does
besides waiting: parse and validate (worker thread), then the swap. Lookups are timed one call at
a time on a 100,000-entry table. Memory is what tracemalloc sees retained by a 100,000-entry
snapshot.

The live part starts the real daemon process with a loopback STS stand-in (a thread here that
answers GetCallerIdentity at once), sends TokenReviews without pause from three threads, and
replaces the config 1,000 times (every tenth version broken). Version k maps the caller to
username `u<k>` and group `g<k>`; a review counts as wrong when it is not allowed, or its
username and group come from different versions, or from a version that was never good.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import structlog
import trio

from authd.client.presign import AwsCredentials, Endpoint, make_token
from authd.config import FileConfig, ServerSettings
from authd.identity import Identity
from authd.metrics import Metrics
from authd.server.backends import Backends
from bench import report

SECTION = "reload"
DESCRIPTION = "hot reload: change-to-applied latency, big files, lookups, memory, live reloads"
ACCOUNT = "123456789012"
BENCH_ARN = f"arn:aws:iam::{ACCOUNT}:user/bench"
LIVE_RELOADS = 1000
REVIEW_THREADS = 3
TARGETS = {
    "latency_p99_ms": 250.0,
    "dynamic_100k_s": 1.0,
    "mounted_10k_s": 1.0,
    "lookup_p99_us": 20.0,
}


# --------------------------------------------------------------------------------------------
# Files.


def mounted_yaml(entries: int, *, tag: str = "") -> str:
    """A config file with `entries` mappings, half roles and half users."""
    lines = ["clusterID: bench", "server:", "  mapRoles:"]
    for i in range(entries // 2):
        lines += [
            f"  - rolearn: arn:aws:iam::{i % 10**12:012d}:role/Role{i}",
            f"    username: role{i}{tag}",
            "    groups: [system:masters, dev]",
        ]
    lines.append("  mapUsers:")
    for i in range(entries - entries // 2):
        lines += [
            f"  - userarn: arn:aws:iam::{i % 10**12:012d}:user/User{i}",
            f"    username: user{i}{tag}",
            "    groups: [dev]",
        ]
    return "\n".join(lines) + "\n"


def dynamic_json(entries: int, *, tag: str = "") -> bytes:
    """A DynamicFile with `entries` mappings, half roles and half users."""
    roles = [
        {
            "rolearn": f"arn:aws:iam::{i % 10**12:012d}:role/Role{i}",
            "username": f"role{i}{tag}",
            "groups": ["system:masters", "dev"],
            "userid": f"AROA{i:016d}",
        }
        for i in range(entries // 2)
    ]
    users = [
        {
            "userarn": f"arn:aws:iam::{i % 10**12:012d}:user/User{i}",
            "username": f"user{i}{tag}",
            "groups": ["dev"],
            "userid": f"AIDA{i:016d}",
        }
        for i in range(entries - entries // 2)
    ]
    doc = {
        "Version": "1",
        "LastUpdatedDateTime": str(int(time.time())),
        "mapRoles": roles,
        "mapUsers": users,
        "mapAccounts": [],
    }
    return json.dumps(doc, indent=1).encode()


def role(i: int) -> Identity:
    """The identity of `Role<i>` as STS reports an assumed role."""
    account = f"{i % 10**12:012d}"
    return Identity(
        arn=f"arn:aws:sts::{account}:assumed-role/Role{i}/s",
        canonical_arn=f"arn:aws:iam::{account}:role/Role{i}",
        account_id=account,
        user_id=f"AROA{i:016d}:s",
        session_name="s",
        access_key_id="ASIABENCH",
    )


def save(path: Path, data: bytes) -> None:
    """Write-then-rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def backends_for(work: Path, *, config: str, dynamic: bytes | None) -> Backends:
    """Backends over a config file (and a DynamicFile when given), loaded as at start."""
    config_path = work / "config.yaml"
    config_path.write_text(config)
    flags: dict[str, object] = {}
    if dynamic is not None:
        dynamic_path = work / "mappings.json"
        dynamic_path.write_bytes(dynamic)
        flags = {"backend_mode": "MountedFile,DynamicFile", "dynamicfile_path": str(dynamic_path)}
    settings = ServerSettings.resolve(flags=flags, env={}, file=FileConfig.from_file(config_path))
    backends = Backends(settings, Metrics(process_collector=False))
    backends.load_all()
    return backends


def pct(samples: list[float], q: float) -> float:
    """The q-th percentile, nearest rank."""
    ordered = sorted(samples)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


# --------------------------------------------------------------------------------------------
# In-process measurements.


async def change_to_applied(work: Path, *, kind: str, entries: int, edits: int) -> list[float]:
    """Seconds from `os.replace` of a new version to its table serving, `edits` times."""
    is_dynamic = kind == "DynamicFile"
    backends = backends_for(
        work,
        config=mounted_yaml(entries) if not is_dynamic else mounted_yaml(2),
        dynamic=dynamic_json(entries) if is_dynamic else None,
    )
    path = Path(backends.settings.dynamicfile_path if is_dynamic else backends.settings.config_path)
    versions = [
        dynamic_json(entries, tag=f"-v{k}")
        if is_dynamic
        else mounted_yaml(entries, tag=f"-v{k}").encode()
        for k in range(edits)
    ]
    samples: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(backends.serve_reloads)
        reloader = backends.reloaders[-1]
        backend = backends.by_name[kind]
        for k, data in enumerate(versions):
            checks, before = reloader.checks, backend.table
            start = time.monotonic()
            save(path, data)
            with trio.fail_after(30):
                await reloader.wait_checked(checks + 1)
            samples.append(time.monotonic() - start)
            entry = backend.table.lookup(role(0)) if backend.table is not None else None
            if backend.table is before or entry is None or entry.username != f"role0-v{k}":
                raise AssertionError(f"{kind} edit {k} was not applied")
        nursery.cancel_scope.cancel()
    return samples


def parse_and_swap(backends: Backends, kind: str, data: bytes, runs: int) -> list[float]:
    """Seconds for what a reload does besides waiting: parse + validate, then the swap."""
    target: Any = backends.dynamic_target if kind == "DynamicFile" else backends.config_target
    from authd.server.reload import Change

    samples = []
    for k in range(runs):
        change = Change(path="bench", data=data, digest=str(k), event_at=None, trigger="event")
        start = time.perf_counter()
        parsed = target.parse(data)
        target.apply(parsed, change)
        samples.append(time.perf_counter() - start)
    return samples


async def lookups(backends: Backends, count: int) -> tuple[list[float], list[float]]:
    """Per-call seconds of `table.lookup` and of the whole `chain.map`, on a 100k table."""
    table = backends.by_name["DynamicFile"].table
    assert table is not None
    identities = [role((i * 7919) % 50_000) for i in range(count)]
    direct: list[float] = []
    clock = time.perf_counter_ns
    for identity in identities:
        start = clock()
        table.lookup(identity)
        direct.append((clock() - start) / 1e9)
    chained: list[float] = []
    for identity in identities:
        start = clock()
        await backends.chain.map(identity)
        chained.append((clock() - start) / 1e9)
    return direct, chained


def retained_mib(build: Callable[[], object]) -> tuple[float, float]:
    """(MiB retained by what `build` returns, MiB peak while building), per tracemalloc."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    kept = build()
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del kept
    return (current - base) / 2**20, (peak - base) / 2**20


@dataclass
class InProcess:
    """Every in-process figure."""

    latency: dict[str, list[float]] = field(default_factory=dict)
    dynamic_100k: list[float] = field(default_factory=list)
    mounted_10k: list[float] = field(default_factory=list)
    dynamic_100k_e2e: list[float] = field(default_factory=list)
    mounted_10k_e2e: list[float] = field(default_factory=list)
    lookup: list[float] = field(default_factory=list)
    chain: list[float] = field(default_factory=list)
    memory: dict[str, tuple[float, float]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)


async def in_process(work: Path, runs: int) -> InProcess:
    """Run the in-process measurements in `work`."""
    out = InProcess()
    edits = max(100, runs * 10)
    for kind in ("MountedFile", "DynamicFile"):
        folder = work / f"latency-{kind}"
        folder.mkdir()
        out.latency[kind] = await change_to_applied(folder, kind=kind, entries=1000, edits=edits)
    folder = work / "big"
    folder.mkdir()
    big_dynamic = dynamic_json(100_000, tag="-x")
    big_mounted = mounted_yaml(10_000, tag="-x").encode()
    out.sizes = {"dynamic": len(big_dynamic), "mounted": len(big_mounted)}
    backends = backends_for(folder, config=mounted_yaml(2), dynamic=dynamic_json(2))
    out.dynamic_100k = parse_and_swap(backends, "DynamicFile", big_dynamic, max(3, runs // 4))
    out.mounted_10k = parse_and_swap(backends, "MountedFile", big_mounted, max(3, runs // 4))
    for kind, entries, name in (
        ("DynamicFile", 100_000, "dynamic"),
        ("MountedFile", 10_000, "mounted"),
    ):
        sub = work / f"e2e-{name}"
        sub.mkdir()
        samples = await change_to_applied(sub, kind=kind, entries=entries, edits=3)
        setattr(out, f"{name}_{'100k' if name == 'dynamic' else '10k'}_e2e", samples)
    big = backends_for(work / "big", config=mounted_yaml(2), dynamic=dynamic_json(100_000))
    out.lookup, out.chain = await lookups(big, 100_000)
    settings = big.settings
    from authd.config import MappingConfig
    from authd.mapping.dynamicfile import DynamicFileTable
    from authd.mapping.file import MountedFileTable

    data = dynamic_json(100_000)
    out.memory["DynamicFile"] = retained_mib(
        lambda: DynamicFileTable.from_bytes(data, path="m.json", userid_strict=False)
    )
    text = mounted_yaml(100_000)
    mapping = MappingConfig.from_file_config(FileConfig.from_text(text, path="c.yaml"))
    out.memory["MountedFile"] = retained_mib(lambda: MountedFileTable.from_config(mapping))
    out.memory["MountedFile (with its parsed config)"] = retained_mib(
        lambda: MappingConfig.from_file_config(FileConfig.from_text(text, path="c.yaml"))
    )
    del settings
    return out


# --------------------------------------------------------------------------------------------
# The live daemon.


class _Sts(BaseHTTPRequestHandler):
    """GetCallerIdentity for any GET: always the bench user."""

    body = json.dumps(
        {
            "GetCallerIdentityResponse": {
                "GetCallerIdentityResult": {
                    "Arn": BENCH_ARN,
                    "Account": ACCOUNT,
                    "UserId": "AIDABENCH",
                }
            }
        }
    ).encode()

    def do_GET(self) -> None:
        """Answer any GET as STS answers a good GetCallerIdentity."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@contextlib.contextmanager
def sts_stand_in(handler: type[BaseHTTPRequestHandler] | None = None) -> Iterator[int]:
    """A loopback STS stand-in on a free port, for the duration of the block.

    `handler` answers the GETs; the default names the bench user for every token.
    """
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler or _Sts)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


class LogWatch:
    """Counts the daemon's JSON log events as its stderr is read."""

    def __init__(self, stream: Any) -> None:
        self.counts: dict[str, int] = {}
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._stream = stream
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """After the process exited: read to the end, then close its stream."""
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._stream.close()

    def _read(self, stream: Any) -> None:
        for line in stream:
            try:
                event = json.loads(line).get("event", "")
            except ValueError:
                event = ""
            with self._cond:
                self.lines.append(line)
                self.counts[event] = self.counts.get(event, 0) + 1
                self._cond.notify_all()

    def wait(self, event: str, count: int, timeout: float = 30.0) -> None:
        """Block until `event` was logged `count` times."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.counts.get(event, 0) >= count, timeout):
                raise RuntimeError(f"no {event!r} #{count}:\n" + "".join(self.lines[-20:]))


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def live_config(version: int) -> str:
    """Version `version`: the bench user is `u<version>` in group `g<version>`."""
    return (
        "clusterID: bench\nserver:\n  mapUsers:\n"
        f"  - userarn: {BENCH_ARN}\n    username: u{version}\n    groups: [g{version}]\n"
    )


BROKEN = "clusterID: bench\nserver:\n  mapUsers:\n  - userarn: [broken]\n"


@dataclass
class Live:
    """The live run's counts."""

    reloads: int = 0
    broken: int = 0
    reviews: int = 0
    failed: int = 0
    wrong: int = 0
    seconds: float = 0.0
    applied: list[float] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)


@dataclass
class _Reviews:
    """What the reviewer threads share: the versions applied so far and the tallies."""

    port: int
    context: ssl.SSLContext
    endpoint: Endpoint
    result: Live
    good: set[int] = field(default_factory=lambda: {0})
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def token(self) -> str:
        """A fresh token for the stand-in (the stand-in checks no signature)."""
        creds = AwsCredentials(access_key_id="AKIABENCHEXAMPLE0000", secret_access_key="unused")  # noqa: S106
        return make_token(creds, cluster_id="bench", endpoint=self.endpoint).token

    def loop(self) -> None:
        """Send reviews until stopped; tally each verdict."""
        token, made = self.token(), time.monotonic()
        base = f"https://127.0.0.1:{self.port}"
        with httpx.Client(base_url=base, verify=self.context, timeout=10) as client:
            while not self.stop.is_set():
                if time.monotonic() - made > 300:  # tokens live 15 minutes
                    token, made = self.token(), time.monotonic()
                verdict = judge(client, token, self.good)
                with self.lock:
                    self.result.reviews += 1
                    if verdict == "failed":
                        self.result.failed += 1
                    elif verdict != "ok":
                        self.result.wrong += 1
                        if len(self.result.examples) < 5:
                            self.result.examples.append(verdict)


def live(work: Path, reloads: int) -> Live:
    """Run the daemon, review without pause, and reload `reloads` times."""
    result = Live()
    config = work / "config.yaml"
    config.write_text(live_config(0))
    port = free_port()
    with sts_stand_in() as sts_port:
        argv = [
            sys.executable, "-m", "authd", "server",
            f"--config={config}", f"--port={port}",
            f"--state-dir={work / 'state'}", f"--generate-kubeconfig={work / 'kubeconfig.yaml'}",
            f"--extra-sts-endpoint=http://127.0.0.1:{sts_port}",
        ]  # fmt: skip
        env = {**os.environ, "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
        proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
        try:
            logs = LogWatch(proc.stderr)
            logs.wait("listening", 1)
            shared = _Reviews(
                port=port,
                context=ssl.create_default_context(cafile=str(work / "state" / "cert.pem")),
                endpoint=Endpoint(url=f"http://127.0.0.1:{sts_port}", signing_region="us-east-1"),
                result=result,
            )
            threads = [threading.Thread(target=shared.loop) for _ in range(REVIEW_THREADS)]
            for thread in threads:
                thread.start()
            start = time.monotonic()
            try:
                _reload(config, logs, shared, reloads)
            finally:
                result.seconds = time.monotonic() - start
                shared.stop.set()
                for thread in threads:
                    thread.join(timeout=30)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return result


def _reload(config: Path, logs: LogWatch, shared: _Reviews, reloads: int) -> None:
    """Replace the config `reloads` times (every tenth broken), each time until it is judged."""
    result = shared.result
    for k in range(1, reloads + 1):
        begin = time.monotonic()
        if k % 10 == 0:
            save(config, BROKEN.encode())
            result.broken += 1
            logs.wait("reload failed; keeping the last good mapping", result.broken)
        else:
            with shared.lock:
                shared.good.add(k)
            save(config, live_config(k).encode())
            logs.wait("configuration reloaded", k - result.broken)
            result.applied.append(time.monotonic() - begin)
        result.reloads += 1


def judge(client: httpx.Client, token: str, good: set[int]) -> str:
    """`ok`, `failed` (no answer, not 200, not allowed) or a description of a wrong answer."""
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token},
    }
    try:
        response = client.post("/authenticate", json=body)
        status = response.json()["status"]
    except (httpx.HTTPError, ValueError, KeyError):
        return "failed"
    if response.status_code != 200 or status.get("authenticated") is not True:
        return "failed"
    user = status["user"]
    number = str(user["username"]).removeprefix("u")
    if user.get("groups") != [f"g{number}"] or not number.isdigit() or int(number) not in good:
        return f"wrong: {user['username']} {user.get('groups')}"
    return "ok"


# --------------------------------------------------------------------------------------------
# Report.


def run(*, runs: int) -> str:
    """Measure everything and return the Markdown section."""
    # Thousands of "configuration reloaded" lines would drown the figures.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="authd-bench-reload-") as tmp:
        work = Path(tmp)
        figures = trio.run(in_process, work, runs)
        (work / "live").mkdir()
        live_result = live(work / "live", LIVE_RELOADS)
    return render(figures, live_result, runs, load=load)


def _row(what: str, samples: list[float], *, unit: str, target: str = "-", p99: bool = True) -> str:
    """One table row: median, p99 (or -), max, in `unit` (ms or us)."""
    scale = 1000.0 if unit == "ms" else 1e6
    digits = 1 if unit == "ms" else 2

    def fmt(value: float) -> str:
        return f"{value * scale:.{digits}f} {unit}"

    middle = fmt(pct(samples, 99)) if p99 else "-"
    return (
        f"| {what} | {fmt(statistics.median(samples))} | {middle} | {fmt(max(samples))} "
        f"| {target} |"
    )


def _verdict(label: str, value: float, limit: float) -> str:
    """`<label>: met` or `MISSED`."""
    return f"{label}: {'met' if value < limit else 'MISSED'}"


def render(f: InProcess, live_result: Live, runs: int, *, load: float) -> str:
    """The Markdown section."""
    lines = [
        "## Hot reload",
        "",
        f"- Date: {report.now()}",
        f"- Machine: {report.machine()}; 1-minute load average before the run: {load:.2f} "
        "(a shared machine: other work running at the same time shows in p99 and max)",
        f"- Command: `python -m bench reload --runs {runs}` (real inotify on a temporary "
        "directory, production timings: 50 ms debounce; in-process figures use the real "
        "`Backends`, the live run uses the real daemon process)",
        "",
        "| What | median | p99 | max | target |",
        "|---|---:|---:|---:|---|",
    ]
    for kind, samples in f.latency.items():
        p99 = pct(samples, 99) * 1000
        lines.append(
            _row(
                f"change-to-applied, 1,000-entry {kind} ({len(samples)} edits)",
                samples,
                unit="ms",
                target=_verdict("p99 < 250 ms", p99, TARGETS["latency_p99_ms"]),
            )
        )
    dyn_mib, mnt_mib = f.sizes["dynamic"] / 2**20, f.sizes["mounted"] / 2**20
    lookup_p99 = pct(f.lookup, 99) * 1e6
    lines += [
        _row(
            f"parse + validate + swap, 100,000-entry DynamicFile JSON ({dyn_mib:.1f} MiB)",
            f.dynamic_100k,
            unit="ms",
            p99=False,
            target=_verdict("< 1 s", max(f.dynamic_100k), TARGETS["dynamic_100k_s"]),
        ),
        _row(
            f"parse + validate + swap, 10,000-entry MountedFile YAML ({mnt_mib:.1f} MiB)",
            f.mounted_10k,
            unit="ms",
            p99=False,
            target=_verdict("< 1 s", max(f.mounted_10k), TARGETS["mounted_10k_s"]),
        ),
        _row(
            "change-to-applied, 100,000-entry DynamicFile", f.dynamic_100k_e2e, unit="ms", p99=False
        ),
        _row(
            "change-to-applied, 10,000-entry MountedFile", f.mounted_10k_e2e, unit="ms", p99=False
        ),
        _row(
            f"`table.lookup`, 100,000-entry DynamicFile ({len(f.lookup):,} calls)",
            f.lookup,
            unit="us",
            target=_verdict("p99 < 20 us", lookup_p99, TARGETS["lookup_p99_us"]),
        ),
        _row("whole `chain.map` (lookup, templates, user), same table", f.chain, unit="us"),
        "",
        "Memory per 100,000 entries (tracemalloc: retained by the snapshot, and the peak while "
        "building it):",
        "",
        "| Snapshot | retained | peak while building |",
        "|---|---:|---:|",
    ]
    for name, (kept, peak) in f.memory.items():
        lines.append(f"| {name} | {kept:.1f} MiB | {peak:.1f} MiB |")
    lv = live_result
    live_line = (
        f"- Live: {lv.reloads:,} reloads ({lv.broken} broken) in {lv.seconds:.1f} s while "
        f"{REVIEW_THREADS} threads sent reviews without pause: {lv.reviews:,} reviews, "
        f"{lv.failed} failed, {lv.wrong} wrong"
    )
    if lv.applied:
        live_line += (
            f"; write-to-logged-applied median {statistics.median(lv.applied) * 1000:.1f} ms, "
            f"p99 {pct(lv.applied, 99) * 1000:.1f} ms"
        )
    ok = lv.failed == 0 and lv.wrong == 0 and lv.reloads == LIVE_RELOADS
    lines += [
        "",
        live_line + ".",
        f"- Target zero failed or wrong reviews: {'met' if ok else 'MISSED'}.",
    ]
    lines += [f"  - {example}" for example in lv.examples]
    return "\n".join(lines) + "\n"
