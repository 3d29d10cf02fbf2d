"""Client side: presign STS GetCallerIdentity for a cluster and wrap it as an ExecCredential.

Module-level imports are the standard library only, so the token-cache hit path can format an
ExecCredential without paying for botocore (about 100 ms of imports). botocore is imported inside
the functions that sign, resolve credentials or call STS. The fresh path with credentials in the
environment never creates a botocore session or client: it takes the first link of botocore's
credential chain (`EnvProvider`), resolves the endpoint with botocore's STS endpoint ruleset, and
signs with `SigV4QueryAuth`. Every other credential source goes through a full botocore session.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from authd import __version__
from authd.client.options import TokenOptions
from authd.client.tokencache import aws_config_file
from authd.errors import ClientError, CredentialError
from authd.imds import imds_region
from authd.token import CLUSTER_ID_HEADER
from authd.token import encode as encode_token  # the one token codec, shared with the server

# Kept at 60 for servers <= 0.3.0 that required 0..60; STS ignores it
# (A4 in docs/upstream-compat.md).
PRESIGN_EXPIRES = 60
# One minute less than the 15 minutes STS accepts a presigned URL for
# (B10 in docs/upstream-compat.md).
TOKEN_LIFETIME = timedelta(minutes=14)
USER_AGENT = f"aws-iam-authenticator/{__version__}"

_AMZ_DATE = "%Y%m%dT%H%M%SZ"
_REGION = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


@dataclass(frozen=True, slots=True, kw_only=True)
class AwsCredentials:
    """AWS credentials as the credential cache stores them (B11 in docs/upstream-compat.md)."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(default="", repr=False)
    source: str = ""
    expires: datetime | None = None  # None: static credentials that cannot expire
    account_id: str = ""

    @property
    def can_expire(self) -> bool:
        """True for temporary credentials, the only ones the cache writes back."""
        return self.expires is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """Where the presigned URL points and which region its signature is scoped to."""

    url: str
    signing_region: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Token:
    """A signed token, when kubectl should ask again, and when its credentials stop working."""

    token: str = field(repr=False)
    expiration: datetime
    credentials_expire: datetime | None = None


class CredentialStore(Protocol):
    """The credential cache as `get_token` uses it (authd.client.credcache.CredentialCache)."""

    def get(self, *, now: datetime) -> AwsCredentials | None:
        """Cached base credentials that still have keys and are unexpired, else None."""
        ...

    def put(self, credentials: AwsCredentials) -> None:
        """Write fresh base credentials back (only called for credentials that can expire)."""
        ...


Warn = Callable[[str], None]


# --- pure helpers used on every path ------------------------------------------------------


def signing_time(url: str) -> datetime:
    """The X-Amz-Date of a presigned URL, as an aware UTC datetime."""
    match = re.search(r"[?&]X-Amz-Date=(\d{8}T\d{6}Z)(?:&|$)", url)
    if match is None:
        raise ClientError("presigned URL has no X-Amz-Date")
    return datetime.strptime(match.group(1), _AMZ_DATE).replace(tzinfo=UTC)


def order_query(url: str) -> str:
    """Put the query in upstream's order: parameters sorted, X-Amz-Signature last.

    See A2 in docs/upstream-compat.md.

    The order does not change the signature: SigV4 signs the canonically sorted query.
    """
    base, _, query = url.partition("?")
    pieces = query.split("&")
    signature = [p for p in pieces if p.startswith("X-Amz-Signature=")]
    rest = sorted((p for p in pieces if not p.startswith("X-Amz-Signature=")), key=_query_key)
    return base + "?" + "&".join(rest + signature)


def _query_key(piece: str) -> str:
    return piece.partition("=")[0]


def _one_line(text: object) -> str:
    """Collapse a foreign error message onto one line for the CLI's single stderr line."""
    return " ".join(str(text).split())


# --- AWS shared configuration (profile, region, endpoint settings) ------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AwsSettings:
    """The parts of the AWS environment and config file that decide region and endpoint."""

    profile: str
    profile_region: str = ""
    endpoint_url: str = ""  # configured endpoint (AWS_ENDPOINT_URL_STS and friends), or ""
    use_fips: bool = False
    use_dualstack: bool = False
    sts_regional_endpoints: str = "regional"


def botocore_profile(env: Mapping[str, str]) -> str:
    """The profile botocore uses: `AWS_DEFAULT_PROFILE`, then `AWS_PROFILE`, then `default`."""
    return env.get("AWS_DEFAULT_PROFILE") or env.get("AWS_PROFILE") or "default"


def load_settings(env: Mapping[str, str]) -> AwsSettings:
    """Read region and endpoint settings from the environment and the profile's config section.

    Precedence follows botocore: environment first, then the profile. For the endpoint URL:
    `AWS_ENDPOINT_URL_STS`, the profile's `services` section, `AWS_ENDPOINT_URL`, the profile's
    `endpoint_url`; all ignored when `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS` is true.

    Raises:
        ClientError: the config file cannot be parsed or a setting has an invalid value.
    """
    from botocore.configloader import load_config  # lazy: see module docstring
    from botocore.exceptions import BotoCoreError

    profile = botocore_profile(env)
    path = aws_config_file(env)
    try:
        config: dict[str, Any] = load_config(str(path)) if path.is_file() else {}
    except (BotoCoreError, OSError, ValueError) as exc:
        raise ClientError(f"cannot read AWS config file {path}: {_one_line(exc)}") from exc
    section: dict[str, Any] = config.get("profiles", {}).get(profile, {})

    def setting(variable: str, key: str) -> str:
        return str(env.get(variable) or section.get(key) or "")

    regional = setting("AWS_STS_REGIONAL_ENDPOINTS", "sts_regional_endpoints") or "regional"
    if regional.lower() not in ("regional", "legacy"):
        raise ClientError(
            f"invalid sts_regional_endpoints value {json.dumps(regional)}: "
            "expected regional or legacy"
        )
    return AwsSettings(
        profile=profile,
        profile_region=str(section.get("region") or ""),
        endpoint_url=_configured_endpoint(env, section, config),
        use_fips=_true(setting("AWS_USE_FIPS_ENDPOINT", "use_fips_endpoint")),
        use_dualstack=_true(setting("AWS_USE_DUALSTACK_ENDPOINT", "use_dualstack_endpoint")),
        sts_regional_endpoints=regional.lower(),
    )


def _configured_endpoint(
    env: Mapping[str, str], section: Mapping[str, Any], config: Mapping[str, Any]
) -> str:
    ignore = env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS") or section.get(
        "ignore_configured_endpoint_urls", ""
    )
    if _true(str(ignore)):
        return ""
    services = config.get("services", {}).get(str(section.get("services", "")), {})
    sts_service = services.get("sts", {}) if isinstance(services, dict) else {}
    candidates = (
        env.get("AWS_ENDPOINT_URL_STS"),
        sts_service.get("endpoint_url") if isinstance(sts_service, dict) else None,
        env.get("AWS_ENDPOINT_URL"),
        section.get("endpoint_url"),
    )
    return next((str(c) for c in candidates if c), "")


def _true(value: str) -> bool:
    return value.strip().lower() == "true"


def resolve_region(flag_region: str, env: Mapping[str, str], settings: AwsSettings) -> str:
    """Region per B4 in docs/upstream-compat.md: flag, AWS_REGION, AWS_DEFAULT_REGION, profile,
    IMDS, us-east-1.
    """
    for candidate in (
        flag_region,
        env.get("AWS_REGION", ""),
        env.get("AWS_DEFAULT_REGION", ""),
        settings.profile_region,
    ):
        if candidate:
            return candidate
    return imds_region(env) or "us-east-1"


def resolve_endpoint(region: str, settings: AwsSettings) -> Endpoint:
    """The STS endpoint for `region` from botocore's STS endpoint ruleset.

    See B5 in docs/upstream-compat.md.

    Only the ruleset (2 kB) and the partition table are loaded, never the STS service model.

    Raises:
        ClientError: the region or the endpoint settings are invalid for every partition.
    """
    import gzip

    import botocore
    from botocore.endpoint_provider import EndpointProvider
    from botocore.exceptions import EndpointProviderError

    if not _REGION.match(region):
        # The ruleset would happily build `sts.<anything>.amazonaws.com`; clients refuse that.
        raise ClientError(f"invalid region {json.dumps(region)}: not a valid host label")

    data = Path(botocore.__file__).parent / "data"
    with gzip.open(data / "sts" / "2011-06-15" / "endpoint-rule-set-1.json.gz") as stream:
        ruleset = json.load(stream)
    partitions = json.loads((data / "partitions.json").read_text())
    params: dict[str, Any] = {
        "Region": region,
        "UseFIPS": settings.use_fips,
        "UseDualStack": settings.use_dualstack,
        "UseGlobalEndpoint": settings.sts_regional_endpoints == "legacy",
    }
    if settings.endpoint_url:
        params["Endpoint"] = settings.endpoint_url
    try:
        resolved = EndpointProvider(ruleset_data=ruleset, partition_data=partitions)
        result = resolved.resolve_endpoint(**params)
    except EndpointProviderError as exc:
        raise ClientError(f"cannot resolve the STS endpoint: {_one_line(exc)}") from exc
    signing_region = region
    for scheme in result.properties.get("authSchemes", []):
        signing_region = scheme.get("signingRegion", signing_region)
    return Endpoint(url=str(result.url), signing_region=signing_region)


# --- signing ------------------------------------------------------------------------------


def presign_url(credentials: AwsCredentials, *, cluster_id: str, endpoint: Endpoint) -> str:
    """Presign `GET /?Action=GetCallerIdentity` with `x-k8s-aws-id` signed.

    See A2, A3 in docs/upstream-compat.md.
    """
    from botocore.auth import SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import ReadOnlyCredentials

    request = AWSRequest(
        method="GET",
        url=endpoint.url.rstrip("/") + "/",
        params={"Action": "GetCallerIdentity", "Version": "2011-06-15"},
        headers={CLUSTER_ID_HEADER: cluster_id},
    )
    signer_credentials = ReadOnlyCredentials(
        credentials.access_key_id,
        credentials.secret_access_key,
        credentials.session_token or None,
    )
    signer = SigV4QueryAuth(
        signer_credentials, "sts", endpoint.signing_region, expires=PRESIGN_EXPIRES
    )
    signer.add_auth(request)
    return order_query(str(request.url))


def make_token(credentials: AwsCredentials, *, cluster_id: str, endpoint: Endpoint) -> Token:
    """Sign a token for `cluster_id`; it is offered to kubectl for 14 minutes.

    See B10 in docs/upstream-compat.md.
    """
    url = presign_url(credentials, cluster_id=cluster_id, endpoint=endpoint)
    return Token(
        token=encode_token(url),
        expiration=signing_time(url) + TOKEN_LIFETIME,
        credentials_expire=credentials.expires,
    )


# --- credentials --------------------------------------------------------------------------


def get_token(
    options: TokenOptions,
    *,
    env: Mapping[str, str],
    credential_cache: CredentialStore | None = None,
    prompt: Callable[[str], str] | None = None,
) -> Token:
    """Resolve credentials (assuming `options.role_arn` if set) and sign a token.

    `env` is the environment the CLI read; botocore's credential providers still read the
    process environment themselves. `prompt` answers an MFA prompt (upstream: stderr + stdin).

    Raises:
        CredentialError: no credentials, a credential source failed, or STS refused AssumeRole.
        ClientError: invalid region, endpoint settings or role ARN.
    """
    settings = load_settings(env)
    region = resolve_region(options.region, env, settings)
    endpoint = resolve_endpoint(region, settings)
    session: Any = None
    # Keys in the environment win over everything, the cache included (upstream would sign with
    # cached credentials of the same profile even then, so the token's access key would not be
    # the one the user exported).
    base = _env_credentials(env)
    if base is None and credential_cache is not None:
        base = credential_cache.get(now=datetime.now(UTC))
    if base is None:
        session = _session(region, prompt)
        base = _chain_credentials(session, settings.profile)
        if credential_cache is not None and base.can_expire:
            credential_cache.put(base)
    credentials = base
    if options.role_arn:
        session = session or _session(region, prompt)
        credentials = _assume_role(session, base, options, endpoint)
    return make_token(credentials, cluster_id=options.cluster_id, endpoint=endpoint)


def _env_credentials(env: Mapping[str, str]) -> AwsCredentials | None:
    """botocore's first credential provider; when it finds keys the chain stops there anyway."""
    from botocore.credentials import EnvProvider
    from botocore.exceptions import BotoCoreError

    try:
        found = EnvProvider(environ=dict(env)).load()
    except (BotoCoreError, ValueError) as exc:
        raise CredentialError(f"environment credentials: {_one_line(exc)}") from exc
    return None if found is None else _from_botocore(found, env.get("AWS_ACCOUNT_ID", ""))


def _session(region: str, prompt: Callable[[str], str] | None) -> Any:
    import botocore.session

    session = botocore.session.Session()
    session.user_agent_extra = USER_AGENT
    session.set_config_variable("region", region)
    if prompt is not None:
        # Upstream prompts for an MFA code on stderr and reads stdin; botocore's default
        # prompter uses getpass on the terminal, which kubectl does not always give us.
        assume_role = session.get_component("credential_provider").get_provider("assume-role")
        if assume_role is not None and hasattr(assume_role, "_prompter"):
            assume_role._prompter = prompt
    return session


def _chain_credentials(session: Any, profile: str) -> AwsCredentials:
    from botocore.exceptions import BotoCoreError
    from botocore.exceptions import ClientError as BotoClientError

    try:
        found = session.get_credentials()
        frozen = None if found is None else found.get_frozen_credentials()
    except (BotoCoreError, BotoClientError, OSError, ValueError) as exc:
        raise CredentialError(f"cannot load AWS credentials: {_one_line(exc)}") from exc
    if found is None or frozen is None or not frozen.access_key:
        tried = ", ".join(_provider_names(session))
        raise CredentialError(
            f"no AWS credentials found (profile {json.dumps(profile)}; tried: {tried})"
        )
    return _from_botocore(found, getattr(frozen, "account_id", "") or "")


_PROVIDER_NAMES = {
    "env": "environment variables",
    "assume-role": "config-file assume-role profile",
    "assume-role-with-web-identity": "web identity (AWS_WEB_IDENTITY_TOKEN_FILE)",
    "sso": "SSO",
    "shared-credentials-file": "shared credentials file",
    "custom-process": "credential_process",
    "config-file": "config file keys",
    "ec2-credentials-file": "EC2 credentials file",
    "boto-config": "boto config",
    "container-role": "container credentials",
    "iam-role": "EC2 instance metadata",
}


def _provider_names(session: Any) -> list[str]:
    resolver = session.get_component("credential_provider")
    return [_PROVIDER_NAMES.get(p.METHOD, p.METHOD) for p in resolver.providers]


def _from_botocore(credentials: Any, account_id: str) -> AwsCredentials:
    frozen = credentials.get_frozen_credentials()
    # RefreshableCredentials keeps its expiry privately; static Credentials have none.
    expires = getattr(credentials, "_expiry_time", None)
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    return AwsCredentials(
        access_key_id=frozen.access_key,
        secret_access_key=frozen.secret_key,
        session_token=frozen.token or "",
        source=str(getattr(credentials, "method", "") or ""),
        expires=expires,
        account_id=account_id or str(getattr(frozen, "account_id", "") or ""),
    )


def _sts_client(session: Any, base: AwsCredentials, endpoint: Endpoint) -> Any:
    from botocore.config import Config

    return session.create_client(
        "sts",
        region_name=endpoint.signing_region,
        endpoint_url=endpoint.url,
        aws_access_key_id=base.access_key_id,
        aws_secret_access_key=base.secret_access_key,
        aws_session_token=base.session_token or None,
        config=Config(user_agent_extra=USER_AGENT, retries={"mode": "standard"}),
    )


def _assume_role(
    session: Any, base: AwsCredentials, options: TokenOptions, endpoint: Endpoint
) -> AwsCredentials:
    """AssumeRole with the base credentials; session name as B7 in docs/upstream-compat.md."""
    from botocore.exceptions import BotoCoreError
    from botocore.exceptions import ClientError as BotoClientError

    client = _sts_client(session, base, endpoint)
    role = options.role_arn
    try:
        session_name = options.session_name
        if options.forward_session_name:
            user_id = str(client.get_caller_identity().get("UserId", ""))
            parts = user_id.split(":")
            session_name = parts[1] if len(parts) == 2 else ""
        # The Go SDK's default session name, kept so policies and logs keyed on it still match.
        session_name = session_name or f"aws-go-sdk-{time.time_ns()}"
        params = {"RoleArn": role, "RoleSessionName": session_name}
        if options.external_id:
            params["ExternalId"] = options.external_id
        answer = client.assume_role(**params)
    except BotoClientError as exc:
        error = exc.response.get("Error", {})
        raise CredentialError(
            f"STS refused to assume role {role}: "
            f"{error.get('Code', 'error')}: {_one_line(error.get('Message', ''))}"
        ) from exc
    except (BotoCoreError, OSError, ValueError) as exc:
        raise CredentialError(f"cannot assume role {role}: {_one_line(exc)}") from exc
    issued = answer["Credentials"]
    expires = issued["Expiration"]
    return AwsCredentials(
        access_key_id=issued["AccessKeyId"],
        secret_access_key=issued["SecretAccessKey"],
        session_token=issued.get("SessionToken", ""),
        source="AssumeRoleProvider",
        expires=expires if expires.tzinfo else expires.replace(tzinfo=UTC),
    )
