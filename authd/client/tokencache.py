"""authd's own token cache: hand kubectl the same token again until a minute before it expires.

authd 7 in docs/upstream-compat.md. One 0600 JSON file per key under
`~/.kube/cache/aws-iam-authenticator/tokens/`, named by the SHA-256 of the key and written by
atomic rename. The key is stored inside the file and compared on every read, so a file copied,
corrupted or written for another cluster, role, profile or access key is never used. The mtimes
of the AWS config and credentials files are stored too: editing either invalidates the token.

Standard library only, and nothing heavy: this is the whole of a cache hit, and kubectl runs the
plugin on every command.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from authd.client.options import TokenOptions
from authd.token import PREFIX

FORMAT = "authd-token-cache/v1"
# A token is printed again until one minute before its expirationTimestamp (13 min after signing).
MARGIN = timedelta(minutes=1)
# Sanity bound for a stored expiry: a file claiming more than this from now is not ours.
LONGEST = timedelta(minutes=15)

# AWS variables that choose the identity or the endpoint; their values are part of the key so a
# token is never reused after the user switches them (authd 7 in docs/upstream-compat.md lists the
# access key; the rest are authd's own caution). Secrets are never part of the key.
KEY_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL_STS",
    "AWS_ENDPOINT_URL",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_STS_REGIONAL_ENDPOINTS",
    "AWS_USE_FIPS_ENDPOINT",
    "AWS_USE_DUALSTACK_ENDPOINT",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)

Warn = Callable[[str], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenKey:
    """Everything that decides which token `authd token` would make."""

    options: TokenOptions
    profile: str = "default"
    environment: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def build(cls, options: TokenOptions, *, env: Mapping[str, str]) -> TokenKey:
        """The key for these options; `env` supplies the profile and the AWS variables."""
        return cls(
            options=options,
            profile=env.get("AWS_PROFILE") or "default",
            environment=tuple((name, env[name]) for name in KEY_ENV if env.get(name)),
        )

    def as_json(self) -> dict[str, object]:
        """The key as stored in the file (and hashed for its name)."""
        return {
            "clusterID": self.options.cluster_id,
            "roleARN": self.options.role_arn,
            "externalID": self.options.external_id,
            "sessionName": self.options.session_name,
            "forwardSessionName": self.options.forward_session_name,
            "region": self.options.region,
            "profile": self.profile,
            "environment": dict(self.environment),
        }

    def digest(self) -> str:
        """SHA-256 of the canonical JSON of the key: the file name."""
        canonical = json.dumps(self.as_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class CachedToken:
    """A token read back from the cache."""

    token: str = field(repr=False)
    expiration: datetime


def aws_config_file(env: Mapping[str, str]) -> Path:
    """The AWS config file: `AWS_CONFIG_FILE` or `~/.aws/config`."""
    return _aws_file(env, "AWS_CONFIG_FILE", "config")


def aws_credentials_file(env: Mapping[str, str]) -> Path:
    """The shared credentials file: `AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials`."""
    return _aws_file(env, "AWS_SHARED_CREDENTIALS_FILE", "credentials")


def _aws_file(env: Mapping[str, str], variable: str, name: str) -> Path:
    if env.get(variable):
        return Path(env[variable]).expanduser()
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".aws" / name


def default_directory(env: Mapping[str, str]) -> Path:
    """`$HOME/.kube/cache/aws-iam-authenticator/tokens`."""
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".kube" / "cache" / "aws-iam-authenticator" / "tokens"


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenCache:
    """The token cache directory and the files whose change invalidates every entry."""

    directory: Path
    watched: tuple[Path, ...] = ()

    def path_for(self, key: TokenKey) -> Path:
        """The file that holds the token for `key`."""
        return self.directory / key.digest()

    def load(self, key: TokenKey, *, now: datetime, warn: Warn) -> CachedToken | None:
        """The cached token for `key` if still good for a minute, else None.

        Never raises for a bad file: a corrupt, foreign or non-private file is reported
        through `warn` and ignored (the caller then signs a fresh token and overwrites it).
        """
        path = self.path_for(key)
        try:
            with open(path, "rb") as stream:
                info = os.fstat(stream.fileno())
                raw = stream.read(65536)
        except FileNotFoundError:
            return None
        except OSError as exc:
            warn(f"ignoring token cache file {path}: {exc.strerror}")
            return None
        problem, found = _check(info, raw, key, now)
        if problem:
            warn(f"ignoring token cache file {path}: {problem}")
            return None
        if found is None or found.files != _mtimes(self.watched) or now >= found.valid_until:
            # Missing, the AWS config or credentials changed, or too close to expiry.
            return None
        return CachedToken(token=found.token, expiration=found.expiration)

    def store(
        self,
        key: TokenKey,
        *,
        token: str,
        expiration: datetime,
        credentials_expire: datetime | None,
        warn: Warn,
    ) -> None:
        """Keep `token` until a minute before it, or the credentials that signed it, expire.

        Written by `authd.files.write_atomic` (a temporary 0600 file in the same directory,
        fsynced, renamed over the old one, the directory fsynced), so a concurrent reader, or
        the next run after a crash, sees the old file or the new one, never half of either.
        Failures are reported through `warn`; the token is still printed.
        """
        valid_until = expiration - MARGIN
        if credentials_expire is not None:
            valid_until = min(valid_until, credentials_expire - MARGIN)
        document = {
            "format": FORMAT,
            "key": key.as_json(),
            "token": token,
            "expirationTimestamp": _rfc3339(expiration),
            "validUntil": _rfc3339(valid_until),
            "files": _mtimes(self.watched),
        }
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            from authd.files import write_atomic  # only a miss writes; keep the hit path lean

            data = json.dumps(document, separators=(",", ":")).encode()
            write_atomic(self.path_for(key), data, mode=0o600)
        except OSError as exc:
            warn(f"cannot write token cache in {self.directory}: {exc}")


@dataclass(frozen=True, slots=True, kw_only=True)
class _Entry:
    token: str = field(repr=False)
    expiration: datetime
    valid_until: datetime
    files: dict[str, object]


def _check(
    info: os.stat_result, raw: bytes, key: TokenKey, now: datetime
) -> tuple[str, _Entry | None]:
    """Check the file is private, well-formed and written for `key`: (problem, entry)."""
    if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077 or info.st_uid != os.getuid():
        return "not a private file owned by this user", None
    try:
        document = json.loads(raw)
    except ValueError:
        return "not valid JSON", None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        return "not an authd token cache file", None
    if document.get("key") != key.as_json():
        return "written for another key", None
    return _entry(document, now)


def _entry(document: dict[str, object], now: datetime) -> tuple[str, _Entry | None]:
    token = document.get("token")
    files = document.get("files")
    valid_until = _time(document.get("validUntil"))
    expiration = _time(document.get("expirationTimestamp"))
    if not isinstance(token, str) or not token.startswith(PREFIX):
        return "no token", None
    if not isinstance(files, dict) or valid_until is None or expiration is None:
        return "incomplete entry", None
    if valid_until > expiration - MARGIN or expiration - now > LONGEST:
        return "inconsistent times", None
    return "", _Entry(token=token, expiration=expiration, valid_until=valid_until, files=files)


def _mtimes(paths: Iterable[Path]) -> dict[str, object]:
    stamps: dict[str, object] = {}
    for path in paths:
        try:
            stamps[str(path)] = os.stat(path).st_mtime_ns
        except OSError:
            stamps[str(path)] = None
    return stamps


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else None
