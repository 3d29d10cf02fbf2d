"""Kubernetes backends: apply-to-review latency, 10,000 IAMIdentityMappings, 5,000-entry aws-auth.

Everything runs against the fake API server of tests/fakes (real HTTPS on 127.0.0.1, the real
list/watch protocol), in this process's threads.

- Apply to review: the real daemon process (`authd server --backend-mode=EKSConfigMap,CRD`, its
  own kubeconfig for the fake) and a loopback STS stand-in that answers GetCallerIdentity at
  once, choosing the caller by the token's access key. For each trial the clock starts, an edit
  mapping the caller to a new username is written, and TokenReviews are posted back to back to
  the webhook until one answers with that username. The write is `kubectl apply` (a process, so
  its own start-up and two requests are in the figure), or the same edit stored directly in the
  fake "by another client" (the daemon's part alone). aws-auth and IAMIdentityMapping alternate.
- 10,000 IAMIdentityMappings (with `status.canonicalARN` already written) and a 5,000-entry
  aws-auth: the real `CrdBackend`/`ConfigMapBackend` in this process on a real `KubeClient`.
  Initial list = from start to the first table published; an edit = from the fake storing it to
  the backend's table answering with it. Memory = what tracemalloc sees retained after the
  first list (informer objects plus table), measured in a separate run so tracing does not
  slow the timed one.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import structlog
import trio

from authd.client.presign import AwsCredentials, Endpoint, make_token
from authd.identity import Identity
from authd.mapping.chain import Backend
from authd.mapping.configmap import parse_configmap
from authd.metrics import Metrics
from authd.server.kube.connection import Connection, open_client
from authd.server.kubebackends import ConfigMapBackend, CrdBackend
from bench import report
from bench.reload import LogWatch, free_port, sts_stand_in
from tests.fakes.apiserver import ADMIN_TOKEN, FakeApiServer

SECTION = "kube"
DESCRIPTION = "Kubernetes backends: kubectl apply to first review, 10k CRD objects, 5k aws-auth"
ACCOUNT = "123456789012"
CALLERS = {  # access key -> the ARN the STS stand-in answers with
    "AKIABENCHCONFIGMAP00": f"arn:aws:iam::{ACCOUNT}:user/via-configmap",
    "AKIABENCHCRD00000000": f"arn:aws:iam::{ACCOUNT}:user/via-crd",
}
CM_KEY, CRD_KEY = CALLERS
TRIALS = 50
CRD_OBJECTS = 10_000
CONFIGMAP_ENTRIES = 5_000
EDITS = 20
TARGETS = {"apply_p99_s": 1.0, "configmap_5k_s": 1.0}
MAPPING_API = "iamauthenticator.k8s.aws/v1alpha1"


# --------------------------------------------------------------------------------------------
# Objects.


def aws_auth(username: str, *, entries: int = 0, tag: str = "") -> dict[str, Any]:
    """aws-auth mapping the ConfigMap caller to `username`, plus `entries` other users."""
    lines = [f"- userarn: {CALLERS[CM_KEY]}", f"  username: {username}", "  groups: [bench]"]
    for i in range(entries):
        lines += [
            f"- userarn: arn:aws:iam::{i % 10**12:012d}:user/User{i}",
            f"  username: user{i}{tag}",
            "  groups: [dev, view]",
        ]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "aws-auth", "namespace": "kube-system"},
        "data": {"mapUsers": "\n".join(lines) + "\n"},
    }


def identity_mapping(name: str, arn: str, username: str, *, status: bool) -> dict[str, Any]:
    """An IAMIdentityMapping (with `status.canonicalARN` written when `status`)."""
    obj: dict[str, Any] = {
        "apiVersion": MAPPING_API,
        "kind": "IAMIdentityMapping",
        "metadata": {"name": name},
        "spec": {"arn": arn, "username": username, "groups": ["bench"]},
    }
    if status:
        obj["status"] = {"canonicalARN": arn.lower()}
    return obj


def user(arn: str) -> Identity:
    """A verified IAM user identity."""
    return Identity(
        arn=arn,
        canonical_arn=arn,
        account_id=arn.split(":")[4],
        user_id="AIDABENCH",
        session_name="",
        access_key_id="AKIABENCH",
    )


def pct(samples: list[float], q: float) -> float:
    """The q-th percentile, nearest rank."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * int(q) // 100))
    return ordered[rank - 1]


# --------------------------------------------------------------------------------------------
# Apply to first review, through the real daemon.


class _Sts(BaseHTTPRequestHandler):
    """GetCallerIdentity answering with the ARN that belongs to the token's access key."""

    def do_GET(self) -> None:
        """Answer as STS answers a good GetCallerIdentity."""
        query = parse_qs(urlsplit(self.path).query)
        key = query.get("X-Amz-Credential", [""])[0].split("/")[0]
        arn = CALLERS.get(key, CALLERS[CM_KEY])
        body = json.dumps(
            {
                "GetCallerIdentityResponse": {
                    "GetCallerIdentityResult": {
                        "Arn": arn,
                        "Account": ACCOUNT,
                        "UserId": "AIDABENCH",
                    }
                }
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@dataclass
class ApplyLatency:
    """Seconds from the write to the first review answering with it, per kind of write."""

    samples: dict[str, list[float]] = field(default_factory=dict)
    reviews: int = 0
    kubectl: str = ""


class _Reviewer:
    """Posts TokenReviews to the daemon for one caller until the username is the wanted one."""

    def __init__(self, client: httpx.Client, token: str) -> None:
        self.client = client
        self.body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        }
        self.count = 0

    def username(self) -> object:
        """The username the daemon answers with now (None when denied)."""
        self.count += 1
        status = self.client.post("/authenticate", json=self.body).json()["status"]
        return status.get("user", {}).get("username")

    def until(self, wanted: str, *, timeout: float = 30.0) -> None:
        """Review back to back until the answer is `wanted`."""
        deadline = time.monotonic() + timeout
        while self.username() != wanted:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no review answered {wanted!r} within {timeout:g} s")


def apply_latency(work: Path, trials: int) -> ApplyLatency:
    """Run the daemon against the fake and time `trials` writes of each kind to a review."""
    result = ApplyLatency()
    kubectl = shutil.which("kubectl")
    with FakeApiServer() as api, sts_stand_in(_Sts) as sts_port:
        api.put_object(aws_auth("u0"))
        api.put_object(identity_mapping("bench", CALLERS[CRD_KEY], "c0", status=True))
        kubeconfig = api.write_kubeconfig(work / "kubeconfig")
        port = free_port()
        argv = [
            sys.executable, "-m", "authd", "server", "--cluster-id=bench",
            f"--kubeconfig={kubeconfig}", "--backend-mode=EKSConfigMap,CRD",
            f"--port={port}", f"--state-dir={work / 'state'}",
            f"--generate-kubeconfig={work / 'webhook-kubeconfig.yaml'}",
            f"--extra-sts-endpoint=http://127.0.0.1:{sts_port}",
        ]  # fmt: skip
        env = {**os.environ, "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
        proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
        try:
            LogWatch(proc.stderr).wait("listening", 1)
            context = ssl.create_default_context(cafile=str(work / "state" / "cert.pem"))
            endpoint = Endpoint(url=f"http://127.0.0.1:{sts_port}", signing_region="us-east-1")

            def token(key: str) -> str:
                creds = AwsCredentials(access_key_id=key, secret_access_key="unused")  # noqa: S106
                return make_token(creds, cluster_id="bench", endpoint=endpoint).token

            base = f"https://127.0.0.1:{port}"
            with httpx.Client(base_url=base, verify=context, timeout=10) as client:
                reviewers = {k: _Reviewer(client, token(k)) for k in CALLERS}
                reviewers[CM_KEY].until("u0")
                reviewers[CRD_KEY].until("c0")
                writers = _writers(api, work, kubectl)
                for name in writers:
                    result.samples[name] = []
                for trial in range(1, trials + 1):
                    for name, (key, write) in writers.items():
                        wanted = f"{name[:2]}{trial}"
                        start = time.perf_counter()
                        write(wanted)
                        reviewers[key].until(wanted)
                        result.samples[name].append(time.perf_counter() - start)
                result.reviews = sum(r.count for r in reviewers.values())
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    if kubectl is not None:
        version = subprocess.run(
            [kubectl, "version", "--client", "-o", "json"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        with contextlib.suppress(ValueError, KeyError):
            result.kubectl = json.loads(version.stdout)["clientVersion"]["gitVersion"]
    return result


Write = Callable[[str], None]


def _writers(api: FakeApiServer, work: Path, kubectl: str | None) -> dict[str, tuple[str, Write]]:
    """The kinds of write, by label: kubectl apply (when installed) and a direct store."""
    crd = CALLERS[CRD_KEY]

    def stored_cm(name: str) -> None:
        api.put_object(aws_auth(name))

    def stored_crd(name: str) -> None:
        api.put_object(identity_mapping("bench", crd, name, status=True))

    writers: dict[str, tuple[str, Write]] = {}
    if kubectl is not None:
        kubeconfig = api.write_kubeconfig(work / "kubectl-kubeconfig", token=ADMIN_TOKEN)
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(work)}

        def apply(obj: dict[str, Any]) -> None:
            subprocess.run(
                [kubectl, f"--kubeconfig={kubeconfig}", f"--cache-dir={work}/kubectl-cache",
                 "apply", "-f", "-"],
                input=json.dumps(obj), env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip

        writers["a1 kubectl apply, aws-auth"] = (CM_KEY, lambda n: apply(aws_auth(n)))
        writers["a2 kubectl apply, IAMIdentityMapping"] = (
            CRD_KEY,
            lambda n: apply(identity_mapping("bench", crd, n, status=False)),
        )
    writers["s1 stored in the API server, aws-auth"] = (CM_KEY, stored_cm)
    writers["s2 stored in the API server, IAMIdentityMapping"] = (CRD_KEY, stored_crd)
    return writers


# --------------------------------------------------------------------------------------------
# Big collections, in process.


@dataclass
class BigFigures:
    """Times in seconds, memory in MiB."""

    crd_list: float = 0.0
    crd_edits: list[float] = field(default_factory=list)
    crd_retained: float = 0.0
    cm_parse: list[float] = field(default_factory=list)
    cm_list: float = 0.0
    cm_edits: list[float] = field(default_factory=list)
    cm_retained: float = 0.0
    cm_bytes: int = 0


def _lookup(backend: Backend, arn: str) -> str | None:
    entry = backend.table.lookup(user(arn)) if backend.table is not None else None
    return entry.username if entry is not None else None


async def _follow(
    api: FakeApiServer, kind: str, edit: Callable[[int], tuple[str, str]], edits: int
) -> tuple[float, list[float], float]:
    """Start the backend on the fake; (first list s, edit-to-applied s each, retained MiB).

    `edit(k)` stores edit k in the fake and returns (ARN, username) that shows it applied.
    Retained memory comes from a second, traced start (tracing slows the timed one).
    """
    connection = Connection(server=api.url, ssl_context=api.client_context(), token=ADMIN_TOKEN)
    samples: list[float] = []
    first = 0.0
    retained = 0.0
    for traced in (False, True):
        backend = Backend(kind)
        gc.collect()
        if traced:
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
        async with open_client(connection) as client, trio.open_nursery() as nursery:
            metrics = Metrics(process_collector=False)
            cls = ConfigMapBackend if kind == "EKSConfigMap" else CrdBackend
            source = cls(backend=backend, client=client, metrics=metrics)
            start = time.perf_counter()
            await nursery.start(source.run)
            if not traced:
                first = time.perf_counter() - start
                for k in range(1, edits + 1):
                    begin = time.perf_counter()
                    arn, wanted = await trio.to_thread.run_sync(edit, k)
                    while _lookup(backend, arn) != wanted:  # noqa: ASYNC110 - a table swap
                        await trio.sleep(0.0005)
                    samples.append(time.perf_counter() - begin)
            else:
                gc.collect()
                retained = (tracemalloc.get_traced_memory()[0] - base) / 2**20
                tracemalloc.stop()
            nursery.cancel_scope.cancel()
    return first, samples, retained


async def big(runs: int) -> BigFigures:
    """10,000 IAMIdentityMappings and a 5,000-entry aws-auth, followed by the real backends."""
    figures = BigFigures()
    with FakeApiServer() as api:
        arns = [f"arn:aws:iam::{i % 10**12:012d}:user/User{i}" for i in range(CRD_OBJECTS)]
        for i, arn in enumerate(arns):
            api.put_object(identity_mapping(f"m{i}", arn, f"user{i}", status=True))

        def crd_edit(k: int) -> tuple[str, str]:
            i = (k * 7919) % CRD_OBJECTS
            api.put_object(identity_mapping(f"m{i}", arns[i], f"edited{k}", status=True))
            return arns[i], f"edited{k}"

        figures.crd_list, figures.crd_edits, figures.crd_retained = await _follow(
            api, "CRD", crd_edit, EDITS
        )

    configmap = aws_auth("u0", entries=CONFIGMAP_ENTRIES)
    data = configmap["data"]
    figures.cm_bytes = len(data["mapUsers"].encode())
    for _ in range(max(3, runs // 2)):
        start = time.perf_counter()
        version = parse_configmap(data)
        figures.cm_parse.append(time.perf_counter() - start)
        assert not version.rejected
    with FakeApiServer() as api:
        api.put_object(configmap)
        last = f"arn:aws:iam::{CONFIGMAP_ENTRIES - 1:012d}:user/User{CONFIGMAP_ENTRIES - 1}"

        def cm_edit(k: int) -> tuple[str, str]:
            api.put_object(aws_auth("u0", entries=CONFIGMAP_ENTRIES, tag=f"-v{k}"))
            return last, f"user{CONFIGMAP_ENTRIES - 1}-v{k}"

        figures.cm_list, figures.cm_edits, figures.cm_retained = await _follow(
            api, "EKSConfigMap", cm_edit, max(5, EDITS // 2)
        )
    return figures


# --------------------------------------------------------------------------------------------
# Report.


def run(*, runs: int) -> str:
    """Measure everything and return the Markdown section."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    load = os.getloadavg()[0]
    trials = max(TRIALS, runs)
    with tempfile.TemporaryDirectory(prefix="authd-bench-kube-") as tmp:
        latency = apply_latency(Path(tmp), trials)
    figures = trio.run(big, runs)
    return render(latency, figures, trials=trials, runs=runs, load=load)


def _ms(value: float) -> str:
    return f"{value * 1000:.1f} ms"


def _verdict(value: float, limit: float, text: str) -> str:
    return f"{text}: {'met' if value < limit else 'MISSED'}"


def render(latency: ApplyLatency, f: BigFigures, *, trials: int, runs: int, load: float) -> str:
    """The Markdown section."""
    kubectl = f" (kubectl {latency.kubectl})" if latency.kubectl else " (kubectl not installed)"
    lines = [
        "## Kubernetes backends",
        "",
        f"- Date: {report.now()}",
        f"- Machine: {report.machine()}; 1-minute load average before the run: {load:.2f} "
        "(other work on the machine shows in p99 and max)",
        f"- Command: `python -m bench kube --runs {runs}`: the fake API server of tests/fakes "
        "(HTTPS on 127.0.0.1), the real daemon process for the review latency, the real "
        "backends in process for the big collections",
        "",
        f"From a write to the first TokenReview that answers with it ({trials} trials each, "
        f"reviews posted back to back, {latency.reviews:,} reviews in all){kubectl}:",
        "",
        "| Write | median | p99 | max | target |",
        "|---|---:|---:|---:|---|",
    ]
    for name, samples in latency.samples.items():
        label = name.split(" ", 1)[1]
        target = "-"
        if name.startswith("a"):
            target = _verdict(pct(samples, 99), TARGETS["apply_p99_s"], "p99 < 1 s")
        lines.append(
            f"| {label} | {_ms(statistics.median(samples))} | {_ms(pct(samples, 99))} "
            f"| {_ms(max(samples))} | {target} |"
        )
    cm_apply = max(f.cm_edits) if f.cm_edits else 0.0
    lines += [
        "",
        "`kubectl apply` rows include kubectl's own start-up and its GET + PATCH; the "
        '"stored" rows are the daemon\'s part alone (watch event, parse, swap, next review).',
        "",
        "Big collections (real `CrdBackend` / `ConfigMapBackend`, real `KubeClient`):",
        "",
        "| What | median | p99 | max | target |",
        "|---|---:|---:|---:|---|",
        f"| {CRD_OBJECTS:,} IAMIdentityMappings: initial list to table published | "
        f"{_ms(f.crd_list)} | - | - | - |",
        f"| one IAMIdentityMapping edit among {CRD_OBJECTS:,}: stored to applied "
        f"({len(f.crd_edits)} edits) | {_ms(statistics.median(f.crd_edits))} "
        f"| {_ms(pct(f.crd_edits, 99))} | {_ms(max(f.crd_edits))} | - |",
        f"| `parse_configmap`, {CONFIGMAP_ENTRIES:,}-entry aws-auth "
        f"({f.cm_bytes / 1024:.0f} KiB, {len(f.cm_parse)} runs, best {_ms(min(f.cm_parse))}) | "
        f"{_ms(statistics.median(f.cm_parse))} | - | {_ms(max(f.cm_parse))} | - |",
        f"| {CONFIGMAP_ENTRIES:,}-entry aws-auth: initial list to table published | "
        f"{_ms(f.cm_list)} | - | - | - |",
        f"| {CONFIGMAP_ENTRIES:,}-entry aws-auth edit: stored to applied "
        f"({len(f.cm_edits)} edits) | {_ms(statistics.median(f.cm_edits))} | - "
        f"| {_ms(cm_apply)} | {_verdict(cm_apply, TARGETS['configmap_5k_s'], 'max < 1 s')} |",
        "",
        f"Memory retained after the first list (tracemalloc, in process: the informer's "
        f"objects and the table): {CRD_OBJECTS:,} IAMIdentityMappings {f.crd_retained:.1f} MiB; "
        f"the {CONFIGMAP_ENTRIES:,}-entry aws-auth {f.cm_retained:.1f} MiB.",
    ]
    return "\n".join(lines) + "\n"
