"""Wire the server together and run it: state dir, kubeconfig, backends, listeners, signals.

One nursery tree with one shutdown trigger: SIGTERM or SIGINT sets `shutdown`, the listeners
stop accepting, in-flight reviews finish, and `run_server` returns. The config file, the
DynamicFile and the backend-mode file are watched (authd/server/reload.py, docs/reload.md), the
Kubernetes backends follow the API server (docs/kubernetes.md), and each good new version is
swapped in atomically; SIGHUP re-reads the files at once. A version that does not parse keeps
the last good table and marks the backend not ready.

Under systemd (`Type=notify`, `$NOTIFY_SOCKET` in `env`) the daemon says `READY=1` once the
listener accepts and every backend of the chain has its first snapshot, `RELOADING=1` then
`READY=1` around a SIGHUP reload, and `STOPPING=1` when shutdown begins (docs/deploy-systemd.md).
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Iterator, Mapping
from contextlib import AbstractAsyncContextManager, contextmanager
from functools import partial
from typing import TYPE_CHECKING

import structlog
import trio

from authd import logs
from authd.config import ServerSettings
from authd.errors import ListenError
from authd.metrics import Metrics
from authd.server import kubeconfig, tls
from authd.server.app import App
from authd.server.authenticator import Authenticator
from authd.server.backends import Backends, KubeOpener
from authd.server.certtime import CertificateError, not_after
from authd.server.ec2 import open_server_private_dns_names
from authd.server.http import Limits, Request, Response, serve_http, serve_https
from authd.server.proxies import Proxies
from authd.server.sdnotify import Notifier
from authd.server.sts.client import open_sts_client
from authd.server.sts.guard import StsProtection
from authd.token import EndpointPolicy

if TYPE_CHECKING:
    from authd.server.kube.client import KubeClient

log = structlog.get_logger("authd.server")
HEALTH_PATHS = ("/healthz", "/readyz", "/metrics")
"""What `--health-address` serves; everything else there is 404."""
EXTEND_BY = 60.0
"""Seconds systemd is asked to wait on, each time a start-up waiting for a backend says so."""
HEALTH_MAX_CONNECTIONS = 64
"""Connections the `--health-address` listener serves at once (kubelet and a few scrapers)."""
HEALTH_MAX_CONNECTIONS_PER_CLIENT = 16
"""Of those, how many one client IP may hold."""


def write_state(settings: ServerSettings) -> tls.KeyPair:
    """Load or create the key pair, and write the webhook kubeconfig unless pregenerated.

    Raises:
        ConfigError: from `tls` ("could not load/generate a certificate: ...") or `kubeconfig`.
    """
    pair = tls.load_or_create_keypair(
        settings.state_dir, address=settings.address, hostname=settings.hostname
    )
    if not settings.kubeconfig_pregenerated:
        text = kubeconfig.render_kubeconfig(
            cert_pem=pair.cert_pem, hostname=settings.hostname, port=settings.port
        )
        kubeconfig.write_kubeconfig(settings.generate_kubeconfig, text)
    return pair


def kube_opener(settings: ServerSettings, env: Mapping[str, str]) -> KubeOpener:
    """Opens the Kubernetes API client from `--kubeconfig`/`--master`, or in-cluster (`env`).

    The connection is configured when the first Kubernetes backend starts; an error then
    (`KubeError`: not in a cluster, a kubeconfig that cannot be used) stops the start-up.
    """

    def opener() -> AbstractAsyncContextManager[KubeClient]:
        from authd.server.kube.connection import connection_from, open_client

        connection = connection_from(
            kubeconfig=settings.kubeconfig, master=settings.master, env=env
        )
        log.info("kubernetes API", server=connection.server)
        return open_client(connection)

    return opener


async def run_server(
    settings: ServerSettings,
    *,
    region: str,
    proxies: Proxies,
    env: Mapping[str, str] | None = None,
    limits: Limits | None = None,
    sts_transport: str = "authd",
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the webhook until SIGTERM/SIGINT; `task_status` receives the bound address.

    Args:
        settings: the resolved flags and config.
        region: the server's AWS region (EC2 calls, the STS endpoint policy).
        proxies: for STS and EC2 requests, from the environment (`Proxies.from_env`).
        env: the process environment, read only for the in-cluster Kubernetes connection
            (`KUBERNETES_SERVICE_HOST`/`_PORT`) and systemd's `NOTIFY_SOCKET`.
        limits: the listener's other limits (shutdown grace, linger); defaults when None.
            The connection caps, sizes and timeouts always come from `settings`.
        sts_transport: the STS client's direct transport, "authd" or "httpx"; only the server
            benchmark's A/B run sets it.

    Raises:
        AuthdError: the state dir, kubeconfig, TLS or Kubernetes connection setup failed (fatal
            at start).
        ListenError: an address cannot be listened on (an OSError; trio's nurseries wrap it
            in exception groups).
    """
    notifier = Notifier((env or {}).get("NOTIFY_SOCKET"))
    metrics = Metrics()
    backends = Backends(settings, metrics, open_kube=kube_opener(settings, env or {}))
    backends.load_all()
    pair = write_state(settings)
    metrics.state_files(pair.loose)
    _export_expiry(metrics, pair)
    metrics.watch_log_drops(logs.dropped_lines)
    ssl_context = tls.server_ssl_context(pair, client_ca_file=settings.client_ca_file)
    limits = dataclasses.replace(
        limits or Limits(),
        max_connections=settings.max_connections,
        max_connections_per_client=settings.max_connections_per_client,
        max_head_bytes=settings.max_header_bytes,
        max_body_bytes=settings.max_body_bytes,
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        idle_timeout=settings.idle_timeout,
    )
    policy = EndpointPolicy.create(
        partition=settings.partition,
        region=region,
        extra_origins=settings.extra_sts_endpoints,
        extra_regions=settings.extra_sts_regions,
    )
    async with (
        open_sts_client(
            step_timeout=settings.sts_timeout, proxies=proxies, transport=sts_transport
        ) as sts,
        open_server_private_dns_names(
            settings, region=region, metrics=metrics, proxies=proxies
        ) as ec2_names,
    ):
        authenticator = Authenticator(
            policy=policy,
            sts=sts,
            chain=backends.chain,
            cluster_ids=settings.cluster_ids,
            metrics=metrics,
            protection=StsProtection.from_settings(settings),
            resolve_private_dns=ec2_names.resolve,
        )
        app = App(
            authenticator=authenticator,
            metrics=metrics,
            ready=backends.readiness,
            review_log=logs.review_log(),
            report_denial_reason=settings.report_denial_reason,
        )
        shutdown, hard_stop = trio.Event(), trio.CancelScope()
        async with trio.open_nursery() as outer:
            lifecycle = Lifecycle(notifier, backends, shutdown)
            outer.start_soon(_handle_signals, lifecycle, hard_stop)
            # Watches are armed before the listeners open: no change after start is missed.
            await outer.start(backends.serve_reloads)
            with hard_stop:
                async with trio.open_nursery() as servers:
                    serve = partial(
                        serve_https,
                        app,
                        ssl_context=ssl_context,
                        host=settings.address,
                        port=settings.port,
                        limits=limits,
                        shutdown=shutdown,
                    )
                    with _naming(_join(settings.address, settings.port)):
                        bound: tuple[str, int] = await servers.start(serve)
                    if settings.health_address:
                        with _naming(settings.health_address):
                            await servers.start(
                                _serve_health, settings.health_address, app, shutdown, limits
                            )
                    _log_listening(settings, bound, region)
                    outer.start_soon(lifecycle.announce_ready, _join(*bound))
                    task_status.started(bound)
            # The listeners returned: shutdown was asked for and in-flight reviews are done.
            outer.cancel_scope.cancel()
    log.info("stopped")


@contextmanager
def _naming(address: str) -> Iterator[None]:
    """Turn an OSError from opening a listener (port in use, bind not permitted, no such
    address) into one line naming `address` and the cause."""
    try:
        yield
    except OSError as exc:
        raise ListenError(f"cannot listen on {address}: {exc.strerror or exc}") from exc


def _join(host: str, port: int) -> str:
    """`host:port`, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _log_listening(settings: ServerSettings, bound: tuple[str, int], region: str) -> None:
    log.info("listening", address=f"{bound[0]}:{bound[1]}", region=region)
    if not settings.kubeconfig_pregenerated:
        log.info(
            "reconfigure your apiserver with "
            f"`--authentication-token-webhook-config-file={settings.generate_kubeconfig}`"
            " to enable (assuming default hostPath mounts)"
        )


async def _serve_health(
    address: str,
    app: App,
    shutdown: trio.Event,
    limits: Limits,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The optional plain-HTTP listener for probes and scrapes: `/healthz`, `/readyz`, `/metrics`.

    Never TokenReviews: the webhook can stay on loopback while this port is reachable from
    other nodes (docs/deploy-kubernetes.md, "Exposure"). The webhook's limits apply, with the
    connection caps cut to what kubelet and a few scrapers need, so a flood here cannot hold
    the memory the webhook's connections are sized for (docs/memory.md).
    """
    host, _, port = address.rpartition(":")

    async def probes_and_metrics(request: Request) -> Response:
        if request.path in HEALTH_PATHS:
            return await app(request)
        return Response(status=404, body=b"404 page not found\n")

    capped = dataclasses.replace(
        limits,
        max_connections=min(limits.max_connections, HEALTH_MAX_CONNECTIONS),
        max_connections_per_client=min(
            limits.max_connections_per_client, HEALTH_MAX_CONNECTIONS_PER_CLIENT
        ),
    )
    await serve_http(
        probes_and_metrics,
        host=host.strip("[]"),
        port=int(port),
        limits=capped,
        shutdown=shutdown,
        task_status=task_status,
    )


class Lifecycle:
    """What the daemon tells systemd, and when (a no-op without `NOTIFY_SOCKET`).

    Args:
        notifier: where the messages go.
        backends: whose first snapshots READY waits for, and whose files a reload re-reads.
        shutdown: set when shutdown begins; no READY is sent after it.
        poll: how often, in seconds, start-up looks at the backends while one has no snapshot.
        extend_every: how often, in seconds, a start-up still waiting for a backend tells
            systemd it is alive (`EXTEND_TIMEOUT_USEC`, EXTEND_BY seconds each time).
    """

    def __init__(
        self,
        notifier: Notifier,
        backends: Backends,
        shutdown: trio.Event,
        *,
        poll: float = 0.1,
        extend_every: float = 20.0,
    ) -> None:
        self.notifier = notifier
        self.backends = backends
        self.shutdown = shutdown
        self.poll = poll
        self.extend_every = extend_every
        self.address = ""
        self.is_ready = False  # READY=1 was sent for the start-up

    def missing(self) -> list[str]:
        """The backends of the current chain that have no snapshot yet."""
        return [n for n in self.backends.modes if self.backends.by_name[n].table is None]

    def status(self) -> str:
        """One line for `systemctl status`: the address and each backend's readiness."""
        lines = self.backends.readiness()[1].strip().splitlines()
        return "; ".join([f"serving on {self.address}", *lines])

    async def announce_ready(self, address: str) -> None:
        """Send READY=1 once every backend of the chain has its first snapshot.

        Called once the listener accepts on `address`. A backend without a snapshot (a
        DynamicFile not written yet, an API server not reachable yet) holds READY back, and
        STATUS says which one. Meanwhile the daemon serves, so systemd is asked to wait on
        (EXTEND_TIMEOUT_USEC every `extend_every` seconds) instead of killing it when
        TimeoutStartSec runs out; a daemon that stops saying so is killed EXTEND_BY seconds
        later. Returns without READY when shutdown begins first.
        """
        self.address = address
        shown = ""
        extend_at = trio.current_time() + self.extend_every
        while missing := self.missing():
            if self.shutdown.is_set():
                return
            waiting = f"listening on {address}; waiting for the first mapping of " + ", ".join(
                f"{n} ({self.backends.by_name[n].problem})" for n in missing
            )
            if waiting != shown:
                self.notifier.status(waiting)
                log.info("not ready yet: waiting for the first mapping", backends=missing)
                shown = waiting
            if trio.current_time() >= extend_at:
                self.notifier.extend_start(EXTEND_BY)
                extend_at = trio.current_time() + self.extend_every
            await trio.sleep(self.poll)
        if self.shutdown.is_set():
            return
        self.is_ready = True
        self.notifier.ready(self.status())
        if self.notifier.enabled:
            log.info("told systemd READY=1")

    async def reload(self) -> None:
        """SIGHUP: RELOADING=1, re-read every watched file, READY=1 when each was judged.

        A broken file keeps its last good mapping (docs/reload.md); STATUS then says
        `degraded`. Before the start-up READY (or after shutdown began) files are re-read but
        systemd is told nothing, so READY never comes early.
        """
        announce = self.is_ready and not self.shutdown.is_set()
        if announce:
            self.notifier.reloading(f"reloading mappings (SIGHUP); {self.status()}")
        await self.backends.reload_all()
        if announce and not self.shutdown.is_set():
            self.notifier.ready(self.status())

    def stopping(self) -> None:
        """Shutdown began: STOPPING=1."""
        self.notifier.stopping("stopping: finishing in-flight reviews")


async def _handle_signals(lifecycle: Lifecycle, scope: trio.CancelScope) -> None:
    """SIGTERM/SIGINT: graceful stop (a second one stops at once). SIGHUP: reload mappings."""
    shutdown = lifecycle.shutdown
    async with trio.open_nursery() as reloads:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: reloading mappings")
                    reloads.start_soon(lifecycle.reload)
                elif shutdown.is_set():
                    scope.cancel()
                else:
                    log.info("shutting down: finishing in-flight reviews", signal=signum)
                    lifecycle.stopping()
                    shutdown.set()


def _export_expiry(metrics: Metrics, pair: tls.KeyPair) -> None:
    """Set the certificate-expiry gauge; a certificate ssl accepted but this reader does not is
    named in a warning and leaves the gauge unset (the daemon serves with it all the same)."""
    try:
        metrics.serving_certificate(not_after(pair.cert_pem))
    except CertificateError as exc:
        log.warning(
            "cannot read the serving certificate's expiry",
            certPath=str(pair.cert_path),
            error=str(exc),
        )
