"""`authd token`: print an ExecCredential for kubectl (B; authd 7 in docs/upstream-compat.md).

With `--cache` a cached token is answered from here with the standard library alone: botocore
(about 100 ms of imports) is only loaded, through `authd.client.presign`, when a token has
to be signed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from authd.cli.common import pick
from authd.errors import ClientError, ConfigError
from authd.gotext import parse_bool

if TYPE_CHECKING:
    from authd.client.options import TokenOptions
    from authd.config.client import ClientFileSettings

MFA_PROMPT = "Assume Role MFA token code: "
API_V1 = "client.authentication.k8s.io/v1"
API_V1BETA1 = "client.authentication.k8s.io/v1beta1"
API_V1ALPHA1 = "client.authentication.k8s.io/v1alpha1"


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    """Register `token` and its flags; defaults are None so precedence works.

    See B2 in docs/upstream-compat.md.
    """
    p = sub.add_parser("token", parents=parents, help="print a token for kubectl")
    p.add_argument("-r", "--role", default=None, help="IAM role ARN to assume (env DEFAULT_ROLE)")
    p.add_argument("-e", "--external-id", default=None, help="external ID for AssumeRole")
    p.add_argument("-s", "--session-name", default=None, help="session name for AssumeRole")
    p.add_argument("--region", default=None, help="AWS region of the STS endpoint")
    for flag, text in (
        ("--token-only", "print the bare token instead of an ExecCredential"),
        ("--forward-session-name", "reuse the caller's session name when assuming --role"),
        ("--cache", "cache credentials (shared with the Go tool) and the token itself"),
    ):
        p.add_argument(flag, nargs="?", const=True, default=None, type=_flag_bool, help=text)
    p.set_defaults(run=run, error_prefix="could not get token: ")


def _flag_bool(text: str) -> bool:
    """Go's flag syntax for booleans: `--cache`, `--cache=true`, `--cache=false`."""
    try:
        return parse_bool(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid boolean value {text!r}") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenSettings:
    """`token`'s settings after flag > env > config file > default."""

    options: TokenOptions
    token_only: bool = False
    cache: bool = False


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Print a token (or a cached one) for the cluster; any failure is one line and exit 1."""
    try:
        settings = resolve_settings(args, env)
    except ConfigError:
        # Upstream reports flag problems as `Error: ...` rather than `could not get token: ...`.
        args.error_prefix = "Error: "
        raise
    api_version, warning = api_version_from_exec_info(env.get("KUBERNETES_EXEC_INFO"))
    if warning:
        _warn(warning)
    if settings.options.role_arn:
        check_role_arn(settings.options.role_arn)
    token, expiration = _cached_or_fresh(settings, env)
    if settings.token_only:
        print(token)
    else:
        print(exec_credential(token, expiration, api_version=api_version))
    _skip_final_collection(env)
    return 0


def _skip_final_collection(env: Mapping[str, str]) -> None:
    """Spare the exiting process its last garbage collection.

    Once the line is printed the process only exits, but with botocore loaded the interpreter's
    final collection walks every object it created: about 25 ms that kubectl waits on every
    command. `gc.freeze()` moves them out of the collector's reach. Done only when running as the
    program (the CLI passes the real `os.environ`), never to an in-process caller.
    """
    if env is os.environ:
        gc.freeze()


def _cached_or_fresh(settings: TokenSettings, env: Mapping[str, str]) -> tuple[str, datetime]:
    """A cached token when `--cache` finds one, else a freshly signed (and cached) one."""
    if not settings.cache:
        from authd.client import presign  # see the module docstring

        fresh = presign.get_token(settings.options, env=env, prompt=_mfa_prompt)
        return fresh.token, fresh.expiration
    from authd.client.tokencache import (  # the parser stays light for `authd server`
        TokenCache,
        TokenKey,
        aws_config_file,
        aws_credentials_file,
        default_directory,
    )

    key = TokenKey.build(settings.options, env=env)
    cache = TokenCache(
        directory=default_directory(env),
        watched=(aws_config_file(env), aws_credentials_file(env)),
    )
    hit = cache.load(key, now=datetime.now(UTC), warn=_warn)
    if hit is not None:
        return hit.token, hit.expiration
    from authd.client import presign  # see the module docstring

    credential_cache = _credential_cache(settings, env)
    fresh = presign.get_token(
        settings.options, env=env, credential_cache=credential_cache, prompt=_mfa_prompt
    )
    cache.store(
        key,
        token=fresh.token,
        expiration=fresh.expiration,
        credentials_expire=fresh.credentials_expire,
        warn=_warn,
    )
    return fresh.token, fresh.expiration


def _credential_cache(settings: TokenSettings, env: Mapping[str, str]) -> Any:
    """Open upstream's credential cache, or say why not and go on without it.

    See B11 in docs/upstream-compat.md.
    """
    from authd.client import credcache

    try:
        return credcache.CredentialCache.open(
            credcache.default_path(env),
            cluster_id=settings.options.cluster_id,
            profile=credcache.cache_profile(env),
            role_arn=settings.options.role_arn,
        )
    except (ClientError, OSError) as exc:
        _warn(f"unable to use cache: {exc}")
        return None


def api_version_from_exec_info(raw: str | None) -> tuple[str, str | None]:
    """Pick the ExecCredential apiVersion from `KUBERNETES_EXEC_INFO`.

    See authd 7 in docs/upstream-compat.md.

    Returns the version and a deprecation warning to print on stderr (or None).

    Raises:
        ClientError: the variable is not JSON, not an object, or names an unknown apiVersion.
    """
    if not raw:
        return API_V1BETA1, None
    try:
        info = json.loads(raw)
    except ValueError as exc:
        raise ClientError(f"KUBERNETES_EXEC_INFO is not valid JSON: {exc}") from exc
    if not isinstance(info, dict):
        raise ClientError("KUBERNETES_EXEC_INFO is not a JSON object")
    version = info.get("apiVersion")
    if version in (None, ""):
        return API_V1BETA1, None
    if version in (API_V1, API_V1BETA1):
        return str(version), None
    if version == API_V1ALPHA1:
        return API_V1ALPHA1, (
            f"warning: {API_V1ALPHA1} is deprecated and removed from Kubernetes 1.24; "
            f"use {API_V1BETA1} or {API_V1} in your kubeconfig"
        )
    raise ClientError(
        f"KUBERNETES_EXEC_INFO names unsupported apiVersion {json.dumps(version)}; "
        f"expected {API_V1} or {API_V1BETA1}"
    )


def exec_credential(token: str, expiration: datetime, *, api_version: str) -> str:
    """Render the one-line ExecCredential JSON exactly as upstream.

    See B8 in docs/upstream-compat.md.
    """
    document = {
        "kind": "ExecCredential",
        "apiVersion": api_version,
        "spec": {"interactive": False},
        "status": {"expirationTimestamp": _rfc3339(expiration), "token": token},
    }
    return json.dumps(document, separators=(",", ":"))


def _rfc3339(moment: datetime) -> str:
    """RFC 3339 in UTC with whole seconds, e.g. `2023-04-28T00:14:00Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")


def check_role_arn(role_arn: str) -> None:
    """Refuse a `--role` that is not an IAM role ARN before any AWS call is made.

    Raises:
        ClientError: the ARN does not look like `arn:<partition>:iam::<account>:role/<name>`.
    """
    if not _ROLE_ARN.match(role_arn):
        raise ClientError(
            f"invalid role ARN {json.dumps(role_arn)}: "
            "expected arn:<partition>:iam::<12-digit account>:role/<name>"
        )


def resolve_settings(args: argparse.Namespace, env: Mapping[str, str]) -> TokenSettings:
    """Apply upstream's precedence to the flags, env and `--config` file.

    The file is read by `authd.config`, the reader the server uses, so each key means the same
    to both commands.

    Raises:
        ConfigError: no cluster ID, several, both session-name options, or a bad config file
            (with its path, line and key).
    """
    from authd.client.options import TokenOptions

    # Without --config nothing of authd.config is imported: PyYAML costs a cache hit 20 ms.
    file = load_config(args.config) if args.config else None
    cluster_id = _cluster_id(args.cluster_id, env, file.cluster_id if file else None)
    session_name = str(pick(args.session_name, {}, None, file.session_name if file else None, ""))
    forward = _setting_bool(args.forward_session_name, file.forward_session_name if file else None)
    if forward and session_name:
        raise ConfigError("cannot specify both --forward-session-name and --session-name parameter")
    options = TokenOptions(
        cluster_id=cluster_id,
        role_arn=str(pick(args.role, env, "DEFAULT_ROLE", file.role if file else None, "")),
        external_id=str(pick(args.external_id, {}, None, file.external_id if file else None, "")),
        session_name=session_name,
        forward_session_name=forward,
        region=str(pick(args.region, {}, None, file.region if file else None, "")),
    )
    return TokenSettings(
        options=options,
        token_only=_setting_bool(args.token_only, file.token_only if file else None),
        cache=_setting_bool(args.cache, file.cache if file else None),
    )


def _cluster_id(flag: list[str] | None, env: Mapping[str, str], config: str | None) -> str:
    """The one cluster ID: flag, then env, then the config file's (its first, current one)."""
    if flag and len(set(flag)) > 1:
        raise ConfigError(f"token takes one --cluster-id, got {len(set(flag))}")
    value = pick(
        flag[0] if flag else None, env, "KUBERNETES_AWS_AUTHENTICATOR_CLUSTER_ID", config, ""
    )
    if not value:
        raise ConfigError("cluster ID not specified")
    return str(value)


def _setting_bool(flag: bool | None, config: bool | None) -> bool:
    """A boolean flag, else the config file's value, else false."""
    if flag is not None:
        return flag
    return bool(config)


def load_config(path: str) -> ClientFileSettings:
    """Read the `--config` file's `token` keys with the config reader every command uses.

    Raises:
        ConfigError: the file cannot be read, does not parse, or has a value of the wrong type.
    """
    from authd.config import ClientFileSettings, FileConfig  # only with --config: yaml is slow

    return ClientFileSettings.from_file_config(FileConfig.from_file(path))


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def _mfa_prompt(_: str) -> str:
    """Upstream's MFA prompt: the question on stderr, the code read from stdin."""
    print(MFA_PROMPT, end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip()
