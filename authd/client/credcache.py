"""Upstream's `--cache` credential cache, file for file, so authd and the Go tool can share it.

B11 in docs/upstream-compat.md: one YAML file (`$AWS_IAM_AUTHENTICATOR_CACHE_FILE` or
`~/.kube/cache/aws-iam-authenticator/credentials.yaml`) laid out as
`clusters: {<clusterID>: {<profile>: {<roleARN>: <credentials>}}}`; parents made 0700, the file
written 0600 and refused when group or others may read it; an advisory `flock` on the file itself,
shared to read and exclusive to write, tried every 250 ms for up to 1 s. The file is rewritten in
place (not renamed) because the Go tool locks the file's inode: a rename would let a reader hold
a lock on a file nobody writes any more. Only base credentials (before `--role`) are cached, and
only those that can expire are written back.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from authd.client.presign import AwsCredentials
from authd.errors import ClientError

CACHE_FILE_ENV = "AWS_IAM_AUTHENTICATOR_CACHE_FILE"
LOCK_RETRY = 0.25
LOCK_TIMEOUT = 1.0


def default_path(env: Mapping[str, str]) -> Path:
    """The cache file: `$AWS_IAM_AUTHENTICATOR_CACHE_FILE`, else under `$HOME/.kube/cache`."""
    if env.get(CACHE_FILE_ENV):
        return Path(env[CACHE_FILE_ENV])
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".kube" / "cache" / "aws-iam-authenticator" / "credentials.yaml"


def cache_profile(env: Mapping[str, str]) -> str:
    """The profile level of the layout: `$AWS_PROFILE` or `default`, as upstream."""
    return env.get("AWS_PROFILE") or "default"


@dataclass(frozen=True, slots=True, kw_only=True)
class CredentialCache:
    """One cache entry's view of the shared file; `open` has already read the entry."""

    path: Path
    cluster_id: str
    profile: str
    role_arn: str
    entry: AwsCredentials | None = None

    @classmethod
    def open(cls, path: Path, *, cluster_id: str, profile: str, role_arn: str) -> CredentialCache:
        """Create the parents (0700), check the file is private, read it under a shared lock.

        A missing file is fine (first run).

        Raises:
            ClientError: the file is not private, cannot be locked, read or parsed; the caller
                prints `unable to use cache: <message>` and goes on without the cache.
        """
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            info = path.stat()
        except FileNotFoundError:
            return cls(path=path, cluster_id=cluster_id, profile=profile, role_arn=role_arn)
        except OSError as exc:
            raise ClientError(f"couldn't stat cache file: {exc}") from exc
        if info.st_mode & 0o077:
            raise ClientError(f"cache file {path} is not private")
        with _locked(path, exclusive=False) as locked:
            if not locked:
                raise ClientError(f"unable to read lock file {path}: timed out")
            document = _read(path)
        entry = _entry(document, cluster_id, profile, role_arn)
        return cls(
            path=path, cluster_id=cluster_id, profile=profile, role_arn=role_arn, entry=entry
        )

    def get(self, *, now: datetime) -> AwsCredentials | None:
        """The cached credentials when they have keys and are unexpired (SDK `Expired()`)."""
        entry = self.entry
        if entry is None or not entry.access_key_id or not entry.secret_access_key:
            return None
        if entry.expires is not None and entry.expires <= now:
            return None
        return entry

    def put(self, credentials: AwsCredentials) -> None:
        """Write credentials that can expire back under an exclusive lock.

        Failing to lock or write only skips the write, as upstream: the token is still made.
        Other entries in the file (other clusters, profiles, roles, the Go tool's) are kept.
        """
        if not credentials.can_expire:
            return
        with _locked(self.path, exclusive=True) as locked:
            if not locked:
                return
            try:
                document = _read(self.path)
            except ClientError:
                document = {}  # as upstream: an unreadable cache is replaced
            clusters = document.setdefault("clusters", {})
            if not isinstance(clusters, dict):
                clusters = document["clusters"] = {}
            profiles = clusters.setdefault(self.cluster_id, {})
            roles = profiles.setdefault(self.profile, {})
            roles[self.role_arn] = _record(credentials)
            _write(self.path, document)


class _Lock:
    """flock on the file itself, retried every 250 ms for up to 1 s (gofrs/flock's protocol)."""

    def __init__(self, path: Path, *, exclusive: bool) -> None:
        self._path = path
        self._mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        self._fd = -1

    def __enter__(self) -> bool:
        # gofrs/flock opens (creating, 0600) the file it locks; so must we to share the lock.
        try:
            self._fd = os.open(self._path, os.O_RDONLY | os.O_CREAT, 0o600)
        except OSError:
            return False
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(self._fd, self._mode | fcntl.LOCK_NB)
                return True
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    return False
            if time.monotonic() + LOCK_RETRY > deadline:
                return False
            time.sleep(LOCK_RETRY)

    def __exit__(self, *exc_info: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor releases the flock


def _locked(path: Path, *, exclusive: bool) -> _Lock:
    return _Lock(path, exclusive=exclusive)


def _read(path: Path) -> dict[str, Any]:
    import yaml  # only `--cache` runs pay for PyYAML

    try:
        text = path.read_text()
    except OSError as exc:
        raise ClientError(f"unable to open file {path}: {exc}") from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ClientError(f"unable to parse file {path}: {' '.join(str(exc).split())}") from exc
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ClientError(f"unable to parse file {path}: not a YAML mapping")
    return document


def _entry(
    document: Mapping[str, Any], cluster: str, profile: str, role: str
) -> AwsCredentials | None:
    clusters = document.get("clusters")
    node: Any = clusters
    for key in (cluster, profile, role):
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    if not isinstance(node, dict):
        return None
    expires = _timestamp(node.get("expires"))
    can_expire = node.get("canexpire") is True
    return AwsCredentials(
        access_key_id=str(node.get("accesskeyid") or ""),
        secret_access_key=str(node.get("secretaccesskey") or ""),
        session_token=str(node.get("sessiontoken") or ""),
        source=str(node.get("source") or ""),
        # Go's Expired() ignores Expires unless CanExpire; an expiring entry without a readable
        # timestamp is treated as already expired.
        expires=(expires or datetime.min.replace(tzinfo=UTC)) if can_expire else None,
        account_id=str(node.get("accountid") or ""),
    )


def _timestamp(value: object) -> datetime | None:
    """PyYAML turns an unquoted RFC 3339 value into a datetime; a quoted one stays a string."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        text = value.replace("Z", "+00:00").replace("z", "+00:00")
        # Go writes up to nanoseconds; Python parses up to microseconds.
        head, dot, tail = text.partition(".")
        if dot:
            digits = len(tail) - len(tail.lstrip("0123456789"))
            text = head + "." + tail[: min(digits, 6)] + tail[digits:]
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _record(credentials: AwsCredentials) -> dict[str, Any]:
    """The Go SDK's aws.Credentials as yaml.v2 marshals it: lower-cased field names."""
    return {
        "accesskeyid": credentials.access_key_id,
        "secretaccesskey": credentials.secret_access_key,
        "sessiontoken": credentials.session_token,
        "source": credentials.source,
        "canexpire": credentials.can_expire,
        "expires": _GoTime(credentials.expires or datetime.min.replace(tzinfo=UTC)),
        "accountid": credentials.account_id,
    }


class _GoTime:
    """A time written as an unquoted RFC 3339 scalar, the only form yaml.v2 reads into time.Time."""

    def __init__(self, moment: datetime) -> None:
        self.moment = moment.astimezone(UTC)


def _write(path: Path, document: Mapping[str, Any]) -> None:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def represent_time(dumper: yaml.SafeDumper, value: _GoTime) -> Any:
        text = value.moment.strftime("%Y-%m-%dT%H:%M:%S")
        if value.moment.microsecond:
            text += f".{value.moment.microsecond:06d}".rstrip("0")
        return dumper.represent_scalar("tag:yaml.org,2002:timestamp", text + "Z")

    def represent_datetime(dumper: yaml.SafeDumper, value: datetime) -> Any:
        return represent_time(dumper, _GoTime(value if value.tzinfo else value.replace(tzinfo=UTC)))

    Dumper.add_representer(_GoTime, represent_time)
    # Entries of other clusters read back by PyYAML come as datetimes; keep them Go-readable.
    Dumper.add_representer(datetime, represent_datetime)
    text = yaml.dump(dict(document), Dumper=Dumper, default_flow_style=False, sort_keys=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as stream:
            stream.write(text)
    except OSError:
        return  # as upstream: failing to update the cache does not fail the token
