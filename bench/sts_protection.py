"""STS and EC2 protection, measured: STS calls per token, cache-hit reviews/s, 5,000 nodes.

Three parts, one run (`python -m bench sts`):

1. STS calls per token over a simulated 14 minutes. The API server caches an allowed review
   for 2 minutes (`--authentication-token-webhook-cache-ttl`), so a client holding one token
   for its 14 useful minutes is reviewed at minutes 0, 2, ..., 12: seven reviews, seven STS
   calls upstream. The real `Authenticator` runs in-process with its clock stepped 2 minutes at
   a time (time is simulated; nothing else is) against a loopback STS stand-in over real
   sockets, which counts GetCallerIdentity requests. Run with authd's defaults and with
   `--identity-cache-size 0` (no cache: upstream's behaviour).
2. Reviews/s on cache hits: the real daemon answering one token over and over, driven by wrk
   next to bench/yardsticks.py's bare trio+h11 handler in the same run (bench/server.py's
   processes and wrk driver, reused).
3. 5,000 nodes registering at once with `system:node:{{EC2PrivateDNSName}}`: the real daemon,
   moto_server as EC2 (5,000 instances made by RunInstances), the stand-in as STS naming each
   node's assumed-role session after its instance; DescribeInstances calls and the time until
   every review is answered.
"""

from __future__ import annotations

import contextlib
import json
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import trio

from authd.server.sts.transport import Http1Transport
from bench import report
from bench.server import (
    BIN,
    BenchError,
    WrkResult,
    answers_http,
    cpu_seconds,
    ensure_tools,
    free_port,
    post_review,
    run_wrk,
    sigterm_unwinds,
    spawn,
    start_authd,
    start_nginx,
    start_yardstick,
    wait_until,
)

SECTION = "sts-protection"
DESCRIPTION = "STS calls per token, cache-hit reviews/s vs trio+h11, 5,000 nodes' EC2 lookups"
ACCOUNT = "123456789012"
CLUSTER = "bench"
TOKENS = 200
REVIEW_EVERY = timedelta(minutes=2)
REVIEWS_PER_TOKEN = 7  # minutes 0, 2, ..., 12 of a token used for 14 minutes
ROUNDS = 5  # this shared 2-core machine varies by 20% between rounds
WARMUP_S = 3
MEASURE_S = 10
HIT_TARGET = 0.6
NODES = 5_000
USERNAME = "system:node:{{EC2PrivateDNSName}}"
CONNECTIONS = 200
NODE_ROLE = f"arn:aws:iam::{ACCOUNT}:role/Node"
MOTO_KEY, MOTO_SECRET = "AKIABENCH", "moto-checks-no-secret"
MOTO_RUNNING = re.compile(r"Running on http://127\.0\.0\.1:(\d+)")


# --- a loopback STS stand-in whose answer depends on the token's access key ---------------------


class _StsHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    sts: StandInSts

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        """GetCallerIdentity: the identity of the access key named in X-Amz-Credential."""
        body = json.dumps(
            {"GetCallerIdentityResponse": {"GetCallerIdentityResult": self.sts.identity()}}
        ).encode()
        self.sts.count()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class StandInSts:
    """Answers every GetCallerIdentity at once with the bench user, and counts them."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()
        handler = type("Handler", (_StsHandler,), {"sts": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The STS origin."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def count(self) -> None:
        """One more request."""
        with self._lock:
            self.calls += 1

    @staticmethod
    def identity() -> dict[str, str]:
        """The bench user."""
        arn = f"arn:aws:iam::{ACCOUNT}:user/bench"
        return {"Arn": arn, "Account": ACCOUNT, "UserId": "AIDABENCH"}

    @contextlib.contextmanager
    def running(self) -> Iterator[StandInSts]:
        """Serve while the block runs."""
        self._thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()


def make_token(origin: str, *, signed: datetime, key: str, n: int) -> str:
    """A token for `origin`, signed at `signed` with access key `key`; `n` makes it distinct."""
    from authd.token import encode

    stamp = signed.strftime("%Y%m%dT%H%M%SZ")
    return encode(
        f"{origin}/?Action=GetCallerIdentity&Version=2011-06-15&X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential={key}%2F{stamp[:8]}%2Fus-east-1%2Fsts%2Faws4_request"
        f"&X-Amz-Date={stamp}&X-Amz-Expires=60&X-Amz-SignedHeaders=host%3Bx-k8s-aws-id"
        f"&X-Amz-Signature={n:064x}"
    )


# --- 1. STS calls per token over 14 simulated minutes ------------------------------------------


def calls_per_token(sts: StandInSts, *, cache_size: int) -> tuple[int, int]:
    """Review TOKENS tokens 7 times each, 2 simulated minutes apart; (reviews, STS calls)."""
    from authd.config import FileConfig, MappingConfig
    from authd.mapping.chain import Backend, MapperChain
    from authd.mapping.file import MountedFileTable
    from authd.metrics import Metrics
    from authd.server.authenticator import Authenticator
    from authd.server.sts.client import StsClient
    from authd.server.sts.guard import StsProtection
    from authd.token import EndpointPolicy

    text = (
        f"clusterID: {CLUSTER}\nserver:\n  mapUsers:\n"
        f"  - userarn: arn:aws:iam::{ACCOUNT}:user/bench\n    username: bench\n"
    )
    table = MountedFileTable.from_config(
        MappingConfig.from_file_config(FileConfig.from_text(text, path="bench.yaml"))
    )
    start = datetime.now(UTC).replace(microsecond=0)
    clock = [start]
    tokens = [
        make_token(sts.url, signed=start, key="AKIABENCHEXAMPLE0000", n=n) for n in range(TOKENS)
    ]
    before = sts.calls

    async def main() -> int:
        reviews = 0
        async with httpx.AsyncHTTPTransport() as transport:
            authenticator = Authenticator(
                policy=EndpointPolicy.create(partition="aws", extra_origins=[sts.url]),
                sts=StsClient(transport, timeout=10),
                chain=MapperChain([Backend("MountedFile", table)]),
                cluster_ids=[CLUSTER],
                metrics=Metrics(process_collector=False),
                clock=lambda: clock[0],
                protection=StsProtection(cache_size=cache_size, qps=1e6, burst=10**6),
            )
            for step in range(REVIEWS_PER_TOKEN):
                clock[0] = start + step * REVIEW_EVERY
                for token in tokens:
                    verdict = await authenticator.authenticate(token)
                    if verdict.user.username != "bench":
                        raise BenchError(f"unexpected user {verdict.user.username}")
                    reviews += 1
        return reviews

    reviews = trio.run(main)
    return reviews, sts.calls - before


# --- 2. reviews/s on cache hits vs the trio+h11 yardstick --------------------------------------


def start_hit_daemon(
    stack: contextlib.ExitStack, work: Path, nginx: str
) -> tuple[subprocess.Popen[bytes], int, Path, ssl.SSLContext, str]:
    """nginx as STS and the real daemon, and one token it has just allowed: every later review
    of that token is an identity-cache hit. Returns (process, port, cert, TLS context, token)."""
    _, sts_port = start_nginx(stack, nginx, work)
    authd, port, cert = start_authd(stack, work, sts_port=sts_port)
    context = ssl.create_default_context(cafile=str(cert))
    token = make_token(
        f"http://127.0.0.1:{sts_port}", signed=datetime.now(UTC), key="AKIABENCHEXAMPLE0000", n=1
    )
    status, answer = post_review(port, context, token)
    if status != 200:
        raise BenchError(f"authd refused the bench token: {status} {answer}")
    return authd, port, cert, context, token


def cache_hit_rates(work: Path, stack: contextlib.ExitStack) -> dict[str, list[WrkResult]]:
    """wrk against authd (one token, so every review after the first is a hit) and trio+h11."""
    wrk, nginx = ensure_tools()
    authd, authd_port, cert, context, token = start_hit_daemon(stack, work, nginx)
    _, h11_port = start_yardstick(stack, "h11", work, cert=cert)
    targets = {"authd, cache hits (one token)": authd_port, "trio+h11 bare handler": h11_port}
    results: dict[str, list[WrkResult]] = {label: [] for label in targets}
    cpu: dict[str, float] = {}
    for round_no in range(1, ROUNDS + 1):
        for label, port in targets.items():
            run_wrk(wrk, port, ["constant", token], seconds=WARMUP_S)
            cpu0 = cpu_seconds(authd.pid)
            result = run_wrk(wrk, port, ["constant", token], seconds=MEASURE_S)
            if label.startswith("authd"):
                cpu[str(round_no)] = cpu_seconds(authd.pid) - cpu0
            if result.errors:
                raise BenchError(f"{label}: wrk saw {result.errors} errors")
            results[label].append(result)
            print(f"round {round_no}: {label}: {result.rate:.0f}/s", file=sys.stderr)
    hits = metric(authd_port, context, "authd_identity_cache_hits_total")
    misses = metric(authd_port, context, "authd_identity_cache_misses_total")
    if misses != 1:
        raise BenchError(f"expected exactly one cache miss, saw {misses} (hits {hits})")
    return results


def metric(port: int, context: ssl.SSLContext, name: str) -> float:
    """One unlabeled sample from authd's /metrics."""
    with httpx.Client(verify=context, timeout=10) as client:
        text = client.get(f"https://127.0.0.1:{port}/metrics").text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise BenchError(f"no {name} in authd's /metrics")


# --- 3. 5,000 nodes at once -------------------------------------------------------------------

# nginx as STS for the nodes: each token's access key is its node's instance ID, and the answer
# names the assumed-role session after it. (A Python stand-in in this process would share its
# GIL with 200 TLS client connections and become the bottleneck.)
NODE_STS_CONF = """\
worker_processes 1;
daemon off;
pid DIR/sts.pid;
error_log DIR/sts-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path DIR/sts-body;
  proxy_temp_path DIR/sts-proxy;
  fastcgi_temp_path DIR/sts-fastcgi;
  uwsgi_temp_path DIR/sts-uwsgi;
  scgi_temp_path DIR/sts-scgi;
  keepalive_requests 10000000;
  map $args $node {
    "~X-Amz-Credential=(?<key>i-[0-9a-f]+)" $key;
    default "none";
  }
  server {
    listen 127.0.0.1:PORT;
    location / {
      default_type application/json;
      return 200 'ANSWER';
    }
  }
}
"""


def start_node_sts(stack: contextlib.ExitStack, work: Path) -> str:
    """nginx answering each node's GetCallerIdentity; its origin."""
    _, nginx = ensure_tools()
    port = free_port()
    conf = work / "sts.conf"
    text = NODE_STS_CONF.replace("DIR", str(work)).replace("PORT", str(port))
    answer = json.dumps(
        {
            "GetCallerIdentityResponse": {
                "GetCallerIdentityResult": {
                    "Arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/Node/$node",
                    "Account": ACCOUNT,
                    "UserId": "AROANODE:$node",
                }
            }
        },
        separators=(",", ":"),
    )
    conf.write_text(text.replace("ANSWER", answer))
    argv = [nginx, "-c", str(conf), "-p", str(work), "-e", str(work / "sts-error.log")]
    process = spawn(stack, argv, log=work / "sts.out")
    wait_until(
        lambda: answers_http(port), what="nginx (STS)", process=process, log=work / "sts.out"
    )
    return f"http://127.0.0.1:{port}"


def start_moto(stack: contextlib.ExitStack, work: Path) -> str:
    """moto_server on a free port; its URL."""
    log = work / "moto.log"
    process = spawn(stack, [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", "0"], log=log)
    wait_until(
        lambda: MOTO_RUNNING.search(log.read_text(errors="replace")) is not None,
        what="moto_server",
        process=process,
        log=log,
    )
    found = MOTO_RUNNING.search(log.read_text(errors="replace"))
    assert found is not None
    return f"http://127.0.0.1:{found.group(1)}"


def run_instances(moto: str, count: int) -> dict[str, str]:
    """`count` instances in moto; {instance ID: private DNS name}."""
    import botocore.session

    ec2 = botocore.session.Session().create_client(
        "ec2",
        region_name="us-east-1",
        endpoint_url=moto,
        aws_access_key_id=MOTO_KEY,
        aws_secret_access_key=MOTO_SECRET,
    )
    names: dict[str, str] = {}
    while len(names) < count:
        batch = min(1000, count - len(names))
        answer = ec2.run_instances(ImageId="ami-12c6146b", MinCount=batch, MaxCount=batch)
        names.update({i["InstanceId"]: i["PrivateDnsName"] for i in answer["Instances"]})
    return names


def lookups_at_once(moto: str, instances: dict[str, str]) -> dict[str, float]:
    """The EC2 layer alone: every instance looked up at once in-process, as the daemon does."""
    from authd.metrics import Metrics
    from authd.server.ec2 import Ec2Limits, botocore_describer, open_private_dns_names

    metrics = Metrics(process_collector=False)
    names: dict[str, str] = {}

    async def main() -> float:
        describe = botocore_describer(region="us-east-1", endpoint_url=moto)
        start = time.perf_counter()
        async with (
            # Defaults, except the per-lookup wait: with all 5,000 queued at once, the last
            # batches wait out the rate limit and moto's time for the batches before them,
            # which on a slow run exceeds the daemon's 10 s (where they would be retried).
            open_private_dns_names(
                describe=describe, metrics=metrics, limits=Ec2Limits(timeout=120)
            ) as lookup,
            trio.open_nursery() as nursery,
        ):

            async def one(instance: str) -> None:
                names[instance] = await lookup.resolve(instance)

            for instance in instances:
                nursery.start_soon(one, instance)
        return time.perf_counter() - start

    with _env(AWS_ACCESS_KEY_ID=MOTO_KEY, AWS_SECRET_ACCESS_KEY=MOTO_SECRET):
        seconds = trio.run(main)
    if names != instances:
        raise BenchError("the EC2 layer returned wrong private DNS names")
    calls = metrics.registry.get_sample_value(
        "aws_iam_authenticator_ec2_describe_instances_calls_total"
    )
    return {"seconds": seconds, "calls": calls or 0.0, "nodes": float(len(instances))}


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    """Set environment variables for the block (botocore reads credentials from there)."""
    import os

    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def nodes_at_once(
    work: Path, stack: contextlib.ExitStack, moto: str, instances: dict[str, str]
) -> dict[str, float]:
    """Start the daemon with EC2 at moto and review every node's token at once."""
    sts = start_node_sts(stack, work)
    config = work / "nodes.yaml"
    config.write_text(
        f"clusterID: {CLUSTER}\nserver:\n  mapRoles:\n  - rolearn: {NODE_ROLE}\n"
        f"    username: {USERNAME}\n"
        "    groups: [system:bootstrappers, system:nodes]\n"
    )
    port = free_port()
    state = work / "nodes-state"
    argv = [str(BIN / "authd"), "server", "--config", str(config), "--state-dir", str(state)]
    argv += ["--generate-kubeconfig", str(work / "nodes-kubeconfig.yaml"), "--port", str(port)]
    argv += ["--extra-sts-endpoint", sts, "--sts-qps", "100000", "--sts-burst", "100000"]
    argv += ["--log-verbosity", "warning"]
    env = {
        "PATH": "/usr/bin:/bin",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ACCESS_KEY_ID": MOTO_KEY,
        "AWS_SECRET_ACCESS_KEY": MOTO_SECRET,
        "AWS_ENDPOINT_URL_EC2": moto,
    }
    log = work / "nodes-authd.log"
    process = spawn(stack, argv, log=log, env=env)
    wait_until(
        lambda: _answers(port, state / "cert.pem"),
        what="authd (nodes)",
        process=process,
        log=log,
    )
    context = ssl.create_default_context(cafile=str(state / "cert.pem"))
    signed = datetime.now(UTC)
    tokens: dict[str, str] = {}
    for n, instance in enumerate(instances):
        tokens[instance] = make_token(sts, signed=signed, key=instance, n=n)
    print(f"reviewing {len(tokens)} node tokens at once", file=sys.stderr)
    seconds, usernames = trio.run(_review_all, port, context, tokens)
    wrong = [i for i, name in instances.items() if usernames.get(i) != f"system:node:{name}"]
    if wrong:
        raise BenchError(f"{len(wrong)} nodes got a wrong answer, e.g. {usernames.get(wrong[0])}")
    calls = metric(port, context, "aws_iam_authenticator_ec2_describe_instances_calls_total")
    return {"seconds": seconds, "calls": calls, "nodes": float(len(instances))}


def _answers(port: int, cert: Path) -> bool:
    """Whether the daemon serves /healthz over TLS with the certificate it wrote."""
    if not cert.exists():
        return False
    try:
        context = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(verify=context, timeout=2) as client:
            return client.get(f"https://127.0.0.1:{port}/healthz").status_code == 200
    except (httpx.HTTPError, ssl.SSLError):
        return False


async def _review_all(
    port: int, context: ssl.SSLContext, tokens: dict[str, str]
) -> tuple[float, dict[str, str]]:
    """Send every node's review at once over CONNECTIONS connections (as many kubelets would
    through the API server's webhook client); (seconds to the last answer, usernames)."""
    usernames: dict[str, str] = {}
    queue = iter(tokens.items())
    # authd's own lean transport: httpx's default pool scans every pooled connection on each
    # request, which at 200 connections made this client the bottleneck (about 66 reviews/s,
    # so only a handful of lookups were ever pending when a DescribeInstances batch formed).
    transport = Http1Transport(ssl_context=context, max_connections=CONNECTIONS)
    async with httpx.AsyncClient(transport=transport, timeout=120) as client:

        async def worker() -> None:
            # One request in flight per connection, as a kubelet's webhook call would be.
            for instance, token in queue:
                body = {
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenReview",
                    "spec": {"token": token},
                }
                response = await client.post(f"https://127.0.0.1:{port}/authenticate", json=body)
                user = response.json()["status"].get("user", {})
                usernames[instance] = user.get("username", response.text[:200])

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(CONNECTIONS):
                nursery.start_soon(worker)
        return time.perf_counter() - start, usernames


# --- the run ----------------------------------------------------------------------------------


def run(*, runs: int) -> str:
    """Run all three parts and return the Markdown section.

    Raises:
        BenchError: a process did not start, a review was refused or wrong, or wrk saw errors.
    """
    del runs  # fixed rounds, as bench/server.py
    with (
        sigterm_unwinds(),
        contextlib.ExitStack() as stack,
        StandInSts().running() as sts,
    ):
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-sts-")))
        cached = calls_per_token(sts, cache_size=100_000)
        uncached = calls_per_token(sts, cache_size=0)
        print(f"STS calls: cached {cached}, uncached {uncached}", file=sys.stderr)
        rates = cache_hit_rates(work, stack)
        moto = start_moto(stack, work)
        instances = run_instances(moto, NODES)
        print(f"moto holds {len(instances)} instances", file=sys.stderr)
        layer = lookups_at_once(moto, instances)
        print(f"EC2 layer alone: {layer}", file=sys.stderr)
        nodes = nodes_at_once(work, stack, moto, instances)
    return render(cached=cached, uncached=uncached, rates=rates, nodes=nodes, layer=layer)


def render(
    *,
    cached: tuple[int, int],
    uncached: tuple[int, int],
    rates: dict[str, list[WrkResult]],
    nodes: dict[str, float],
    layer: dict[str, float],
) -> str:
    """The Markdown section."""
    per_token = cached[1] / TOKENS
    lines = [
        "## STS and EC2 protection",
        "",
        f"- Date: {report.now()}",
        f"- Machine: {report.machine()}",
        "- Command: `python -m bench sts`",
        "",
        "### STS calls per token over 14 minutes of API-server retries",
        "",
        f"{TOKENS} distinct tokens, each reviewed at minutes 0, 2, ..., 12 (the API server's "
        "2-minute cache of an allowed review), by the real `Authenticator` with a stepped clock, "
        "against a loopback STS stand-in that counts requests.",
        "",
        "| Server | reviews | STS calls | STS calls per token |",
        "|---|---:|---:|---:|",
        f"| authd (identity cache on, the default) | {cached[0]} | {cached[1]} | "
        f"**{per_token:.2f}** |",
        f"| authd with `--identity-cache-size 0` (upstream's behaviour) | {uncached[0]} | "
        f"{uncached[1]} | {uncached[1] / TOKENS:.2f} |",
        "",
        f"- Target 1 call per token (upstream: 7): {'met' if per_token == 1 else 'MISSED'}.",
        "",
        "### Reviews/s on cache hits, next to the bare trio+h11 yardstick",
        "",
        f"wrk, 2 threads, 16 keep-alive TLS connections, one token in every request (one miss, "
        f"then hits); per server and round {WARMUP_S} s warm-up then {MEASURE_S} s measured, "
        f"{ROUNDS} rounds interleaved; median round shown. Processes and wrk driver: "
        "bench/server.py's.",
        "",
        "| Server | reviews/s (median) | p50 (ms) | p99 (ms) | rounds |",
        "|---|---:|---:|---:|---|",
    ]
    medians: dict[str, float] = {}
    for label, results in rates.items():
        ordered = sorted(results, key=lambda r: r.rate)
        shown = ordered[len(ordered) // 2]
        medians[label] = statistics.median(r.rate for r in results)
        lines.append(
            f"| {label} | {shown.rate:.0f} | {shown.p50_ms:.2f} | {shown.p99_ms:.2f} | "
            f"{', '.join(f'{r.rate:.0f}' for r in results)} |"
        )
    authd_rate, bare_rate = list(medians.values())
    ratio = authd_rate / bare_rate
    lines += [
        "",
        f"- authd on cache hits / trio+h11: **{ratio:.2f}x** (target >= {HIT_TARGET}x: "
        f"{'met' if ratio >= HIT_TARGET else 'MISSED'}).",
        "",
        f"### {int(nodes['nodes']):,} nodes registering at once with `{{{{EC2PrivateDNSName}}}}`",
        "",
        "EC2 flags at their defaults (qps 15, burst 5, 10 ms fill window, 4 calls in flight); "
        f"moto_server as EC2 holding {int(nodes['nodes']):,} instances made by RunInstances; "
        "every answer checked against the name moto gave the instance.",
        "",
        "| Path | DescribeInstances calls | time to answer all (s) | reviews/s |",
        "|---|---:|---:|---:|",
        f"| EC2 layer alone: {int(layer['nodes']):,} lookups started at once (in-process, "
        f"`authd.server.ec2`) | **{int(layer['calls'])}** | {layer['seconds']:.1f} | - |",
        f"| Real daemon: {int(nodes['nodes']):,} node TokenReviews over {CONNECTIONS} TLS "
        "connections (one in flight each), nginx as STS naming each node's "
        f"`assumed-role/Node/<instance-id>` | {int(nodes['calls'])} | {nodes['seconds']:.1f} | "
        f"{nodes['nodes'] / nodes['seconds']:.0f} |",
        "",
        "- One call per node would be 5,000 calls (over 5 minutes at 15 calls/s).",
        "- A batch takes every lookup pending when EC2 has room (a rate token and an in-flight "
        "slot), up to 100: started at once, 5,000 lookups make 50 calls. Through the daemon "
        f"batches averaged {nodes['nodes'] / max(nodes['calls'], 1):.1f} IDs: the 200 "
        "closed-loop connections keep fewer lookups pending than 5,000 at once, and each answer "
        "frees a connection for the next node. (The client uses authd's Http1Transport: httpx's "
        "default pool scans every pooled connection per request and, at 200 connections, had "
        "made the client itself the bottleneck, at about 66 reviews/s and 5 IDs a batch.) A "
        "longer `--ec2-batch-window` trades latency for fuller batches.",
    ]
    return "\n".join(lines) + "\n"
