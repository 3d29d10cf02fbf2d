"""Flags shared by every subcommand and the config-file precedence helper.

See B1 in docs/upstream-compat.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from authd.names import LOG_LEVELS, LOG_VERBOSITY_ENV


def global_flags() -> argparse.ArgumentParser:
    """Upstream's persistent flags; defaults are None so precedence can be resolved later."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "-i",
        "--cluster-id",
        action="append",
        default=None,
        help="cluster ID (env KUBERNETES_AWS_AUTHENTICATOR_CLUSTER_ID); the server takes it "
        "more than once during a rotation, the first being the current ID",
    )
    p.add_argument("-c", "--config", default=None, help="YAML or JSON config file")
    p.add_argument("-l", "--log-format", default=None, help="text or json")
    p.add_argument(
        "-v",
        "--log-verbosity",
        default=None,
        help=f"{', '.join(LOG_LEVELS)} (env {LOG_VERBOSITY_ENV})",
    )
    p.add_argument("--feature-gates", default=None, help="comma-separated Gate=true|false")
    return p


CHAIN_FLAGS: dict[str, object] = {
    "partition": None,
    "extra_sts_endpoints": None,
    "backend_mode": None,
    "dynamicfile_path": None,
}
"""The server settings `add_chain_flags` sets, by attribute, for `load_settings`."""


def add_chain_flags(p: argparse.ArgumentParser) -> None:
    """The server's flags that build the mapping chain and the STS endpoint policy, for the
    offline commands (`verify`, `explain`) that run the chain as the daemon does."""
    p.add_argument("--partition", default=None, help="aws, aws-cn, aws-us-gov, ...")
    p.add_argument(
        "--backend-mode",
        dest="backend_mode",
        action="append",
        default=None,
        help="the backends, in order, as the server takes them",
    )
    p.add_argument("--dynamicfile-path", dest="dynamicfile_path", default=None)
    p.add_argument(
        "--extra-sts-endpoint",
        dest="extra_sts_endpoints",
        action="append",
        default=None,
        help="an extra allowed STS origin (VPC endpoint, local STS)",
    )


def pick(flag: Any, env: Mapping[str, str], env_key: str | None, config: Any, default: Any) -> Any:
    """Resolve one setting with upstream's precedence: flag > env > config file > default."""
    if flag is not None:
        return flag
    if env_key is not None and env.get(env_key):
        return env[env_key]
    if config is not None:
        return config
    return default
