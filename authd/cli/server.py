"""`authd server`: the TokenReview webhook, with upstream's flags.

See server 2 in docs/upstream-compat.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from authd import __commit__, __version__
from authd.errors import AuthdError

if TYPE_CHECKING:
    from authd.config import ServerSettings

# argparse dest -> ServerSettings attribute, for the flags this command adds.
FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "partition": ("--partition", {}),
    "generate_kubeconfig": ("--generate-kubeconfig", {}),
    "kubeconfig_pregenerated": ("--kubeconfig-pregenerated", {"nargs": "?", "const": "true"}),
    "state_dir": ("--state-dir", {}),
    "kubeconfig": ("--kubeconfig", {}),
    "master": ("--master", {}),
    "address": ("--address", {}),
    "port": ("--port", {}),
    "hostname": ("--hostname", {}),
    "backend_mode": ("--backend-mode", {"action": "append"}),
    "ec2_describe_instances_qps": ("--ec2-describeInstances-qps", {}),
    "ec2_describe_instances_burst": ("--ec2-describeInstances-burst", {}),
    "extra_sts_endpoints": ("--extra-sts-endpoint", {"action": "append"}),
    "extra_sts_regions": ("--extra-sts-region", {"action": "append"}),
    "dynamicfile_path": ("--dynamicfile-path", {}),
    "dynamicfile_userid_strict": ("--dynamicfile-userid-strict", {"nargs": "?", "const": "true"}),
    "sts_timeout": ("--sts-timeout", {}),
    "sts_qps": ("--sts-qps", {}),
    "sts_burst": ("--sts-burst", {}),
    "sts_reserved_share": ("--sts-reserved-share", {}),
    "report_denial_reason": ("--report-denial-reason", {"nargs": "?", "const": "true"}),
    "identity_cache_size": ("--identity-cache-size", {}),
    "identity_cache_bytes": ("--identity-cache-bytes", {}),
    "ec2_cache_ttl": ("--ec2-cache-ttl", {}),
    "ec2_batch_window": ("--ec2-batch-window", {}),
    "health_address": ("--health-address", {}),
    "client_ca_file": ("--client-ca-file", {}),
    "max_connections_per_client": ("--max-connections-per-client", {}),
    "max_connections": ("--max-connections", {}),
    "max_header_bytes": ("--max-header-bytes", {}),
    "max_body_bytes": ("--max-body-bytes", {}),
    "header_timeout": ("--header-timeout", {}),
    "body_timeout": ("--body-timeout", {}),
    "idle_timeout": ("--idle-timeout", {}),
}


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    """Register `server` and its flags; every flag defaults to "not given"."""
    p = sub.add_parser("server", parents=parents, help="run the TokenReview webhook")
    for dest, (flag, extra) in FLAGS.items():
        p.add_argument(flag, dest=dest, default=None, **extra)
    p.set_defaults(run=run, error_prefix="")


def given_flags(args: argparse.Namespace, names: Mapping[str, object]) -> dict[str, object]:
    """The server settings given on the command line, keyed by ServerSettings attribute."""
    flags: dict[str, object] = {
        dest: getattr(args, dest) for dest in names if getattr(args, dest, None) is not None
    }
    if "backend_mode" in flags:
        flags["backend_mode"] = ",".join(args.backend_mode)
    for dest, attr in (
        ("cluster_id", "cluster_ids"),
        ("feature_gates", "feature_gates"),
        ("log_format", "log_format"),
        ("log_verbosity", "log_verbosity"),
    ):
        if getattr(args, dest, None) is not None:
            flags[attr] = getattr(args, dest)
    return flags


def load_settings(
    args: argparse.Namespace, env: Mapping[str, str], names: Mapping[str, object]
) -> ServerSettings:
    """Resolve ServerSettings from flags, env and `--config` (which must exist and parse)."""
    from authd.config import FileConfig, ServerSettings

    file = FileConfig.from_file(args.config) if args.config else None
    return ServerSettings.resolve(flags=given_flags(args, names), env=env, file=file)


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Start the daemon; return 0 after a graceful shutdown."""
    import structlog
    import trio

    from authd import logs
    from authd.server.daemon import run_server
    from authd.server.proxies import Proxies
    from authd.server.region import resolve_region

    print(f'Authenticator Version: "{__version__}", "{__commit__}"', flush=True)
    settings = load_settings(args, env, FLAGS)
    # Queued: a stalled stderr or journald must never stall a review (docs/server.md).
    logs.configure(fmt=settings.log_format, level=settings.log_verbosity, queued=True)
    log = structlog.get_logger("authd.server")
    for warning in settings.warnings:
        log.warning(warning)
    region = resolve_region(env)
    proxies = Proxies.from_env(env)
    # Internal: the server benchmark's A/B of the STS transport (bench/server.py); not a setting.
    sts_transport = env.get("AUTHD_BENCH_STS_TRANSPORT") or "authd"
    try:
        trio.run(
            lambda: run_server(
                settings, region=region, env=env, proxies=proxies, sts_transport=sts_transport
            )
        )
    except ExceptionGroup as group:
        # trio's nurseries wrap even a single error; a start-up failure is one AuthdError
        # (a busy port, a bad certificate) that the CLI prints as one line, exit 1.
        error = sole_error(group)
        if isinstance(error, AuthdError):
            raise error from None
        raise
    finally:
        logs.drain()
    return 0


def sole_error(error: BaseException) -> BaseException:
    """The one error inside nested exception groups of one member each, else `error` itself."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error
