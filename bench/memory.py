"""`python -m bench memory`: the daemon's VmRSS at start and under distinct tokens; its imports.

Every figure is the VmRSS of the real `authd server` process (`.venv/bin/authd`, which the kernel
execs with Python, so the pid is the daemon's), read once the daemon has logged `listening` and
settled for a second. Each start reuses a state dir whose key pair an earlier start wrote, as
every start after the first does; the bytecode is cached (in the run's work dir), as an
installed package has it. Start-ups, the median of several:

- the token-run daemon: bench/server.py's `start_authd` (config file, an extra STS endpoint
  at the nginx stand-in, the STS rate limit lifted);
- a config-file-only daemon (`--config` and the state flags, nothing else), also without a
  bytecode cache (compiling authd from source each start, as with PYTHONDONTWRITEBYTECODE=1);
- a daemon with the Kubernetes backends (`--backend-mode=MountedFile,EKSConfigMap,CRD`) on the
  fake API server of tests/fakes (an aws-auth ConfigMap of one user, no IAMIdentityMapping).

Then the token-run daemon answers never-repeated tokens (bench/edges.py's loop: wrk against
nginx as STS) up to 10,000 and 100,000 reviews, with its RSS at each. The import profile is one
config-file-only start with PYTHONPROFILEIMPORTTIME=1. The recommended request and limit come
from the 100,000-token figure (docs/memory.md).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench import report
from bench.edges import gauge, serve_distinct
from bench.server import (
    BIN,
    CONFIG,
    BenchError,
    Tokens,
    ensure_tools,
    free_port,
    rss_mib,
    sigterm_unwinds,
    spawn,
    start_authd,
    start_nginx,
    wait_until,
)

SECTION = "memory"
DESCRIPTION = "authd server VmRSS at start and after 10k/100k distinct tokens; import profile"
TARGET_START_MIB = 40.0
CHECKPOINTS = (10_000, 100_000)
STARTS = 3
SETTLE_S = 1.0
TOP_IMPORTS = 10
# What any Python daemon on trio pays before authd's own code (the floor under kops' 20Mi).
FLOORS = (
    ("The Python interpreter alone (`python -c pass`)", "pass"),
    ("The interpreter with trio imported", "import trio"),
)
BENCH_USER = "arn:aws:iam::123456789012:user/bench"
IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)\s*$")
# kube-system/aws-auth with one user, for the Kubernetes start.
AWS_AUTH = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "aws-auth", "namespace": "kube-system"},
    "data": {"mapUsers": f"- userarn: {BENCH_USER}\n  username: bench\n  groups: [bench]\n"},
}


@contextlib.contextmanager
def bytecode(work: Path, *, cached: bool) -> Iterator[None]:
    """Daemons started inside cache their bytecode under `work` (or never write it).

    The daemons inherit this process's environment (bench/server.py's `start_authd` does so), so
    the two variables are set here and restored on the way out.
    """
    names = ("PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.pop("PYTHONPYCACHEPREFIX", None)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    if cached:
        os.environ["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    else:
        os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def daemon_env(**extra: str) -> dict[str, str]:
    """This process's environment, kept away from instance metadata, plus `extra`."""
    return {
        **os.environ,
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        **extra,
    }


def write_config(work: Path) -> Path:
    """The server bench's config file, in a directory of its own (the daemon watches it)."""
    config = work / "config" / "config.yaml"
    config.parent.mkdir(exist_ok=True)
    config.write_text(CONFIG)
    return config


def start_plain(
    stack: contextlib.ExitStack, work: Path, *extra: str, env: dict[str, str] | None = None
) -> tuple[int, Path]:
    """A config-file-only daemon (plus `extra` flags); (pid, its log) once it listens."""
    argv = [
        str(BIN / "authd"),
        "server",
        f"--config={write_config(work)}",
        f"--state-dir={work / 'state'}",
        f"--generate-kubeconfig={work / 'kubeconfig.yaml'}",
        f"--port={free_port()}",
        *extra,
    ]
    log = work / "authd-plain.log"
    process = spawn(stack, argv, log=log, env=env or daemon_env())
    wait_until(
        lambda: '"event":"listening"' in log.read_text(errors="replace"),
        what="authd",
        process=process,
        log=log,
    )
    return process.pid, log


def start_rss(start: Callable[[contextlib.ExitStack], int]) -> float:
    """Median VmRSS (MiB) over STARTS start-ups of the daemon `start` runs (and returns the pid)."""
    figures = []
    for _ in range(STARTS):
        with contextlib.ExitStack() as stack:
            pid = start(stack)
            time.sleep(SETTLE_S)
            figures.append(rss_mib(pid))
    return statistics.median(figures)


def kube_start_rss(work: Path) -> float:
    """Median start VmRSS with the Kubernetes backends on the fake API server."""
    from tests.fakes.apiserver import FakeApiServer

    with FakeApiServer() as api:
        api.put_object(AWS_AUTH)
        kubeconfig = api.write_kubeconfig(work / "apiserver-kubeconfig")
        flags = (f"--kubeconfig={kubeconfig}", "--backend-mode=MountedFile,EKSConfigMap,CRD")
        return start_rss(lambda stack: start_plain(stack, work, *flags)[0])


def import_profile(
    work: Path,
) -> tuple[int, float, list[tuple[str, float]], list[tuple[str, float]]]:
    """One config-file-only start with PYTHONPROFILEIMPORTTIME=1.

    Returns:
        (modules imported, their total import time in ms, the top-level imports with the
        largest cumulative ms, the distributions with the largest summed self ms).
    """
    with contextlib.ExitStack() as stack:
        _, log = start_plain(stack, work, env=daemon_env(PYTHONPROFILEIMPORTTIME="1"))
    rows = [m for line in log.read_text().splitlines() if (m := IMPORT_LINE.match(line))]
    if not rows:
        raise BenchError("the daemon wrote no import-time lines")
    top_level = [(m[4], int(m[2]) / 1000) for m in rows if m[3] == " "]
    by_package: dict[str, float] = {}
    for m in rows:
        package = m[4].split(".")[0]
        by_package[package] = by_package.get(package, 0.0) + int(m[1]) / 1000
    total = sum(ms for _, ms in top_level)
    cumulative = sorted(top_level, key=lambda item: -item[1])[:TOP_IMPORTS]
    return (
        len(rows),
        total,
        cumulative,
        sorted(by_package.items(), key=lambda item: -item[1])[:TOP_IMPORTS],
    )


def token_run(work: Path) -> tuple[float, list[tuple[float, float]], float, float]:
    """The token-run daemon: (start RSS, [(reviews, RSS)] at CHECKPOINTS, cache entries, bytes)."""
    wrk, nginx = ensure_tools()
    with contextlib.ExitStack() as stack:
        _, sts_port = start_nginx(stack, nginx, work)
        start = start_rss(lambda inner: start_authd(inner, work, sts_port=sts_port)[0].pid)
        process, port, cert = start_authd(stack, work, sts_port=sts_port)
        context = ssl.create_default_context(cafile=str(cert))
        tokens = Tokens(sts_port=sts_port)
        checkpoints = []
        for until in CHECKPOINTS:
            counts = serve_distinct(wrk, port, context, tokens, work, until=until)
            checkpoints.append((sum(counts.values()), rss_mib(process.pid)))
        entries = gauge(port, context, "authd_identity_cache_entries")
        size = gauge(port, context, "authd_identity_cache_bytes")
    return start, checkpoints, entries, size


def warm_up(work: Path) -> None:
    """One unmeasured start: it writes the key pair (the first time) and the bytecode cache."""
    with contextlib.ExitStack() as stack:
        start_plain(stack, work)
    if not (work / "state" / "cert.pem").exists():
        raise BenchError("the warm-up start wrote no key pair")


def recommended(rss: float) -> tuple[int, int]:
    """(request, limit) in Mi for a daemon whose RSS under load is `rss` MiB.

    The request is `rss` rounded up to 8 Mi; the limit is 1.5 x `rss` rounded up to the next
    of 2^n or 1.5 x 2^n Mi (64, 96, 128, 192, 256, ...).
    """
    request = math.ceil(rss / 8) * 8
    wanted = rss * 1.5
    limit = 64
    while limit < wanted:
        limit = limit * 3 // 2 if limit & (limit - 1) == 0 else limit * 4 // 3
    return request, limit


def run(*, runs: int) -> str:
    """Every measurement, as the section's Markdown (`runs` does not apply)."""
    del runs
    load = os.getloadavg()[0]
    with (
        sigterm_unwinds(),
        tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp,
    ):
        work = Path(tmp)
        with bytecode(work, cached=False):
            warm_up(work)
            plain_source = start_rss(lambda stack: start_plain(stack, work)[0])
        with bytecode(work, cached=True):
            warm_up(work)
            plain = start_rss(lambda stack: start_plain(stack, work)[0])
            kube = kube_start_rss(work)
            modules, total_ms, cumulative, packages = import_profile(work)
            start, checkpoints, entries, size = token_run(work)
            floors = {label: python_rss(code) for label, code in FLOORS}
    return render(
        load=load,
        floors=floors,
        plain=plain,
        plain_source=plain_source,
        kube=kube,
        start=start,
        checkpoints=checkpoints,
        entries=entries,
        size=size,
        imports=(modules, total_ms, cumulative, packages),
    )


def python_rss(code: str) -> float:
    """VmRSS (MiB) of the venv's Python after running `code`, median of STARTS runs."""
    probe = f"{code}\nprint(open('/proc/self/status').read())"
    samples = []
    for _ in range(STARTS):
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
        ).stdout
        match = re.search(r"^VmRSS:\s+(\d+) kB", out, re.MULTILINE)
        assert match, out
        samples.append(int(match.group(1)) / 1024)
    return statistics.median(samples)


def render(
    *,
    load: float,
    floors: dict[str, float],
    plain: float,
    plain_source: float,
    kube: float,
    start: float,
    checkpoints: list[tuple[float, float]],
    entries: float,
    size: float,
    imports: tuple[int, float, list[tuple[str, float]], list[tuple[str, float]]],
) -> str:
    """The section's Markdown."""
    modules, total_ms, cumulative, packages = imports
    verdict = "within" if max(plain, start) <= TARGET_START_MIB else "**over**"
    request, limit = recommended(checkpoints[-1][1])
    lines = [
        "## Memory: the daemon's RSS at start and under distinct tokens",
        "",
        f"{report.machine()}; {report.now()}; load average before: {load:.2f}. RSS does not "
        "depend on CPU share, so other work on the machine does not move it. VmRSS of the real "
        f"daemon process, median of {STARTS} starts, each reusing the key pair in its state dir, "
        f"{SETTLE_S:.0f} s after `listening`; bytecode cached unless said otherwise.",
        "",
        "| Daemon | VmRSS |",
        "|---|---:|",
        *(f"| {label} | {rss:.1f} MiB |" for label, rss in floors.items()),
        f"| Config file only, at start | **{plain:.1f} MiB** |",
        f"| Config file only, at start, compiling from source (no bytecode cache) | "
        f"{plain_source:.1f} MiB |",
        f"| Kubernetes backends (EKSConfigMap, CRD) on the fake API server, at start | "
        f"{kube:.1f} MiB |",
        f"| Token run (extra STS endpoint, STS rate limit lifted), at start "
        f"| **{start:.1f} MiB** |",
    ]
    for reviews, rss in checkpoints:
        lines.append(
            f"| Token run, after {reviews:,.0f} reviews of distinct tokens | {rss:.1f} MiB |"
        )
    lines += [
        "",
        f"Start-up is {verdict} the {TARGET_START_MIB:.0f} MiB target. After the last checkpoint "
        f"the identity cache holds {entries:,.0f} entries, {size / 2**20:.1f} MiB estimated "
        "(`--identity-cache-size` 100000, `--identity-cache-bytes` 16 MiB by default).",
        "",
        f"Recommended for the container: **request {request}Mi, limit {limit}Mi** (the request "
        f"is the {checkpoints[-1][0]:,.0f}-token RSS rounded up to 8 Mi; the limit is 1.5 x that "
        "RSS rounded up to 2^n or 1.5 x 2^n Mi; docs/memory.md).",
        "",
        f"Import profile of one config-file-only start (`PYTHONPROFILEIMPORTTIME=1`): {modules} "
        f"modules, {total_ms:.0f} ms in all (times depend on the load average above; "
        "indicative only).",
        "",
        "| Top-level import | Cumulative ms |   | Package | Self ms (summed) |",
        "|---|---:|---|---|---:|",
    ]
    for (name, ms), (package, self_ms) in zip(cumulative, packages, strict=False):
        lines.append(f"| `{name}` | {ms:.1f} | | `{package}` | {self_ms:.1f} |")
    return "\n".join(lines)
