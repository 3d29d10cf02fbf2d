"""EC2 private DNS names: batched, rate-limited, bounded and cached DescribeInstances.

The real lookups go to moto_server (instances made with RunInstances; moto names them
`ip-10-x-x-x.ec2.internal` in us-east-1, as EC2 does). Tests about limits and failures use a
describe function that implements the same interface and records how it was called.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import trio
import trio.testing

from authd.config import FileConfig, MappingConfig
from authd.errors import Ec2Error, TemplateError
from authd.identity import Identity
from authd.mapping.chain import Backend, MapperChain
from authd.mapping.file import MountedFileTable
from authd.metrics import Metrics
from authd.server.ec2 import Ec2Limits, PrivateDnsNames, botocore_describer, open_private_dns_names
from tests.fakes.moto import ACCOUNT_ID, ADMIN_KEY, ADMIN_SECRET, MotoAws, MotoServer
from tests.fakes.sts_front import StsFront

DNS_NAME = r"ip-\d+-\d+-\d+-\d+\.ec2\.internal"


@pytest.fixture(scope="module")
def ec2(moto_server: MotoServer) -> Any:
    """A botocore EC2 client talking to moto."""
    import botocore.session

    return botocore.session.Session().create_client(
        "ec2",
        region_name="us-east-1",
        endpoint_url=moto_server.url,
        aws_access_key_id=ADMIN_KEY,
        aws_secret_access_key=ADMIN_SECRET,
    )


def run_instances(ec2: Any, count: int) -> dict[str, str]:
    """Start `count` instances in moto; {instance ID: the private DNS name moto gave it}."""
    answer = ec2.run_instances(ImageId="ami-12c6146b", MinCount=count, MaxCount=count)
    return {i["InstanceId"]: i["PrivateDnsName"] for i in answer["Instances"]}


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, moto_server: MotoServer) -> None:
    """Credentials for botocore's chain; EC2 at moto; no instance metadata."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ADMIN_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ADMIN_SECRET)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", moto_server.url)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """A sample's value (0 when absent)."""
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def resolve_all(names: PrivateDnsNames, ids: Sequence[str]) -> dict[str, str | Exception]:
    """Look every ID up at once; each answer or error."""
    found: dict[str, str | Exception] = {}

    async def one(instance_id: str) -> None:
        try:
            found[instance_id] = await names.resolve(instance_id)
        except Ec2Error as exc:
            found[instance_id] = exc

    async with trio.open_nursery() as nursery:
        for instance_id in ids:
            nursery.start_soon(one, instance_id)
    return found


# --- against moto -----------------------------------------------------------------------------


@pytest.mark.usefixtures("aws_env")
async def test_names_come_from_moto_in_batches_of_100(ec2: Any) -> None:
    """250 nodes at once: three DescribeInstances calls (100, 100, 50), every name right."""
    expected = run_instances(ec2, 250)
    metrics = Metrics(process_collector=False)
    describe = botocore_describer(region="us-east-1")
    limits = Ec2Limits(batch_window=0.05)
    async with open_private_dns_names(describe=describe, metrics=metrics, limits=limits) as names:
        found = await resolve_all(names, list(expected))
    assert found == expected
    assert all(fullmatch(DNS_NAME, name) for name in expected.values())
    assert sample(metrics, "aws_iam_authenticator_ec2_describe_instances_calls_total") == 3
    assert sample(metrics, "authd_ec2_describe_instances_batch_size_count") == 3
    assert sample(metrics, "authd_ec2_describe_instances_batch_size_sum") == 250
    assert sample(metrics, "authd_ec2_describe_instances_batch_size_bucket", le="50.0") == 1


def fullmatch(pattern: str, text: str) -> bool:
    """Whether `text` matches `pattern` whole."""
    return re.fullmatch(pattern, text) is not None


@pytest.mark.usefixtures("aws_env")
async def test_unknown_instance_fails_alone(ec2: Any) -> None:
    """An ID EC2 does not know fails its own lookup only; the batch's others are answered."""
    expected = run_instances(ec2, 2)
    metrics = Metrics(process_collector=False)
    describe = botocore_describer(region="us-east-1")
    async with open_private_dns_names(describe=describe, metrics=metrics) as names:
        found = await resolve_all(names, [*expected, "i-0123456789abcdef0"])
    assert {k: found[k] for k in expected} == expected
    missing = found["i-0123456789abcdef0"]
    assert isinstance(missing, Ec2Error)
    assert "i-0123456789abcdef0 not found" in str(missing)
    assert sample(metrics, "aws_iam_authenticator_ec2_describe_instances_calls_total") == 1


@pytest.mark.usefixtures("aws_env")
async def test_role_is_assumed_before_describing(
    ec2: Any, moto_aws: MotoAws, sts_front: StsFront, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ec2DescribeInstancesRoleARN, STS AssumeRole is called and its credentials used."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", sts_front.url)
    role = moto_aws.create_role("describer")
    expected = run_instances(ec2, 1)
    before = sts_front.actions().count("AssumeRole")
    describe = botocore_describer(
        region="us-east-1",
        role_arn=role.arn,
        source_arn=f"arn:aws:eks:us-east-1:{ACCOUNT_ID}:cluster/demo",
    )
    metrics = Metrics(process_collector=False)
    async with open_private_dns_names(describe=describe, metrics=metrics) as names:
        found = await resolve_all(names, list(expected))
    assert found == expected
    assert sts_front.actions().count("AssumeRole") == before + 1


async def test_node_username_renders_the_private_dns_name(aws_env: None, ec2: Any) -> None:
    """The chain renders system:node:{{EC2PrivateDNSName}} with moto's name for the instance."""
    [(instance_id, dns)] = run_instances(ec2, 1).items()
    text = (
        "clusterID: c\nserver:\n  mapRoles:\n"
        f"  - rolearn: arn:aws:iam::{ACCOUNT_ID}:role/Node\n"
        "    username: system:node:{{EC2PrivateDNSName}}\n    groups: [system:nodes]\n"
    )
    table = MountedFileTable.from_config(
        MappingConfig.from_file_config(FileConfig.from_text(text, path="c.yaml"))
    )
    identity = Identity(
        arn=f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/Node/{instance_id}",
        canonical_arn=f"arn:aws:iam::{ACCOUNT_ID}:role/Node",
        account_id=ACCOUNT_ID,
        user_id="AROANODE",
        session_name=instance_id,
        access_key_id="ASIANODE",
        sts_endpoint="sts.amazonaws.com",
    )
    metrics = Metrics(process_collector=False)
    describe = botocore_describer(region="us-east-1")
    async with open_private_dns_names(describe=describe, metrics=metrics) as names:
        chain = MapperChain([Backend("MountedFile", table)])
        result = await chain.map(identity, resolve_private_dns=names.resolve)
        assert result.user.username == f"system:node:{dns}"
        unknown = Identity(**{**_fields(identity), "session_name": "i-00000000000000000"})
        with pytest.raises(TemplateError, match=r"failed querying private DNS .* not found"):
            await chain.map(unknown, resolve_private_dns=names.resolve)


def _fields(identity: Identity) -> dict[str, str]:
    return {f: getattr(identity, f) for f in identity.__dataclass_fields__}


# --- limits and failures, with a recording describe -------------------------------------------


class Recorder:
    """A describe function that names every instance `ip-<id>`, and records its calls."""

    def __init__(self, *, latency: float = 0.0, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.latency = latency
        self.fail = fail
        self.active = 0
        self.max_active = 0
        self.started: list[float] = []
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Lock()

    def __call__(self, ids: Sequence[str]) -> tuple[dict[str, str], int]:
        with self._lock:
            self.batches.append(list(ids))
            self.started.append(time.monotonic())
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            self.gate.wait()
            if self.latency:
                time.sleep(self.latency)  # the fake's own service time, so calls overlap
            if self.fail:
                raise Ec2Error("UnauthorizedOperation: not allowed")
            return {i: f"ip-{i}" for i in ids}, 1
        finally:
            with self._lock:
                self.active -= 1


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """A fresh recording describe, released on the way out."""
    fake = Recorder()
    yield fake
    fake.gate.set()


async def test_cache_serves_until_the_ttl_ends(recorder: Recorder) -> None:
    """A name is asked once, then served from cache until cache_ttl passes on the clock."""
    now = [1000.0]
    metrics = Metrics(process_collector=False)
    names = PrivateDnsNames(
        describe=recorder, metrics=metrics, limits=Ec2Limits(cache_ttl=60), clock=lambda: now[0]
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(names.run)
        assert await names.resolve("i-aaaaaaaa") == "ip-i-aaaaaaaa"
        now[0] += 59
        assert await names.resolve("i-aaaaaaaa") == "ip-i-aaaaaaaa"
        assert len(recorder.batches) == 1
        now[0] += 1
        assert await names.resolve("i-aaaaaaaa") == "ip-i-aaaaaaaa"
        assert len(recorder.batches) == 2
        nursery.cancel_scope.cancel()
    assert sample(metrics, "authd_ec2_cache_lookups_total", result="hit") == 1
    assert sample(metrics, "authd_ec2_cache_lookups_total", result="miss") == 2


async def test_same_instance_at_once_is_asked_once(recorder: Recorder) -> None:
    """Thirty kubelets of one node asking at once share one ID in one batch."""
    async with (
        open_private_dns_names(
            describe=recorder, metrics=Metrics(process_collector=False)
        ) as names,
        trio.open_nursery() as nursery,
    ):
        for _ in range(30):
            nursery.start_soon(names.resolve, "i-cccccccc")
    assert recorder.batches == [["i-cccccccc"]]


async def test_calls_are_rate_limited(recorder: Recorder) -> None:
    """qps 20, burst 1: five batches are spread over about 4/20 s, not sent at once."""
    limits = Ec2Limits(qps=20, burst=1, max_in_flight=10)
    async with open_private_dns_names(
        describe=recorder, metrics=Metrics(process_collector=False), limits=limits
    ) as names:
        await resolve_all(names, [f"i-{n:08d}" for n in range(500)])
    assert [len(b) for b in recorder.batches] == [100] * 5
    # The recorder stamps each call when its worker thread starts, which a busy machine can
    # delay for the first call more than for the last: allow one interval of that. Without the
    # limit the five calls start within a few milliseconds.
    assert recorder.started[-1] - recorder.started[0] >= 3 / 20


async def test_in_flight_calls_are_bounded(recorder: Recorder) -> None:
    """However many batches are due, at most max_in_flight calls run at once."""
    recorder.latency = 0.05
    limits = Ec2Limits(qps=1000, burst=1000, max_in_flight=2)
    async with open_private_dns_names(
        describe=recorder, metrics=Metrics(process_collector=False), limits=limits
    ) as names:
        found = await resolve_all(names, [f"i-{n:08d}" for n in range(600)])
    assert len(found) == 600
    assert len(recorder.batches) == 6
    assert recorder.max_active == 2


async def test_a_failed_call_fails_its_batch_and_is_not_cached(recorder: Recorder) -> None:
    """EC2 refusing: every lookup of the batch fails with the reason; the next one asks again."""
    recorder.fail = True
    metrics = Metrics(process_collector=False)
    async with open_private_dns_names(describe=recorder, metrics=metrics) as names:
        found = await resolve_all(names, ["i-dddddddd", "i-eeeeeeee"])
        assert all("UnauthorizedOperation" in str(error) for error in found.values())
        recorder.fail = False
        assert await names.resolve("i-dddddddd") == "ip-i-dddddddd"
    assert sample(metrics, "authd_ec2_describe_instances_failures_total") == 1
    assert len(recorder.batches) == 2


async def test_a_hung_ec2_fails_the_lookup_at_its_timeout(recorder: Recorder) -> None:
    """A DescribeInstances that never returns fails the lookup after limits.timeout."""
    recorder.gate.clear()
    limits = Ec2Limits(timeout=0.2)
    async with open_private_dns_names(
        describe=recorder, metrics=Metrics(process_collector=False), limits=limits
    ) as names:
        with pytest.raises(Ec2Error, match=r"no answer from EC2 within 0\.2s"):
            await names.resolve("i-ffffffff")
        recorder.gate.set()


async def test_too_many_pending_lookups_fail_at_once(recorder: Recorder) -> None:
    """Beyond max_pending distinct IDs waiting, a new lookup fails without queueing."""
    recorder.gate.clear()
    limits = Ec2Limits(max_pending=3, timeout=1.0)
    async with (
        open_private_dns_names(
            describe=recorder, metrics=Metrics(process_collector=False), limits=limits
        ) as names,
        trio.open_nursery() as nursery,
    ):
        for n in range(3):
            nursery.start_soon(names.resolve, f"i-{n:08d}")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(Ec2Error, match="3 instance lookups already pending"):
            await names.resolve("i-99999999")
        recorder.gate.set()


async def test_lookups_queued_behind_the_rate_limit_share_the_next_batch(
    recorder: Recorder,
) -> None:
    """Nodes trickling in while EC2's rate is spent are sent together, not one call each."""
    limits = Ec2Limits(qps=5, burst=1, batch_window=0.001)
    async with (
        open_private_dns_names(
            describe=recorder, metrics=Metrics(process_collector=False), limits=limits
        ) as names,
        trio.open_nursery() as nursery,
    ):
        for n in range(120):
            nursery.start_soon(names.resolve, f"i-{n:08d}")
            await trio.sleep(0.005)  # one node every 5 ms: the arrival pattern under test
    assert sum(len(b) for b in recorder.batches) == 120
    assert len(recorder.batches) <= 6


# --- the server's region ----------------------------------------------------------------------


def test_server_region_comes_from_instance_metadata(sts_front: StsFront) -> None:
    """With no region in the environment the server asks IMDS (moto's, IMDSv2: token first),
    through the same reader as `authd token`; a configured region asks nothing."""
    from authd.server.region import resolve_region

    env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": sts_front.url + "/"}
    before = len(sts_front.seen)
    assert resolve_region(env, default="") == "us-east-1"
    paths = [seen.path for seen in sts_front.seen[before:]]
    assert paths[:2] == ["/latest/api/token", "/latest/meta-data/placement/region"]
    assert resolve_region({**env, "AWS_REGION": "eu-west-3"}) == "eu-west-3"
    assert resolve_region({**env, "AWS_EC2_METADATA_DISABLED": "true"}, default="x") == "x"
    assert len(sts_front.seen) == before + 2
