"""`authd explain`: run the configured mapping chain offline for one ARN or token and say why.

The chain is the daemon's own (`MapperChain` over the MountedFile and DynamicFile tables built
as the daemon builds them, with its feature gates), so the answer is the review's answer. The
Kubernetes backends (`EKSConfigMap`, `CRD`) need the API server: they are skipped and listed
under `skipped` (docs/troubleshooting.md). `verify --config` runs the same chain.

Exit codes: 0 allowed, 1 denied, 2 bad input (one line on stderr naming the input).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from authd.cli.common import CHAIN_FLAGS, add_chain_flags
from authd.errors import AuthdError, ConfigError, MappingError, StsRejectedError, TokenFormatError
from authd.identity import Identity

if TYPE_CHECKING:
    from authd.config import ServerSettings
    from authd.mapping.chain import MapperChain
    from authd.mapping.explain import SourceEntry
    from authd.server.proxies import Proxies

EC2_NOT_LOOKED_UP = "{{EC2PrivateDNSName}}"


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    """Register `explain` and its flags (the server's, for the chain)."""
    p = sub.add_parser(
        "explain", parents=parents, help="explain how an ARN or a token maps, and why not"
    )
    p.add_argument("arn", nargs="?", default=None, help="the caller's ARN, as STS returns it")
    p.add_argument("-t", "--token", default=None, help="a token: verified through STS first")
    p.add_argument("-o", "--output", default=None, help="json for one JSON document")
    add_chain_flags(p)
    p.set_defaults(run=run, error_prefix="authd explain: ")


@dataclass(frozen=True, slots=True, kw_only=True)
class OfflineChain:
    """The configured chain built from files, every entry's location, and what was skipped."""

    chain: MapperChain
    entries: tuple[SourceEntry, ...]
    skipped: tuple[str, ...]
    userid_strict: bool
    role_path_match: bool


def offline_chain(settings: ServerSettings) -> OfflineChain:
    """Build the chain `--backend-mode` names from the files, as the daemon loads them.

    Raises:
        ConfigError: a file that cannot be read or parsed (with its path, line and key).
    """
    from authd.config import FileConfig
    from authd.mapping.chain import Backend, MapperChain
    from authd.mapping.dynamicfile import DynamicFileTable
    from authd.mapping.explain import dynamic_file_entries, mounted_file_entries
    from authd.mapping.file import MountedFileTable

    gates = settings.feature_gates
    backends: list[Backend] = []
    entries: list[SourceEntry] = []
    skipped: list[str] = []
    for name in settings.backend_mode:
        prefixes = settings.mapping.reserved_prefixes_for(name)
        if name == "MountedFile":
            table: Any = MountedFileTable.from_config(
                settings.mapping,
                sso_role_match=gates.sso_role_match,
                role_path_match=gates.role_path_match,
            )
            if settings.config_path:
                entries += mounted_file_entries(FileConfig.from_file(settings.config_path))
        elif name == "DynamicFile":
            path = settings.dynamicfile_path
            if not path:
                raise ConfigError(
                    "dynamicfile is set in backend-mode but dynamicfilepath is not set"
                )
            data = _read(path)
            table = DynamicFileTable.from_bytes(
                data,
                path=path,
                userid_strict=settings.dynamicfile_userid_strict,
                refuse_bad_arns=True,
            )
            entries += dynamic_file_entries(data.decode("utf-8"), path=path)
        else:
            skipped.append(name)
            continue
        backends.append(Backend(name, table, reserved_prefixes=prefixes))
    return OfflineChain(
        chain=MapperChain(backends, scrubbed_accounts=settings.scrubbed_accounts),
        entries=tuple(entries),
        skipped=tuple(skipped),
        userid_strict=settings.dynamicfile_userid_strict,
        role_path_match=gates.role_path_match,
    )


def _read(path: str) -> bytes:
    """A file's bytes.

    Raises:
        ConfigError: it cannot be read (`<path>: <reason>`).
    """
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}", path=path) from exc


async def explain_identity(offline: OfflineChain, identity: Identity) -> dict[str, Any]:
    """Run the chain for `identity` and describe the decision as `explain -o json` prints it."""
    from authd.mapping.explain import hints, matched_entry
    from authd.outcomes import ALLOWED, outcome_of

    report: dict[str, Any] = {
        "arn": identity.arn,
        "canonicalArn": identity.canonical_arn,
        "allowed": False,
        "backend": None,
        "entry": None,
        "username": None,
        "groups": [],
        "reason": None,
        "error": None,
        "hints": [],
        "skipped": list(offline.skipped),
    }
    try:
        result = await offline.chain.map(identity, resolve_private_dns=_keep_placeholder)
    except MappingError as exc:
        report["reason"], report["error"] = outcome_of(exc).reason, str(exc)
        if report["reason"] != "not_mapped":
            return report  # an entry matched; its username or templates were refused
        near = hints(
            identity.canonical_arn, offline.entries, role_path_match=offline.role_path_match
        )
        report["hints"] = [{"code": h.code, "source": h.source, "message": h.message} for h in near]
        return report
    entry = matched_entry(
        offline.entries,
        backend=result.backend,
        canonical_arn=identity.canonical_arn,
        account_id=identity.account_id,
        user_id=identity.user_id,
        userid_strict=offline.userid_strict and result.backend == "DynamicFile",
        role_path_match=offline.role_path_match and result.backend == "MountedFile",
    )
    report.update(
        allowed=True,
        backend=result.backend,
        entry=None if entry is None else {"source": entry.source, "kind": entry.kind},
        username=result.user.username,
        groups=list(result.user.groups),
        reason=ALLOWED.reason,
    )
    return report


async def _keep_placeholder(instance_id: str) -> str:
    """Offline there is no EC2 lookup: `{{EC2PrivateDNSName}}` is shown as written."""
    return EC2_NOT_LOOKED_UP


def identity_from_arn(arn: str) -> Identity:
    """The identity STS would report for `arn` (no user ID or access key offline).

    Raises:
        ArnError: the ARN does not parse or names no identity.
    """
    from authd.arn import PrincipalType, canonicalize

    kind, canonical = canonicalize(arn)
    session = arn.rsplit("/", 1)[-1] if kind is PrincipalType.ASSUMED_ROLE else ""
    account = arn.split(":", 5)[4]
    return Identity(
        arn=arn,
        canonical_arn=canonical,
        account_id=account,
        user_id="",
        session_name=session,
        access_key_id="",
    )


async def verify_token(
    settings: ServerSettings, token: str, region: str, proxies: Proxies
) -> Identity:
    """Verify a token as a review does: the same host checks and endpoint flags, then STS.

    Raises:
        TokenFormatError, StsError: as in a review.
    """
    from authd import token as tokens
    from authd.server.authenticator import utc_now
    from authd.server.sts.client import open_sts_client

    policy = tokens.EndpointPolicy.create(
        partition=settings.partition, region=region, extra_origins=settings.extra_sts_endpoints
    )
    request = tokens.verify(token, now=utc_now(), policy=policy)
    async with open_sts_client(step_timeout=settings.sts_timeout, proxies=proxies) as sts:
        return await sts.get_caller_identity(request, cluster_id=settings.cluster_id)


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Explain one ARN or token; print JSON or text; exit 0 allowed, 1 denied, 2 bad input."""
    import trio

    from authd.cli.server import given_flags
    from authd.config import FileConfig, ServerSettings
    from authd.server.proxies import Proxies
    from authd.server.region import resolve_region

    if (args.arn is None) == (args.token is None):
        return _bad("give either an ARN or --token TOKEN")
    flags = given_flags(args, CHAIN_FLAGS)
    if args.token is None and not (args.cluster_id or env.get(_CLUSTER_ENV)):
        # An ARN is explained without STS: the cluster ID only names the token's audience.
        flags.setdefault("cluster_ids", ["explain"])
    try:
        # The ARN is checked first, so a typo in it is the only line on stderr.
        arn_identity = None if args.arn is None else _arn_identity(args.arn)
        file = FileConfig.from_file(args.config) if args.config else None
        settings = ServerSettings.resolve(flags=flags, env=env, file=file)
        for warning in settings.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        offline = offline_chain(settings)
        if arn_identity is not None:
            identity = arn_identity
        else:
            region = resolve_region(env, default="")
            proxies = Proxies.from_env(env)
            try:
                identity = trio.run(verify_token, settings, args.token, region, proxies)
            except (TokenFormatError, StsRejectedError) as exc:
                return _print(_refused(exc, offline.skipped), args.output)
    except AuthdError as exc:
        return _bad(str(exc))
    report = trio.run(explain_identity, offline, identity)
    return _print(report, args.output)


_CLUSTER_ENV = "KUBERNETES_AWS_AUTHENTICATOR_CLUSTER_ID"


def _arn_identity(arn: str) -> Identity:
    """The identity of the ARN argument, its error naming the argument."""
    from authd.errors import ArnError

    try:
        return identity_from_arn(arn)
    except ArnError as exc:
        raise ConfigError(f"ARN {arn!r} does not parse: {exc}") from exc


def _refused(exc: AuthdError, skipped: tuple[str, ...]) -> dict[str, Any]:
    """The report of a token that STS or the token checks refused (no identity to map)."""
    from authd.outcomes import outcome_of

    return {
        "arn": None,
        "canonicalArn": None,
        "allowed": False,
        "backend": None,
        "entry": None,
        "username": None,
        "groups": [],
        "reason": outcome_of(exc).reason,
        "error": str(exc),
        "hints": [],
        "skipped": list(skipped),
    }


def _bad(message: str) -> int:
    """Bad input: one line on stderr, exit 2."""
    print(f"authd explain: {message}", file=sys.stderr)
    return 2


def _print(report: dict[str, Any], output: str | None) -> int:
    """Print the report (one JSON document, or text); 0 when allowed, 1 when denied."""
    if output == "json":
        print(json.dumps(report, indent=2))
    else:
        print(render_text(report))
    return 0 if report["allowed"] else 1


def render_text(report: Mapping[str, Any]) -> str:
    """The human form: the decision, the entry as `file:line`, the rendered username, hints."""
    lines = [f"arn:       {report['arn'] or '-'}"]
    if report["canonicalArn"] and report["canonicalArn"] != report["arn"]:
        lines.append(f"canonical: {report['canonicalArn']}")
    if report["allowed"]:
        lines.append(f"decision:  allowed by {report['backend']}")
        entry = report["entry"]
        if entry is not None:
            lines.append(f"entry:     {entry['source']} ({entry['kind']})")
        lines.append(f"username:  {report['username']}")
        lines.append(f"groups:    {', '.join(report['groups']) or '-'}")
    else:
        lines.append(f"decision:  denied ({report['reason']}): {report['error']}")
    for hint in report["hints"]:
        lines.append(f"hint:      {hint['code']} at {hint['source']}: {hint['message']}")
    if report["skipped"]:
        lines.append(f"skipped:   {', '.join(report['skipped'])} (need the API server)")
    return "\n".join(lines)
