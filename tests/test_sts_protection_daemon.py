"""STS and EC2 protection through the real daemon process.

moto (behind the signature-checking front) is STS and EC2 for the identity tests: a token
reviewed seven times reaches STS once, a node's username carries the private DNS name moto gave
its instance, and a token signed for an older cluster ID is accepted during a rotation. The STS
stand-in is STS for the fault tests: throttling, resets, 5xx, a stalled STS and authd's own
rate limit, each seen as the API server would see it (status, Retry-After, reason).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunAuthd
from tests.daemon import Daemon, base_env
from tests.fakes.moto import ADMIN_KEY, ADMIN_SECRET, IamRole, IamUser, MotoServer
from tests.fakes.sts_front import StsFront
from tests.fakes.sts_standin import RESET, THROTTLE, UNAVAILABLE, Fault, StsStandIn

CLUSTER = "protect-cluster"


def review(daemon: Daemon, token: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    """POST a TokenReview; (status, response headers, the answer's status section)."""
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token},
    }
    with daemon.client() as client:
        response = client.post("/authenticate", json=body)
    return response.status_code, dict(response.headers), response.json()["status"]


def metric(daemon: Daemon, line_start: str) -> float:
    """The value of the /metrics sample whose line starts with `line_start`."""
    with daemon.client() as client:
        text = client.get("/metrics").text
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {line_start!r} in /metrics")


def presigned_calls(front: StsFront) -> int:
    """GetCallerIdentity calls (presigned GETs) the front has seen."""
    return sum(1 for seen in list(front.seen) if seen.presigned)


def authd_token(run_authd: RunAuthd, env: dict[str, str], *args: str) -> str:
    """`authd token --token-only ARGS` with `env`."""
    out = run_authd(["token", "--token-only", *args], env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def start(tmp_path: Path, config: str, *args: str, **env: str) -> Daemon:
    """The daemon with `config` as its config file, listening."""
    path = tmp_path / "config.yaml"
    path.write_text(config)
    daemon = Daemon([f"--config={path}", *args], state=tmp_path, env=base_env(**env))
    daemon.wait_for("listening")
    return daemon


@pytest.fixture
def stopper() -> Iterator[list[Daemon]]:
    """Daemons to stop (and check they exit 0) at the end of the test."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        assert daemon.stop() == 0


# --- moto as STS and EC2 ----------------------------------------------------------------------


def test_seven_reviews_of_one_token_reach_sts_once(
    *,
    tmp_path: Path,
    sts_front: StsFront,
    iam_user: IamUser,
    client_env: dict[str, str],
    run_authd: RunAuthd,
    stopper: list[Daemon],
) -> None:
    """The API server's retries over a token's life (7 upstream) cost one GetCallerIdentity."""
    config = f"""\
clusterID: {CLUSTER}
server:
  mapUsers:
  - userarn: {iam_user.arn}
    username: dev
"""
    daemon = start(tmp_path, config, f"--extra-sts-endpoint={sts_front.url}")
    stopper.append(daemon)
    token = authd_token(run_authd, {**client_env, **iam_user.env()}, "-i", CLUSTER)
    before = presigned_calls(sts_front)
    for _ in range(7):
        status, _, answer = review(daemon, token)
        assert (status, answer["user"]["username"]) == (200, "dev")
    assert presigned_calls(sts_front) == before + 1
    assert metric(daemon, "authd_identity_cache_hits_total") == 6
    assert metric(daemon, "authd_identity_cache_misses_total") == 1
    assert metric(daemon, 'authd_sts_calls_total{outcome="ok"}') == 1


def test_node_username_carries_its_ec2_private_dns_name(
    *,
    tmp_path: Path,
    moto_server: MotoServer,
    sts_front: StsFront,
    iam_user: IamUser,
    iam_role: IamRole,
    client_env: dict[str, str],
    run_authd: RunAuthd,
    stopper: list[Daemon],
) -> None:
    """A node's role session named by its instance ID maps to system:node:<private DNS name>."""
    import botocore.session

    ec2 = botocore.session.Session().create_client(
        "ec2",
        region_name="us-east-1",
        endpoint_url=moto_server.url,
        aws_access_key_id=ADMIN_KEY,
        aws_secret_access_key=ADMIN_SECRET,
    )
    [instance] = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"]
    config = f"""\
clusterID: {CLUSTER}
server:
  mapRoles:
  - rolearn: {iam_role.arn}
    username: system:node:{{{{EC2PrivateDNSName}}}}
    groups: [system:bootstrappers, system:nodes]
"""
    daemon = start(
        tmp_path,
        config,
        f"--extra-sts-endpoint={sts_front.url}",
        AWS_ACCESS_KEY_ID=ADMIN_KEY,
        AWS_SECRET_ACCESS_KEY=ADMIN_SECRET,
        AWS_ENDPOINT_URL_EC2=moto_server.url,
    )
    stopper.append(daemon)
    env = {**client_env, **iam_user.env()}
    token = authd_token(
        run_authd, env, "-i", CLUSTER, "-r", iam_role.arn, "-s", instance["InstanceId"]
    )
    status, _, answer = review(daemon, token)
    assert status == 200, answer
    assert answer["user"]["username"] == f"system:node:{instance['PrivateDnsName']}"
    assert answer["user"]["username"].endswith(".ec2.internal")
    assert metric(daemon, "aws_iam_authenticator_ec2_describe_instances_calls_total") == 1
    bad = authd_token(
        run_authd, env, "-i", CLUSTER, "-r", iam_role.arn, "-s", "i-0000000000000000a"
    )
    seen = len(daemon.events("review"))
    status, _, answer = review(daemon, bad)
    assert status == 200
    assert answer["authenticated"] is False
    line = daemon.wait_for("review", count=seen + 1)[seen]
    assert line["reason"] == "template_error"
    assert "i-0000000000000000a not found" in str(line["error"])


def test_token_for_the_older_cluster_id_is_accepted_during_rotation(
    *,
    tmp_path: Path,
    sts_front: StsFront,
    iam_user: IamUser,
    client_env: dict[str, str],
    run_authd: RunAuthd,
    stopper: list[Daemon],
) -> None:
    """clusterID [new, old]: an old-ID token costs two calls once, then is served from cache."""
    config = f"""\
clusterID: [{CLUSTER}-new, {CLUSTER}-old]
server:
  mapUsers:
  - userarn: {iam_user.arn}
    username: dev
"""
    daemon = start(tmp_path, config, f"--extra-sts-endpoint={sts_front.url}")
    stopper.append(daemon)
    env = {**client_env, **iam_user.env()}
    old = authd_token(run_authd, env, "-i", f"{CLUSTER}-old")
    new = authd_token(run_authd, env, "-i", f"{CLUSTER}-new")
    before = presigned_calls(sts_front)
    assert review(daemon, old)[0] == 200
    assert review(daemon, old)[2]["authenticated"] is True
    assert presigned_calls(sts_front) == before + 2
    assert review(daemon, new)[2]["authenticated"] is True
    assert presigned_calls(sts_front) == before + 3
    foreign = authd_token(run_authd, env, "-i", "someone-else")
    seen = len(daemon.events("review"))
    status, _, answer = review(daemon, foreign)
    assert (status, answer) == (200, {"authenticated": False, "user": {}})
    assert daemon.wait_for("review", count=seen + 1)[seen]["reason"] == "sts_rejected"


def test_report_denial_reason_puts_the_reason_in_the_answer(
    *,
    tmp_path: Path,
    sts_front: StsFront,
    iam_user: IamUser,
    client_env: dict[str, str],
    run_authd: RunAuthd,
    stopper: list[Daemon],
) -> None:
    """With --report-denial-reason a definitive denial carries `<reason>: <detail>` again."""
    config = f"clusterID: {CLUSTER}\nserver:\n  mapUsers: []\n"
    daemon = start(
        tmp_path, config, f"--extra-sts-endpoint={sts_front.url}", "--report-denial-reason"
    )
    stopper.append(daemon)
    foreign = authd_token(run_authd, {**client_env, **iam_user.env()}, "-i", "someone-else")
    status, _, answer = review(daemon, foreign)
    assert (status, answer["authenticated"]) == (200, False)
    assert answer["error"].startswith("sts_rejected: ")
    assert "SignatureDoesNotMatch" in answer["error"]


# --- the stand-in as STS: faults --------------------------------------------------------------


@pytest.fixture
def standin() -> Iterator[StsStandIn]:
    """A fresh STS stand-in."""
    server = StsStandIn().start()
    try:
        yield server
    finally:
        server.stop()


def test_faults_are_answered_as_the_outcome_table_says(
    tmp_path: Path, standin: StsStandIn, stopper: list[Daemon]
) -> None:
    """Throttling is 429, resets and 5xx are retried, a stall is cut at --sts-timeout (503),
    and authd's own rate limit answers 429 with Retry-After while cached tokens still pass."""
    config = """\
clusterID: faults
server:
  mapUsers:
  - userarn: arn:aws:iam::123456789012:user/Alice
    username: alice
"""
    daemon = start(
        tmp_path,
        config,
        f"--extra-sts-endpoint={standin.url}",
        "--sts-qps=0.01",
        "--sts-burst=8",
        "--sts-timeout=1s",
    )
    stopper.append(daemon)

    standin.script(THROTTLE)  # 1 request
    status, headers, answer = review(daemon, standin.token(signature="01" * 32))
    assert (status, headers["retry-after"]) == (429, "1")
    assert answer["error"].startswith("throttled: ")

    standin.script(RESET, UNAVAILABLE)  # 3 requests
    allowed = standin.token(signature="02" * 32)
    status, _, answer = review(daemon, allowed)
    assert (status, answer["user"]["username"]) == (200, "alice")

    standin.script(Fault.hold(), Fault.hold(), Fault.hold())  # 3 requests, cut at 1 s
    status, headers, answer = review(daemon, standin.token(signature="03" * 32))
    standin.release()
    assert (status, headers["retry-after"]) == (503, "1")
    assert answer["error"].startswith("sts_unavailable: ")

    assert review(daemon, standin.token(signature="04" * 32))[0] == 200  # the 8th request
    status, headers, answer = review(daemon, standin.token(signature="05" * 32))
    assert status == 429
    assert int(headers["retry-after"]) >= 1
    assert "rate limit" in answer["error"]
    assert review(daemon, allowed)[0] == 200  # cached: costs STS nothing
    assert standin.calls() == 8
    assert metric(daemon, "authd_sts_rate_limited_total") == 1
    assert metric(daemon, "authd_sts_retries_total") == 4
    assert metric(daemon, 'authd_sts_calls_total{outcome="throttled"}') == 1
    assert metric(daemon, 'authd_sts_calls_total{outcome="connection_error"}') == 4
