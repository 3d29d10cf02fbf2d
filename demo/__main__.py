"""Run the demo: local STS, authd server, tokens from two clients, TokenReviews, decisions.

Everything runs on 127.0.0.1 and is stopped at the end; no AWS account is needed. The local STS
is moto behind the signature-checking front the tests use (tests/fakes), so a token for the wrong
cluster is refused exactly as real STS refuses it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.daemon import free_port
from tests.fakes.moto import MotoAws, start_moto_server
from tests.fakes.sts_front import StsFront

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CLUSTER = "authd-demo"


def main() -> int:
    """Run every step; return 0 when each decision came out as expected."""
    with tempfile.TemporaryDirectory(prefix="authd-demo-") as tmp:
        work = Path(tmp)
        moto = start_moto_server(work / "moto.log")
        front = StsFront(moto.url)
        front.start()
        server: subprocess.Popen[str] | None = None
        try:
            step(f"local STS: moto on {moto.url}, signature-checking front on {front.url}")
            aws = MotoAws(front.url)
            dev, stranger, role_arn = make_identities(aws)
            server, port = start_server(work, front.url)
            cert = work / "state" / "cert.pem"
            step(
                f"authd server on https://127.0.0.1:{port} (kubeconfig: {work / 'kubeconfig.yaml'})"
            )
            env = client_env(work, front.url)
            cases = [
                ("IAM user demo-dev, `authd token`", authd_token(env | dev), True),
                ("IAM user demo-dev, `aws eks get-token`", awscli_token(env | dev), True),
                (
                    "role demo-admin as alice@example.com, `authd token -r`",
                    authd_token(env | dev, "-r", role_arn, "-s", "alice@example.com"),
                    True,
                ),
                ("IAM user stranger (no mapping)", authd_token(env | stranger), False),
                (
                    "demo-dev, token made for another cluster",
                    authd_token(env | dev, cluster="another-cluster"),
                    False,
                ),
                ("a token that is not one", "k8s-aws-v1.bm90IGEgdG9rZW4", False),
            ]
            log = work / "server.log"
            ok = all(
                show(label, review(port, cert, token, log), want) for label, token, want in cases
            )
            step("metrics (excerpt)")
            print_metrics(port, cert)
        finally:
            if server is not None:
                server.send_signal(signal.SIGTERM)
                code = server.wait(timeout=20)
                step(f"authd server stopped (exit {code})")
            front.stop()
            moto.stop()
    print("\ndemo finished: every decision as expected" if ok else "\ndemo: UNEXPECTED decision")
    return 0 if ok else 1


def step(text: str) -> None:
    """Print one step heading."""
    print(f"\n==> {text}", flush=True)


def make_identities(aws: MotoAws) -> tuple[dict[str, str], dict[str, str], str]:
    """The IAM users demo-dev and stranger (their keys as env) and the role demo-admin's ARN."""
    users = []
    for name in ("demo-dev", "stranger"):
        aws.iam.create_user(UserName=name)
        key = aws.iam.create_access_key(UserName=name)["AccessKey"]
        users.append(
            {
                "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
            }
        )
    trust = (
        '{"Version":"2012-10-17","Statement":[{"Effect":"Allow",'
        '"Principal":{"AWS":"arn:aws:iam::123456789012:root"},"Action":"sts:AssumeRole"}]}'
    )
    role = aws.iam.create_role(RoleName="demo-admin", AssumeRolePolicyDocument=trust)
    step(
        "created IAM users demo-dev and stranger, and role demo-admin (config/demo.yaml maps them)"
    )
    return users[0], users[1], str(role["Role"]["Arn"])


def start_server(work: Path, sts_url: str) -> tuple[subprocess.Popen[str], int]:
    """Start `authd server` on config/demo.yaml and wait until it listens."""
    port = free_port()
    log = open(work / "server.log", "w")  # noqa: SIM115 - the child writes it until stopped
    server = subprocess.Popen(
        [
            str(BIN / "authd"),
            "server",
            f"--config={ROOT / 'config' / 'demo.yaml'}",
            f"--extra-sts-endpoint={sts_url}",
            f"--state-dir={work / 'state'}",
            f"--generate-kubeconfig={work / 'kubeconfig.yaml'}",
            f"--port={port}",
        ],
        env={**os.environ, "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"},
        stdout=subprocess.DEVNULL,
        stderr=log,
        text=True,
    )
    deadline = time.monotonic() + 30
    while '"listening"' not in (work / "server.log").read_text():
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("authd server did not start:\n" + (work / "server.log").read_text())
        time.sleep(0.05)
    return server, port


def client_env(work: Path, sts_url: str) -> dict[str, str]:
    """A client environment with STS at the local front and a private HOME."""
    home = work / "home"
    home.mkdir(mode=0o700)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "AWS_ENDPOINT_URL_STS": sts_url,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def authd_token(env: dict[str, str], *args: str, cluster: str = CLUSTER) -> str:
    """A token from `authd token`."""
    out = subprocess.run(
        [str(BIN / "authd"), "token", "-i", cluster, "--token-only", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip()


def awscli_token(env: dict[str, str]) -> str:
    """A token from awscli's `aws eks get-token`."""
    out = subprocess.run(
        [str(BIN / "aws"), "eks", "get-token", "--cluster-name", CLUSTER, "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return str(json.loads(out.stdout)["status"]["token"])


Answer = tuple[int, dict[str, object], dict[str, object]]


def review(port: int, cert: Path, token: str, log: Path) -> Answer:
    """Send one TokenReview as kube-apiserver would; (HTTP status, answer status, log line).

    A denial's answer does not say why (so kube-apiserver caches it); the daemon's review log
    line does, so the demo reads the line this review wrote.
    """
    before = len(review_lines(log))
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token},
    }
    context = ssl.create_default_context(cafile=str(cert))
    response = httpx.post(f"https://localhost:{port}/authenticate", json=body, verify=context)
    deadline = time.monotonic() + 10
    while len(lines := review_lines(log)) <= before and time.monotonic() < deadline:
        time.sleep(0.02)
    line = lines[before] if len(lines) > before else {}
    return response.status_code, response.json()["status"], line


def review_lines(log: Path) -> list[dict[str, object]]:
    """The review lines the daemon has logged so far, parsed."""
    found = []
    for text in log.read_text(errors="replace").splitlines():
        if '"event":"review"' in text.replace(" ", ""):
            found.append(json.loads(text))
    return found


def show(label: str, answer: Answer, want: bool) -> bool:
    """Print one decision readably; True when it is the expected one."""
    status, doc, line = answer
    step(label)
    if doc.get("authenticated"):
        user = doc["user"]
        assert isinstance(user, dict)
        groups = user.get("groups", [])
        print(f"    ALLOW  HTTP {status}  username={user['username']}  groups={groups}")
    else:
        reason, error = line.get("reason", "?"), str(line.get("error", ""))
        code = re.search(r"<Code>(\w+)</Code>", error)
        detail = f"{reason}: STS said {code.group(1)}" if code else f"{reason}: {error}"
        print(f"    DENY   HTTP {status}  {detail}")
    return bool(doc.get("authenticated")) == want


def print_metrics(port: int, cert: Path) -> None:
    """Show the review counters the daemon exported."""
    context = ssl.create_default_context(cafile=str(cert))
    text = httpx.get(f"https://localhost:{port}/metrics", verify=context).text
    for line in text.splitlines():
        wanted = line.startswith(("authd_reviews_total", "aws_iam_authenticator_sts_responses"))
        if wanted and not line.endswith(" 0.0"):
            print("    " + line)


if __name__ == "__main__":
    raise SystemExit(main())
