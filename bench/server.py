"""TokenReviews/s of the real `authd server` against two bare yardsticks, driven by wrk over TLS.

One run starts nginx as the STS stand-in (it answers GetCallerIdentity at once, so it is never
the bottleneck), the real daemon process, and the two yardsticks of bench/yardsticks.py, all on
127.0.0.1 with the same certificate (the one authd generated in its state dir). wrk, a compiled
load generator, drives each in turn with 2 threads and 16 keep-alive TLS connections: a warm-up,
then a fixed measured window; the rounds are interleaved so machine noise hits each alike.
Every review sent to authd carries a token never sent before (pre-generated, distinct
signatures, fresh X-Amz-Date); the yardsticks get one constant body of the same size. The
daemon then keeps serving new tokens until it has answered 100,000 reviews, and its VmRSS is
read. Every process started here is stopped on the way out, error or not.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import importlib.metadata
import json
import math
import os
import platform
import secrets
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from bench import report
from bench.yardsticks import ANSWER

SECTION = "server"
DESCRIPTION = "authd server TokenReviews/s vs hypercorn and trio+h11 yardsticks (wrk, TLS)"
THREADS = 2
CONNECTIONS = 16
WARMUP_S = 3
MEASURE_S = 12
ROUNDS = 4
RSS_REVIEWS = 100_000
TARGET = 1.0
STS_QPS = 1_000_000
BIN = Path(sys.executable).parent
LUA = Path(__file__).resolve().parent / "wrk" / "review.lua"
PACKAGES = ("wrk", "nginx-light")
BENCH_ARN = "arn:aws:iam::123456789012:user/bench"
STS_ANSWER = json.dumps(
    {
        "GetCallerIdentityResponse": {
            "GetCallerIdentityResult": {
                "Arn": BENCH_ARN,
                "Account": "123456789012",
                "UserId": "AIDABENCH",
            }
        }
    },
    separators=(",", ":"),
)
CONFIG = f"""\
clusterID: bench
server:
  mapUsers:
  - userarn: {BENCH_ARN}
    username: bench
    groups: [bench]
"""
NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir}/nginx-body;
  proxy_temp_path {dir}/nginx-proxy;
  fastcgi_temp_path {dir}/nginx-fastcgi;
  uwsgi_temp_path {dir}/nginx-uwsgi;
  scgi_temp_path {dir}/nginx-scgi;
  keepalive_requests 10000000;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      default_type application/json;
      return 200 '{answer}';
    }}
  }}
}}
"""


class BenchError(RuntimeError):
    """The bench could not run, or a figure would be wrong; the message says which."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WrkResult:
    """What one wrk run measured, from the review.lua done() line."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    used: int
    short: int

    @property
    def rate(self) -> float:
        """Completed requests per second."""
        return self.requests / self.seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    """One measured window on one server: wrk's figures and the CPU the server spent."""

    wrk: WrkResult
    cpu_s: float
    helper_cpu_s: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """A server under load: its label, process, port, and the wrk arguments for one window."""

    label: str
    process: subprocess.Popen[bytes]
    port: int
    wrk_args: Callable[[int], list[str]]
    helper_pid: int | None = None


# --- tools and processes ---------------------------------------------------------------------


def find_tool(name: str) -> str | None:
    """The path of `name`, looking in sbin too (nginx lives in /usr/sbin)."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/local/sbin"
    return shutil.which(name, path=path)


def ensure_tools() -> tuple[str, str]:
    """Paths of wrk and nginx, installing Debian's packages with apt-get when missing.

    Raises:
        BenchError: apt-get is missing or failed; the message says what to install.
    """
    if find_tool("wrk") is None or find_tool("nginx") is None:
        print(f"installing {' '.join(PACKAGES)} with apt-get", file=sys.stderr)
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        install = [*sudo, "apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
        done = subprocess.run(install, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            subprocess.run([*sudo, "apt-get", "update"], capture_output=True, check=False)
            done = subprocess.run(install, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BenchError(
                f"could not install {' '.join(PACKAGES)} with apt-get "
                f"({done.stderr.strip().splitlines()[-1:] or done.returncode}); "
                f"install them yourself: sudo apt-get install -y {' '.join(PACKAGES)}"
            )
    wrk, nginx = find_tool("wrk"), find_tool("nginx")
    if wrk is None or nginx is None:
        raise BenchError(f"wrk or nginx still missing after installing {' '.join(PACKAGES)}")
    return wrk, nginx


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, a grace period for authd's graceful shutdown, then SIGKILL."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def spawn(
    stack: contextlib.ExitStack, argv: list[str], *, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `argv` with its output in `log`; it is stopped when `stack` closes."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
        )
    stack.callback(stop, process)
    return process


def free_port() -> int:
    """A port nothing listens on right now (the servers bind it a moment later)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while the bench runs, so the cleanup still happens."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def start_nginx(
    stack: contextlib.ExitStack, nginx: str, work: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """nginx as the STS stand-in, answering every GET with the bench user's identity."""
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=work, port=port, answer=STS_ANSWER))
    argv = [nginx, "-c", str(conf), "-p", str(work), "-e", str(work / "nginx-error.log")]
    process = spawn(stack, argv, log=work / "nginx.out")
    wait_until(lambda: answers_http(port), what="nginx", process=process, log=work / "nginx.out")
    return process, port


def answers_http(port: int) -> bool:
    """Whether a plain-HTTP GET to `port` returns 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/?Action=GetCallerIdentity")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def start_authd(
    stack: contextlib.ExitStack, work: Path, *, sts_port: int, transport: str = "authd"
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """The real daemon: its process, port, and the certificate it serves (the yardsticks' too).

    `.venv/bin/authd` is a console script the kernel execs with Python, so the process is the
    daemon itself and its pid is the one to read CPU time and VmRSS from. `transport` is the
    STS client's transport for the A/B (the daemon's internal AUTHD_BENCH_STS_TRANSPORT); a
    second daemon shares the first one's config, state dir and so certificate.
    """
    port = free_port()
    # The daemon watches the directory holding its config; keep its own log and the token
    # files out of it, or every log line would wake the watcher.
    config = work / "config" / "config.yaml"
    config.parent.mkdir(exist_ok=True)
    config.write_text(CONFIG)
    argv = [
        str(BIN / "authd"),
        "server",
        "--config",
        str(config),
        "--state-dir",
        str(work / "state"),
        "--generate-kubeconfig",
        str(work / "kubeconfig.yaml"),
        "--port",
        str(port),
        "--extra-sts-endpoint",
        f"http://127.0.0.1:{sts_port}",
        # Every review here calls STS on purpose (new tokens); the STS rate limit, which
        # protects the real STS, would otherwise set the figure instead of authd's cost.
        "--sts-qps",
        str(STS_QPS),
        "--sts-burst",
        str(STS_QPS),
    ]
    # A set region keeps the daemon away from instance metadata.
    env = {**os.environ, "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    env["AUTHD_BENCH_STS_TRANSPORT"] = transport
    log = work / f"authd-{transport}.log"
    process = spawn(stack, argv, log=log, env=env)
    wait_until(
        lambda: '"event":"listening"' in log.read_text(errors="replace"),
        what="authd",
        process=process,
        log=log,
    )
    return process, port, work / "state" / "cert.pem"


def start_yardstick(
    stack: contextlib.ExitStack, name: str, work: Path, *, cert: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """One of bench/yardsticks.py's servers, with authd's certificate and key."""
    port = free_port()
    key = cert.with_name("key.pem")
    argv = [sys.executable, "-m", "bench.yardsticks", name, "--port", str(port)]
    argv += ["--cert", str(cert), "--key", str(key)]
    log = work / f"yardstick-{name}.log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    process = spawn(stack, argv, log=log, env=env)
    context = ssl.create_default_context(cafile=str(cert))
    wait_until(lambda: accepts_tls(port, context), what=name, process=process, log=log)
    return process, port


def accepts_tls(port: int, context: ssl.SSLContext) -> bool:
    """Whether a TLS handshake with `port` succeeds."""
    import socket

    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1"),
        ):
            return True
    except OSError:
        return False


def wait_until(
    ready: Callable[[], bool],
    *,
    what: str,
    process: subprocess.Popen[bytes],
    log: Path,
    timeout: float = 30.0,
) -> None:
    """Poll `ready` until it holds; a dead process or a timeout fails with its log's tail."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            state = f"exited {process.returncode}" if process.poll() is not None else "timed out"
            raise BenchError(f"{what} did not start ({state}): " + " | ".join(tail))
        time.sleep(0.05)


# --- tokens, requests, wrk ---------------------------------------------------------------------


class Tokens:
    """Writes never-repeated tokens for the local STS, each with the X-Amz-Date of its writing."""

    def __init__(self, *, sts_port: int) -> None:
        self._origin = f"http://127.0.0.1:{sts_port}/"
        self._nonce = secrets.token_hex(8)
        self._next = 0
        self.written = 0

    def one(self, amz_date: str) -> str:
        """A token whose signature (a hash of a per-run nonce and a counter) is new."""
        signature = hashlib.sha256(f"{self._nonce}:{self._next}".encode()).hexdigest()
        self._next += 1
        url = (
            f"{self._origin}?Action=GetCallerIdentity&Version=2011-06-15"
            "&X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Credential=AKIABENCHEXAMPLE0000%2F{amz_date[:8]}%2Fus-east-1%2Fsts%2Faws4_request"
            f"&X-Amz-Date={amz_date}&X-Amz-Expires=60"
            f"&X-Amz-SignedHeaders=host%3Bx-k8s-aws-id&X-Amz-Signature={signature}"
        )
        return "k8s-aws-v1." + base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")

    def write(self, prefix: Path, *, per_thread: int) -> None:
        """Write `per_thread` new tokens to each `prefix.N` file review.lua reads (N per thread)."""
        amz_date = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        for thread in range(THREADS):
            lines = [self.one(amz_date) for _ in range(per_thread)]
            Path(f"{prefix}.{thread}").write_text("\n".join(lines) + "\n")
        self.written += per_thread * THREADS


def post_review(port: int, context: ssl.SSLContext, token: str) -> tuple[int, object]:
    """POST one TokenReview over TLS; (status, decoded answer)."""
    body = json.dumps(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
    )
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.request("POST", "/authenticate", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def decisions(port: int, context: ssl.SSLContext) -> dict[str, float]:
    """authd's reviews so far by decision, from `authd_reviews_total` on /metrics."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("authd_reviews_total{"):
            labels, value = line.rsplit(" ", 1)
            decision = labels.split('decision="', 1)[1].split('"', 1)[0]
            counts[decision] = counts.get(decision, 0.0) + float(value)
    if not counts:
        raise BenchError("authd's /metrics has no authd_reviews_total series")
    return counts


def run_wrk(wrk: str, port: int, args: list[str], *, seconds: int) -> WrkResult:
    """One wrk run of `seconds` against `port` with review.lua and `args`."""
    argv = [wrk, f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency"]
    argv += ["--timeout", "5s", "-s", str(LUA), f"https://127.0.0.1:{port}", "--", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    found = [line for line in done.stdout.splitlines() if line.startswith("WRKJSON ")]
    if done.returncode != 0 or not found:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout}")
    data = json.loads(found[-1].removeprefix("WRKJSON "))
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    return WrkResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=errors,
        used=data["used"],
        short=data["short"],
    )


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """VmRSS of `pid`, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for process {pid}")


def children(pid: int) -> list[int]:
    """Direct child processes of `pid` (nginx's worker)."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


# --- the run ---------------------------------------------------------------------------------


class Run:
    """Everything one `python -m bench server` run started, and the measurements it took."""

    def __init__(self, stack: contextlib.ExitStack, work: Path) -> None:
        self.wrk, nginx = ensure_tools()
        self.work = work
        # Other work on a 2-core machine moves the figures; the section says how busy it was.
        self.load_before = os.getloadavg()[0]
        nginx_process, sts_port = start_nginx(stack, nginx, work)
        self.tokens = Tokens(sts_port=sts_port)
        # nginx forks its one worker; that worker's CPU is what the STS stand-in costs.
        workers = children(nginx_process.pid)
        self.targets: list[Target] = []
        for transport, label in AUTHDS.items():
            process, port, self.cert = start_authd(
                stack, work, sts_port=sts_port, transport=transport
            )
            self.context = ssl.create_default_context(cafile=str(self.cert))
            self.check_authd(port)
            self.targets.append(
                Target(
                    label=label,
                    process=process,
                    port=port,
                    wrk_args=self.fresh_tokens,
                    helper_pid=workers[0] if workers else None,
                )
            )
        # The first daemon runs the shipped transport: its RSS and counts are the ones reported.
        self.authd, self.authd_port = self.targets[0].process, self.targets[0].port
        self.rss_start = rss_mib(self.authd.pid)
        constant = self.tokens.one(datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"))
        for name, label in YARDSTICKS.items():
            process, port = start_yardstick(stack, name, work, cert=self.cert)
            self.check_yardstick(port)
            self.targets.append(
                Target(
                    label=label,
                    process=process,
                    port=port,
                    wrk_args=lambda _seconds: ["constant", constant],
                )
            )
        self.samples: dict[str, list[Sample]] = {t.label: [] for t in self.targets}

    def check_authd(self, port: int) -> None:
        """One review by hand: a fresh token must be allowed as the bench user."""
        token = self.tokens.one(datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"))
        status, answer = post_review(port, self.context, token)
        user = answer.get("status", {}).get("user", {}) if isinstance(answer, dict) else {}
        if status != 200 or user.get("username") != "bench":
            raise BenchError(f"authd did not allow the bench token: {status} {answer}")

    def check_yardstick(self, port: int) -> None:
        """A yardstick must give the constant answer to a TokenReview."""
        status, answer = post_review(port, self.context, "k8s-aws-v1.check")
        if status != 200 or answer != json.loads(ANSWER):
            raise BenchError(f"yardstick on port {port} answered {status} {answer}")

    def fresh_tokens(self, seconds: int) -> list[str]:
        """Write new token files for one authd window, sized at twice the best rate so far."""
        rates = [s.wrk.rate for label in AUTHDS.values() for s in self.samples.get(label, [])]
        rate = max(rates, default=3000.0)
        per_thread = math.ceil(rate * 2 * seconds / THREADS) + 500
        prefix = self.work / "tokens"
        self.tokens.write(prefix, per_thread=per_thread)
        return ["tokens", str(prefix)]

    def window(self, target: Target, *, seconds: int) -> Sample:
        """Load `target` for `seconds`; refuse figures with errors or a token shortfall."""
        args = target.wrk_args(seconds)
        helper = target.helper_pid
        cpu0 = cpu_seconds(target.process.pid)
        helper0 = cpu_seconds(helper) if helper else 0.0
        result = run_wrk(self.wrk, target.port, args, seconds=seconds)
        cpu = cpu_seconds(target.process.pid) - cpu0
        helper_cpu = cpu_seconds(helper) - helper0 if helper else 0.0
        if result.short:
            raise BenchError(f"{target.label}: ran out of fresh tokens ({result.short} short)")
        if result.errors:
            raise BenchError(f"{target.label}: wrk saw {result.errors} socket or HTTP errors")
        return Sample(wrk=result, cpu_s=cpu, helper_cpu_s=helper_cpu)

    def measure(self) -> None:
        """ROUNDS interleaved rounds: per target a warm-up window, then a measured one."""
        for round_no in range(1, ROUNDS + 1):
            for target in self.targets:
                self.window(target, seconds=WARMUP_S)
                sample = self.window(target, seconds=MEASURE_S)
                self.samples[target.label].append(sample)
                print(
                    f"round {round_no}: {target.label}: {sample.wrk.rate:.0f}/s, "
                    f"p50 {sample.wrk.p50_ms:.1f} ms, p99 {sample.wrk.p99_ms:.1f} ms",
                    file=sys.stderr,
                )

    def serve_until_rss_point(self) -> tuple[dict[str, float], float]:
        """Keep authd busy with new tokens until it has answered RSS_REVIEWS; (counts, RSS MiB)."""
        authd = self.targets[0]
        rate = statistics.median(s.wrk.rate for s in self.samples[AUTHD])
        while (served := sum(decisions(self.authd_port, self.context).values())) < RSS_REVIEWS:
            # Windows of at most a minute keep every token well inside its 15 minutes.
            seconds = max(2, min(60, math.ceil((RSS_REVIEWS - served) / rate) + 1))
            print(f"authd has served {served:.0f} reviews; {seconds} s more", file=sys.stderr)
            self.window(authd, seconds=seconds)
        return decisions(self.authd_port, self.context), rss_mib(self.authd.pid)


AUTHDS = {
    "authd": "authd, Http1Transport (a new token every review)",
    "httpx": "authd, httpx's transport (a new token every review)",
}
"""The daemons measured, by STS transport; the first is the shipped one."""
AUTHD = next(iter(AUTHDS.values()))
YARDSTICKS = {
    "hypercorn": "yardstick: bare ASGI on hypercorn (trio worker)",
    "h11": "yardstick: bare handler on trio + h11 (SSLStream)",
}


def run(*, runs: int) -> str:
    """Run the whole server bench once and return its Markdown section.

    `runs` (the token bench's count of timed runs) does not apply here: this bench always does
    ROUNDS interleaved rounds of fixed-length wrk windows.

    Raises:
        BenchError: a tool could not be installed, a server did not start or answered wrong,
            wrk saw errors, or authd denied a review; no figure is written then.
    """
    del runs
    with sigterm_unwinds(), contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-server-")))
        bench = Run(stack, work)
        bench.measure()
        counts, rss = bench.serve_until_rss_point()
        if counts.get("allow", 0.0) != sum(counts.values()):
            raise BenchError(f"authd did not allow every review: {counts}")
        return render(bench, counts=counts, rss=rss, versions=versions(bench.wrk))


def versions(wrk: str) -> str:
    """The versions the figures depend on, in one line."""
    from authd import __version__ as authd_version

    wrk_line = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False).stdout
    nginx_path = find_tool("nginx") or "nginx"
    nginx_line = subprocess.run([nginx_path, "-v"], capture_output=True, text=True, check=False)
    packages = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("trio", "h11", "httpx", "hypercorn")
    )
    return (
        f"authd {authd_version}, {packages}, {wrk_line.split(' [')[0].strip()}, "
        f"{nginx_line.stderr.strip().removeprefix('nginx version: ')}, {ssl.OPENSSL_VERSION}"
    )


def median_sample(samples: list[Sample]) -> Sample:
    """The round with the median throughput (its latencies are the ones shown)."""
    ordered = sorted(samples, key=lambda s: s.wrk.rate)
    return ordered[len(ordered) // 2]


def round_ratios(bench: Run, yardstick: str, *, authd: str = AUTHD) -> list[float]:
    """`authd`'s rate over `yardstick`'s in each round; a round's servers saw the same noise."""
    pairs = zip(bench.samples[authd], bench.samples[yardstick], strict=True)
    return [a.wrk.rate / y.wrk.rate for a, y in pairs]


def spread(samples: list[Sample]) -> float:
    """Round-to-round spread of one server's rate: (highest - lowest) / median."""
    rates = [s.wrk.rate for s in samples]
    return (max(rates) - min(rates)) / statistics.median(rates)


def ab_lines(bench: Run) -> list[str]:
    """The STS transport A/B: the shipped daemon over each other one, round by round."""
    lines: list[str] = []
    for other in list(AUTHDS.values())[1:]:
        ratios = round_ratios(bench, other)
        gap = statistics.median(ratios) - 1
        noise = max(spread(bench.samples[AUTHD]), spread(bench.samples[other]))
        within = "within" if abs(gap) <= noise else "beyond"
        lines.append(
            f"- A/B, {AUTHD.split(' (')[0]} / {other.split(' (')[0]}: **{gap + 1:.2f}x** "
            f"(rounds: {ratio_text(ratios)}); the gap ({gap:+.1%}) is {within} the "
            f"round-to-round spread ({noise:.1%}, the larger of the two daemons').",
        )
    for other in list(AUTHDS.values())[1:]:
        hyper_rounds = round_ratios(bench, YARDSTICKS["hypercorn"], authd=other)
        lines.append(
            f"- {other.split(' (')[0]} / hypercorn yardstick: "
            f"{statistics.median(hyper_rounds):.2f}x (rounds: {ratio_text(hyper_rounds)})."
        )
    return lines


def ratio_text(ratios: list[float]) -> str:
    """`0.25x, 0.22x, ...`."""
    return ", ".join(f"{ratio:.2f}x" for ratio in ratios)


def render(bench: Run, *, counts: dict[str, float], rss: float, versions: str) -> str:
    """The Markdown section: the table, both ratios, the verdict and the RSS."""
    lines = [
        "## Server: TokenReviews/s through `authd server` vs two bare yardsticks",
        "",
        f"- Date: {report.now()}",
        f"- Machine: {report.machine()} ({platform.machine()}); 1-minute load average "
        f"before the run: {bench.load_before:.2f}",
        f"- Versions: {versions}",
        "- Command: `python -m bench server` (`make bench` runs every bench)",
        f"- Load: wrk, {THREADS} threads, {CONNECTIONS} keep-alive TLS connections, POST "
        f"/authenticate; per server and round a {WARMUP_S} s warm-up then {MEASURE_S} s measured; "
        f"{ROUNDS} rounds interleaved, the median round shown. Not pinned: wrk, the server "
        "and (for authd) nginx share the machine's cores, as they would on a small node.",
        f"- authd: {len(AUTHDS)} daemons, one per STS transport (the internal "
        "AUTHD_BENCH_STS_TRANSPORT; the first is the shipped one, and RSS is its), each "
        "the real daemon process (`authd server`, MountedFile mapping, default logging: "
        f"one JSON line per review, `--sts-qps {STS_QPS} --sts-burst {STS_QPS}` so STS rate "
        "limiting is not what is measured), every review a token never sent before (distinct "
        "signature, fresh X-Amz-Date), verified and sent to the STS stand-in: nginx on "
        "127.0.0.1 answering GetCallerIdentity at once. Yardsticks decode the JSON body and "
        "return a constant TokenReview of the same size as authd's; same certificate (RSA "
        "2048), TLS 1.2+.",
        "",
        "| Server | reviews/s | p50 (ms) | p99 (ms) | server CPU per review (µs) | "
        "rounds (reviews/s) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for target in bench.targets:
        samples = bench.samples[target.label]
        shown = median_sample(samples)
        cpu_us = shown.cpu_s / shown.wrk.requests * 1e6
        if shown.helper_cpu_s:
            cpu_us_text = (
                f"{cpu_us:.0f} (+ nginx {shown.helper_cpu_s / shown.wrk.requests * 1e6:.0f})"
            )
        else:
            cpu_us_text = f"{cpu_us:.0f}"
        lines.append(
            f"| {target.label} | {shown.wrk.rate:.0f} | {shown.wrk.p50_ms:.2f} | "
            f"{shown.wrk.p99_ms:.2f} | {cpu_us_text} | "
            f"{', '.join(f'{s.wrk.rate:.0f}' for s in samples)} |"
        )
    # The headline ratio is the median of the per-round ratios: noise from other work on the
    # machine moves a round's servers together, so it cancels within a round.
    hyper_rounds = round_ratios(bench, YARDSTICKS["hypercorn"])
    bare_rounds = round_ratios(bench, YARDSTICKS["h11"])
    hyper, bare = statistics.median(hyper_rounds), statistics.median(bare_rounds)
    verdict = "met" if hyper >= TARGET else "MISSED"
    lines += [
        "",
        f"- authd / hypercorn yardstick: **{hyper:.2f}x** (target >= {TARGET:.1f}x: {verdict}; "
        f"median of the rounds: {ratio_text(hyper_rounds)}).",
        f"- authd / trio+h11 yardstick: **{bare:.2f}x** (median of the rounds: "
        f"{ratio_text(bare_rounds)}; its target, for cache hits, comes with the "
        "STS-protection issue).",
        f"- authd RSS (VmRSS) after {sum(counts.values()):,.0f} reviews: **{rss:.1f} MiB** "
        f"(at start: {bench.rss_start:.1f} MiB; every token was new, so whatever authd keeps "
        "per token is at its fullest). Every review was allowed "
        f"(`authd_reviews_total`); {bench.tokens.written:,} distinct tokens were written, "
        "none sent twice.",
        *ab_lines(bench),
    ]
    return "\n".join(lines) + "\n"
