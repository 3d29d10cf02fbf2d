"""`authd verify`: verify one token against STS and show who signed it and how it maps."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from authd.errors import AuthdError

if TYPE_CHECKING:
    from authd.config import ServerSettings
    from authd.server.proxies import Proxies

FLAGS: dict[str, object] = {"partition": None, "extra_sts_endpoints": None}


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    """Register `verify` and its flags."""
    p = sub.add_parser("verify", parents=parents, help="verify a token and show the identity")
    p.add_argument("-t", "--token", default=None, help="the token to verify")
    p.add_argument("-o", "--output", default=None, help="json for indented JSON")
    p.add_argument("--partition", default=None, help="aws, aws-cn, aws-us-gov, ...")
    p.add_argument(
        "--extra-sts-endpoint",
        dest="extra_sts_endpoints",
        action="append",
        default=None,
        help="an extra allowed STS origin (VPC endpoint, local STS)",
    )
    p.set_defaults(run=run, error_prefix="could not verify token: ")


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Verify the token; with `--config`, also run the mapping and print its decision."""
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
    settings = load_settings(args, env, FLAGS)
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
    from authd import token as tokens
    from authd.mapping.chain import Backend, MapperChain
    from authd.mapping.file import MountedFileTable
    from authd.server.authenticator import utc_now
    from authd.server.sts.client import open_sts_client

    policy = tokens.EndpointPolicy.create(
        partition=settings.partition, region=region, extra_origins=settings.extra_sts_endpoints
    )
    request = tokens.verify(token, now=utc_now(), policy=policy)
    async with open_sts_client(step_timeout=settings.sts_timeout, proxies=proxies) as sts:
        identity = await sts.get_caller_identity(request, cluster_id=settings.cluster_id)
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
        sso = settings.feature_gates.sso_role_match
        table = MountedFileTable.from_config(settings.mapping, sso_role_match=sso)
        prefixes = settings.mapping.reserved_prefixes_for("MountedFile")
        backend = Backend("MountedFile", table, reserved_prefixes=prefixes)
        chain = MapperChain([backend], scrubbed_accounts=settings.scrubbed_accounts)
        try:
            result = await chain.map(identity)
        except AuthdError as exc:
            report["Mapping"] = {"Allowed": False, "Reason": exc.reason, "Error": str(exc)}
        else:
            report["Mapping"] = {
                "Allowed": True,
                "Backend": result.backend,
                "Username": result.user.username,
                "Groups": list(result.user.groups),
            }
    return report
