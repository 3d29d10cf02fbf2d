"""Resolve EC2 instance IDs to private DNS names for `{{EC2PrivateDNSName}}`, in batches.

`PrivateDnsNames.resolve(instance_id)` is what the mapper chain calls. Lookups that arrive
within a short fill window (`--ec2-batch-window`, 10 ms) share one DescribeInstances call of up
to 100 IDs; calls are rate-limited by upstream's `--ec2-describeInstances-qps`/`-burst`, at most
a few are in flight, concurrent lookups of one ID share a call, and answers are cached (bounded,
for `--ec2-cache-ttl`). 5,000 nodes registering at once cost 50 calls, not 5,000.

DescribeInstances is sent by botocore in a worker thread (`botocore_describer`), not signed by
hand over httpx: botocore resolves the server's credentials (environment, profile, web identity,
instance metadata; all blocking code) and refreshes assumed-role credentials for
`ec2DescribeInstancesRoleARN`, and it parses EC2's XML. At 15 calls a second the thread hop
costs nothing measurable, and the bounded in-flight count bounds the threads.

The batch asks with an `instance-id` filter rather than `InstanceIds`: with `InstanceIds`, one
unknown ID fails the whole call (`InvalidInstanceID.NotFound`) and so 99 other nodes; with the
filter an unknown ID is simply absent from the answer and only its own lookup fails.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog
import trio

from authd.config import ServerSettings
from authd.errors import Ec2Error
from authd.metrics import Metrics
from authd.server.proxies import Proxies
from authd.server.ratelimit import TokenBucket

log = structlog.get_logger("authd.server.ec2")

MAX_BATCH = 100
"""DescribeInstances accepts up to 1,000 filter values; upstream batches 100, and so does authd."""

Describe = Callable[[Sequence[str]], tuple[dict[str, str], int]]
"""Blocking: instance IDs -> ({found ID: private DNS name}, DescribeInstances calls made).

Raises Ec2Error when EC2 cannot answer. Runs in a worker thread."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Ec2Limits:
    """Batching, rate, concurrency and cache bounds; defaults are upstream's and authd's.

    See authd 1 in docs/upstream-compat.md.

    Attributes:
        qps, burst: DescribeInstances calls a second on average, and at once.
        batch_window: seconds a batch waits for more IDs after its first.
        cache_ttl: seconds a private DNS name is kept; 0 disables the cache.
        cache_size: names kept at most (least recently used go first).
        max_in_flight: DescribeInstances calls running at once.
        max_pending: distinct IDs waiting for a call; beyond, lookups fail at once.
        timeout: seconds one lookup waits for its answer.
    """

    qps: float = 15.0
    burst: int = 5
    batch_window: float = 0.01
    cache_ttl: float = 900.0
    cache_size: int = 100_000
    max_in_flight: int = 4
    max_pending: int = 50_000
    timeout: float = 10.0


class _Pending:
    """A lookup waiting for its batch: the callers block on `done`, then read the outcome."""

    __slots__ = ("done", "error", "name")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.name = ""
        self.error: Ec2Error | None = None


class PrivateDnsNames:
    """Batched, rate-limited, cached DescribeInstances; `run` must be running (see `open_*`)."""

    def __init__(
        self,
        *,
        describe: Describe,
        metrics: Metrics,
        limits: Ec2Limits | None = None,
        limiter: TokenBucket | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """Set up the lookup; nothing is sent until `run` is started.

        Args:
            describe: the blocking DescribeInstances call (`botocore_describer`).
            metrics: where calls, batch sizes, failures and cache use are counted.
            limits: defaults when None.
            limiter: the bucket in front of EC2; one from `limits` when None.
            clock: seconds, for cache expiry; `trio.current_time` when None.
        """
        self.limits = limits = limits or Ec2Limits()
        self._describe = describe
        self._metrics = metrics
        self._clock = clock or trio.current_time
        self._limiter = limiter or TokenBucket(rate=limits.qps, burst=limits.burst)
        self._in_flight = trio.Semaphore(limits.max_in_flight)
        self._cache: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._pending: dict[str, _Pending] = {}
        self._send, self._receive = trio.open_memory_channel[str](math.inf)

    async def resolve(self, instance_id: str) -> str:
        """The private DNS name of `instance_id`.

        Raises:
            Ec2Error: EC2 failed, does not know the instance, gave it no private DNS name, or
                did not answer within `limits.timeout`.
        """
        name = self._cached(instance_id)
        if name is not None:
            self._metrics.ec2_cache_lookup(hit=True)
            return name
        self._metrics.ec2_cache_lookup(hit=False)
        pending = self._pending.get(instance_id)
        if pending is None:
            if len(self._pending) >= self.limits.max_pending:
                raise Ec2Error(f"{len(self._pending)} instance lookups already pending")
            pending = self._pending[instance_id] = _Pending()
            self._send.send_nowait(instance_id)
        with trio.move_on_after(self.limits.timeout):
            await pending.done.wait()
        if not pending.done.is_set():
            raise Ec2Error(f"no answer from EC2 within {self.limits.timeout:g}s")
        if pending.error is not None:
            raise pending.error
        return pending.name

    def _cached(self, instance_id: str) -> str | None:
        found = self._cache.get(instance_id)
        if found is None:
            return None
        name, expires = found
        if self._clock() >= expires:
            del self._cache[instance_id]
            return None
        self._cache.move_to_end(instance_id)
        return name

    def _remember(self, instance_id: str, name: str) -> None:
        if self.limits.cache_ttl <= 0 or self.limits.cache_size <= 0:
            return
        self._cache[instance_id] = (name, self._clock() + self.limits.cache_ttl)
        self._cache.move_to_end(instance_id)
        while len(self._cache) > self.limits.cache_size:
            self._cache.popitem(last=False)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Gather pending IDs into batches and send them, until cancelled."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            async for first in self._receive:
                # Wait for room (in flight, then rate) before filling: the IDs that queue
                # meanwhile join this batch, so a saturated EC2 gets full batches of 100.
                await self._in_flight.acquire()
                await self._limiter.acquire()
                batch = await self._fill([first])
                nursery.start_soon(self._call, batch)

    async def _fill(self, batch: list[str]) -> list[str]:
        """Add IDs arriving within the fill window, up to MAX_BATCH."""
        with trio.move_on_after(self.limits.batch_window):
            while len(batch) < MAX_BATCH:
                batch.append(await self._receive.receive())
        # IDs already queued join too (with a zero window, the wait above takes none).
        with contextlib.suppress(trio.WouldBlock):
            while len(batch) < MAX_BATCH:
                batch.append(self._receive.receive_nowait())
        return batch

    async def _call(self, batch: list[str]) -> None:
        """One DescribeInstances batch; every waiter of the batch is answered."""
        self._metrics.ec2_batch(len(batch))
        failure: Ec2Error | None = None
        try:
            names, calls = await trio.to_thread.run_sync(
                self._describe, batch, abandon_on_cancel=True
            )
        except Exception as exc:  # this task must outlive any one bad answer
            if not isinstance(exc, Ec2Error):
                exc = Ec2Error(f"DescribeInstances failed: {type(exc).__name__}: {exc}")
            self._metrics.ec2_describe_instances_call()
            self._metrics.ec2_failure()
            log.warning("DescribeInstances failed", instances=len(batch), error=str(exc))
            names, calls, failure = {}, 0, exc
        finally:
            self._in_flight.release()
        for _ in range(calls):
            self._metrics.ec2_describe_instances_call()
        for instance_id in batch:
            self._answer(instance_id, names.get(instance_id), failure)

    def _answer(self, instance_id: str, name: str | None, failure: Ec2Error | None) -> None:
        pending = self._pending.pop(instance_id, None)
        if pending is None:
            return
        if failure is not None:
            pending.error = failure
        elif name is None:
            pending.error = Ec2Error(f"instance {instance_id} not found")
        elif not name:
            pending.error = Ec2Error(f"instance {instance_id} has no private DNS name")
        else:
            pending.name = name
            self._remember(instance_id, name)
        pending.done.set()


@contextlib.asynccontextmanager
async def open_private_dns_names(
    *, describe: Describe, metrics: Metrics, limits: Ec2Limits | None = None
) -> AsyncIterator[PrivateDnsNames]:
    """A running `PrivateDnsNames`; its batching task stops when the block exits."""
    names = PrivateDnsNames(describe=describe, metrics=metrics, limits=limits)
    async with trio.open_nursery() as nursery:
        await nursery.start(names.run)
        try:
            yield names
        finally:
            nursery.cancel_scope.cancel()


def botocore_describer(
    *,
    region: str,
    role_arn: str = "",
    source_arn: str = "",
    endpoint_url: str | None = None,
    timeout: float = 10.0,
    proxies: Proxies | None = None,
) -> Describe:
    """A blocking DescribeInstances for `PrivateDnsNames`, with botocore's credential chain.

    The botocore client is made at the first call, in the worker thread: making it resolves
    credentials, which may mean a slow instance-metadata request, and a server whose mappings
    never use `{{EC2PrivateDNSName}}` should not pay for that at start.

    Args:
        region: the EC2 region (the server's).
        role_arn: `server.ec2DescribeInstancesRoleARN`: assume this role (credentials refreshed
            by botocore before they expire) and describe with it.
        source_arn: `server.sourceARN`: sent with AssumeRole as `x-amz-source-arn` and
            `x-amz-source-account`, for the role's confused-deputy conditions (as upstream).
        endpoint_url: EC2 endpoint; botocore's own choice (including `AWS_ENDPOINT_URL_EC2`)
            when None.
        timeout: connect and read timeout of one HTTP request, seconds.
        proxies: the server's proxies (`Proxies.from_env`), applied to EC2 and to AssumeRole
            by the same rules as to STS; no proxy when None.
    """
    lock = threading.Lock()
    clients: list[Any] = []

    def describe(instance_ids: Sequence[str]) -> tuple[dict[str, str], int]:
        with lock:
            if not clients:
                clients.append(
                    _client(
                        region,
                        role_arn,
                        source_arn,
                        endpoint_url=endpoint_url,
                        timeout=timeout,
                        proxies=proxies or Proxies(),
                    )
                )
        return _describe(clients[0], instance_ids)

    return describe


def _client(
    region: str,
    role_arn: str,
    source_arn: str,
    *,
    endpoint_url: str | None,
    timeout: float,
    proxies: Proxies,
) -> Any:
    """The botocore EC2 client, signing with the assumed role's credentials when asked."""
    import botocore.config
    import botocore.session
    from botocore.exceptions import BotoCoreError, ClientError

    session = botocore.session.Session()
    config = botocore.config.Config(
        connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 2}
    )
    create = partial(_proxied_client, session, config=config, proxies=proxies)
    try:
        if role_arn:
            _assume_role(session, create, region=region, role_arn=role_arn, source_arn=source_arn)
        return create("ec2", region_name=region, endpoint_url=endpoint_url)
    except (BotoCoreError, ClientError) as exc:
        raise Ec2Error(f"cannot make an EC2 client: {exc}") from exc


def _proxied_client(
    session: Any, service: str, *, config: Any, proxies: Proxies, **kwargs: Any
) -> Any:
    """`session.create_client`, with the proxy `proxies` picks for the client's endpoint.

    botocore would read the proxy variables itself, but by urllib's rules (loopback proxied
    unless listed in NO_PROXY, no CIDR blocks); an explicit `proxies` makes EC2 and AssumeRole
    follow the same rules as STS. The endpoint is known only once a client exists, so a
    proxied endpoint costs a second (cheap: the service model is cached) client.
    """
    import botocore.config

    direct = config.merge(botocore.config.Config(proxies={}))
    client = session.create_client(service, config=direct, **kwargs)
    endpoint: str = client.meta.endpoint_url
    proxy = proxies.proxy_for(endpoint)
    if proxy is None:
        return client
    scheme = endpoint.partition("://")[0]
    via = config.merge(botocore.config.Config(proxies={scheme: proxy}))
    return session.create_client(service, config=via, **kwargs)


@contextlib.asynccontextmanager
async def open_server_private_dns_names(
    settings: ServerSettings, *, region: str, metrics: Metrics, proxies: Proxies
) -> AsyncIterator[PrivateDnsNames]:
    """The server's running lookup, configured from its flags.

    See authd 1 in docs/upstream-compat.md.
    """
    limits = Ec2Limits(
        qps=settings.ec2_describe_instances_qps,
        burst=settings.ec2_describe_instances_burst,
        batch_window=settings.ec2_batch_window,
        cache_ttl=settings.ec2_cache_ttl,
    )
    describe = botocore_describer(
        region=region,
        role_arn=settings.ec2_describe_instances_role_arn,
        source_arn=settings.source_arn,
        proxies=proxies,
    )
    async with open_private_dns_names(describe=describe, metrics=metrics, limits=limits) as names:
        yield names


def _assume_role(
    session: Any, create: Callable[..., Any], *, region: str, role_arn: str, source_arn: str
) -> None:
    """Make `session` sign with `role_arn`'s credentials, refreshed as they near expiry."""
    from botocore.credentials import AssumeRoleCredentialFetcher, DeferredRefreshableCredentials

    if source_arn:
        account = source_arn.split(":")[4] if source_arn.count(":") >= 5 else ""

        def add_source(request: Any, **_: Any) -> None:
            request.headers["x-amz-source-arn"] = source_arn
            if account:
                request.headers["x-amz-source-account"] = account

        session.register("before-sign.sts.AssumeRole", add_source)
    fetcher = AssumeRoleCredentialFetcher(
        client_creator=partial(create, region_name=region),
        source_credentials=session.get_credentials(),
        role_arn=role_arn,
        extra_args={"RoleSessionName": "aws-iam-authenticator"},
    )
    # botocore has no public setter for refreshable credentials; every client the session
    # creates from now on reads them from here.
    session._credentials = DeferredRefreshableCredentials(
        method="assume-role", refresh_using=fetcher.fetch_credentials
    )


def _describe(client: Any, instance_ids: Sequence[str]) -> tuple[dict[str, str], int]:
    """DescribeInstances filtered by instance ID, following NextToken; (names, calls made)."""
    from botocore.exceptions import BotoCoreError, ClientError

    names: dict[str, str] = {}
    calls = 0
    args: dict[str, Any] = {"Filters": [{"Name": "instance-id", "Values": list(instance_ids)}]}
    try:
        while True:
            calls += 1
            answer: Mapping[str, Any] = client.describe_instances(**args)
            for reservation in answer.get("Reservations", []):
                for instance in reservation.get("Instances", []):
                    names[instance["InstanceId"]] = instance.get("PrivateDnsName", "")
            token = answer.get("NextToken")
            if not token:
                return names, calls
            args["NextToken"] = token
    except (BotoCoreError, ClientError) as exc:
        raise Ec2Error(f"DescribeInstances failed after {calls} call(s): {exc}") from exc
