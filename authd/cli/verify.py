"""`authd verify`: verify one token against STS and show who signed it and how it maps."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from authd.cli.common import CHAIN_FLAGS, add_chain_flags
from authd.errors import AuthdError

if TYPE_CHECKING:
    from authd.config import ServerSettings
    from authd.server.proxies import Proxies


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    """Register `verify` and its flags."""
    p = sub.add_parser("verify", parents=parents, help="verify a token and show the identity")
    p.add_argument("-t", "--token", default=None, help="the token to verify")
    p.add_argument("-o", "--output", default=None, help="json for indented JSON")
    add_chain_flags(p)
    p.set_defaults(run=run, error_prefix="could not verify token: ")


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Verify the token; with `--config`, also run the configured chain and print its decision.

    The chain is `--backend-mode`'s (file-based backends; the Kubernetes ones are listed under
    `Skipped`), built as `authd explain` builds it.
    """
    import trio

    from authd.cli.server import load_settings
    from authd.server.proxies import Proxies
    from authd.server.region import resolve_region

    token = args.token
    if not token:
        print("error: token not specified", file=sys.stderr)
        return 1
    if not (args.cluster_id or env.get("KUBERNETES_AWS_AUTHENTICATOR_CLUSTER_ID") or args.config):
        print("error: cluster ID not specified", file=sys.stderr)
        return 1
    settings = load_settings(args, env, CHAIN_FLAGS)
    region = resolve_region(env, default="")
    report = trio.run(_verify, settings, token, region, Proxies.from_env(env))
    if args.output == "json":
        print(json.dumps(report, indent=4))
    else:
        print(" ".join(f"{key}:{value}" for key, value in report.items()))
    return 0


async def _verify(
    settings: ServerSettings, token: str, region: str, proxies: Proxies
) -> dict[str, Any]:
    from authd.cli.explain import offline_chain, verify_token

    identity = await verify_token(settings, token, region, proxies)
    report: dict[str, Any] = {
        "ARN": identity.arn,
        "CanonicalARN": identity.canonical_arn,
        "AccountID": identity.account_id,
        "UserID": identity.user_id,
        "SessionName": identity.session_name,
        "AccessKeyID": identity.access_key_id,
        "STSEndpoint": identity.sts_endpoint,
    }
    if settings.config_path:
        # The whole configured chain, as `authd explain` and the daemon run it.
        offline = offline_chain(settings)
        try:
            result = await offline.chain.map(identity)
        except AuthdError as exc:
            report["Mapping"] = {"Allowed": False, "Reason": exc.reason, "Error": str(exc)}
        else:
            report["Mapping"] = {
                "Allowed": True,
                "Backend": result.backend,
                "Username": result.user.username,
                "Groups": list(result.user.groups),
            }
        if offline.skipped:
            report["Mapping"]["Skipped"] = list(offline.skipped)
    return report
