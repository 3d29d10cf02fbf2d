"""The MountedFile mapping schema: `mapRoles`, `mapUsers`, `mapAccounts`, `reservedPrefixConfig`.

Entries are read from the config file's `server` section, validated with upstream's texts
(docs/server.md) and canonicalised; every error names the file, line and key of the entry.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from authd.arn import PARTITIONS, canonicalize
from authd.config.file import FileConfig
from authd.config.located import (
    ACCOUNT_ID,
    Located,
    as_account,
    as_str,
    as_strs,
    items,
    section,
)
from authd.errors import ArnError, ConfigError
from authd.gotext import go_quote
from authd.names import BACKEND_MODES, DEPRECATED_BACKEND_MODES

_PERMISSION_SET_NAME = re.compile(r"[\w+=,.@-]{1,32}\Z", re.ASCII)
_SSO_KEYS = ("permissionSetName", "accountID", "partition")
T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class SSOSpec:
    """An `sso:` role entry: matches the IAM Identity Center roles of one permission set."""

    permission_set_name: str
    account_id: str
    partition: str = ""

    def arn_prefix(self) -> str:
        """The lower-cased canonical-ARN prefix this entry matches (the pattern minus `*`).

        Upstream drops a non-empty partition (a bug, mapping 5 in docs/upstream-compat.md); authd
        uses it.
        """
        partition = self.partition or "aws"
        return (
            f"arn:{partition}:iam::{self.account_id}:role/"
            f"AWSReservedSSO_{self.permission_set_name}_"
        ).lower()


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleMapping:
    """One `mapRoles` entry: a role ARN (or SSO permission set) to a username and groups."""

    rolearn: str = ""
    sso: SSOSpec | None = None
    username: str = ""
    groups: tuple[str, ...] = ()

    def check(self) -> tuple[str, str] | None:
        """Return `(key, message)` for the first problem upstream rejects, or None.

        `key` is where the problem is (`""` for the entry itself, or `sso.accountID`, ...).
        """
        if not self.rolearn and self.sso is None:
            return "", "one of rolearn or SSO must be supplied"
        if self.rolearn and self.sso is not None:
            return "", "only one of rolearn or SSO can be supplied"
        return None if self.sso is None else _sso_problem(self.sso)


def _sso_problem(sso: SSOSpec) -> tuple[str, str] | None:
    """Check an `sso:` block's fields with upstream's texts."""
    if not ACCOUNT_ID.match(sso.account_id):
        return "sso.accountID", f"AccountID '{sso.account_id}' is not a valid AWS Account ID"
    if not _PERMISSION_SET_NAME.match(sso.permission_set_name):
        return "sso.permissionSetName", (
            f"PermissionSetName '{sso.permission_set_name}' is not a valid AWS SSO "
            "PermissionSet Name"
        )
    if sso.partition and sso.partition not in PARTITIONS:
        return "sso.partition", f"partition '{sso.partition}' is not a valid AWS partition"
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class UserMapping:
    """One `mapUsers` entry: a user ARN to a username and groups."""

    userarn: str = ""
    username: str = ""
    groups: tuple[str, ...] = ()


def _parse_sso(val: Located, warnings: list[str]) -> SSOSpec | None:
    """Read an `sso:` block; an explicit empty mapping is an (invalid) entry, as upstream."""
    if val.value is None:
        return None
    sec = section(val, _SSO_KEYS, warnings)
    return SSOSpec(
        permission_set_name=as_str(sec.get("permissionSetName")),
        account_id=as_str(sec.get("accountID")),
        partition=as_str(sec.get("partition")),
    )


def read_role(val: Located, warnings: list[str]) -> tuple[RoleMapping, dict[str, Located]]:
    """Read and check one `mapRoles` entry as every backend does; its ARN is not parsed yet.

    Shared by MountedFile and the aws-auth ConfigMap, which differ only in what they do with
    the ARN next. Returns the entry and its keys, so the caller can point at the `rolearn` line.

    Raises:
        ConfigError: a key of the wrong type, or an entry upstream's check refuses (with the
            location of the key at fault).
    """
    sec = section(val, ("rolearn", "username", "groups", "userid", "sso"), warnings)
    sso_val = sec.get("sso")
    entry = RoleMapping(
        rolearn=as_str(sec.get("rolearn")),
        sso=_parse_sso(sso_val, warnings) if sso_val is not None else None,
        username=as_str(sec.get("username")),
        groups=as_strs(sec.get("groups")),
    )
    as_str(sec.get("userid"))  # accepted and type-checked, unused (as upstream)
    problem = entry.check()
    if problem is not None:
        key, message = problem
        target = val
        if key and sso_val is not None:
            sso_sec = section(sso_val, _SSO_KEYS, [])
            target = sso_sec.get(key.removeprefix("sso."), sso_val)
        target.fail(message)
    return entry, sec


def read_user(val: Located, warnings: list[str]) -> tuple[UserMapping, dict[str, Located]]:
    """Read one `mapUsers` entry as every backend does; its ARN is not parsed yet.

    Raises:
        ConfigError: a key of the wrong type, or no `userarn` (with its location).
    """
    sec = section(val, ("userarn", "username", "groups", "userid"), warnings)
    entry = UserMapping(
        userarn=as_str(sec.get("userarn")),
        username=as_str(sec.get("username")),
        groups=as_strs(sec.get("groups")),
    )
    as_str(sec.get("userid"))  # accepted and type-checked, unused (as upstream)
    if not entry.userarn:
        val.fail("value for userarn must be supplied")
    return entry, sec


def _parse_role(val: Located, warnings: list[str]) -> RoleMapping:
    """Read, validate and canonicalise one `mapRoles` entry."""
    entry, sec = read_role(val, warnings)
    if not entry.rolearn:
        return entry
    try:
        _, canonical = canonicalize(entry.rolearn)
    except ArnError as exc:
        sec["rolearn"].fail(str(exc))
    resource = canonical.split(":", 5)[5]
    if resource.startswith("role/") and "/" in resource[len("role/") :]:
        warnings.append(
            f"{sec['rolearn'].where}: role ARN has a path; role identities carry no path, so "
            "this entry never matches unless the RolePathMatch feature gate is on "
            "(use arn:<partition>:iam::<account>:role/<name>, or turn the gate on)"
        )
    return RoleMapping(rolearn=canonical, username=entry.username, groups=entry.groups)


def _parse_user(val: Located, warnings: list[str]) -> UserMapping:
    """Read, validate and canonicalise (lower-cased) one `mapUsers` entry."""
    entry, sec = read_user(val, warnings)
    try:
        _, canonical = canonicalize(entry.userarn.lower())
    except ArnError as exc:
        sec["userarn"].fail(f"error canonicalizing ARN: {exc}")
    return UserMapping(userarn=canonical, username=entry.username, groups=entry.groups)


def _parse_reserved(val: Located | None, warnings: list[str]) -> dict[str, tuple[str, ...]]:
    """Read `reservedPrefixConfig` into backend name -> prefixes (the last entry wins)."""
    result: dict[str, tuple[str, ...]] = {}
    for item in items(val):
        sec = section(item, ("backendMode", "usernamePrefixReserveList"), warnings)
        mode_val = sec.get("backendMode", item)
        mode = as_str(sec.get("backendMode"))
        if mode not in BACKEND_MODES:
            # Upstream silently ignores such an entry, leaving the prefixes unprotected.
            hint = DEPRECATED_BACKEND_MODES.get(mode)
            suffix = f" (use {go_quote(hint)})" if hint else ""
            mode_val.fail(f"backendmode {go_quote(mode)} is not a valid mode{suffix}")
        result[mode] = as_strs(sec.get("usernamePrefixReserveList"))
    return result


def _prefixed(prefix: str, parse: Callable[[], T]) -> T:
    """Run one section parser, prefixing its error with upstream's section text."""
    try:
        return parse()
    except ConfigError as exc:
        raise exc.prefixed(prefix) from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class MappingConfig:
    """The MountedFile mappings and the per-backend reserved username prefixes.

    Role ARNs are canonical (original case); user ARNs canonical and lower-cased; account IDs
    literal text. Built by `from_file_config`; an empty value means no mappings.
    """

    map_roles: tuple[RoleMapping, ...] = ()
    map_users: tuple[UserMapping, ...] = ()
    map_accounts: tuple[str, ...] = ()
    reserved_prefixes: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_file_config(cls, file: FileConfig | None) -> MappingConfig:
        """Build the mappings from the config file's `server` section (none without a file).

        Raises:
            ConfigError: `invalid server role mappings: <file>:<line>: <key>: <problem>` (and
                likewise `user mappings`, `account mappings`, `reserved prefix config`), with
                `path`, `line` and `key` set.
        """
        if file is None:
            return cls()
        warnings: list[str] = []
        srv = file.server
        roles = _prefixed(
            "invalid server role mappings",
            lambda: tuple(_parse_role(v, warnings) for v in items(srv.get("mapRoles"))),
        )
        users = _prefixed(
            "invalid server user mappings",
            lambda: tuple(_parse_user(v, warnings) for v in items(srv.get("mapUsers"))),
        )
        accounts = _prefixed(
            "invalid server account mappings",
            lambda: tuple(as_account(v, warnings) for v in items(srv.get("mapAccounts"))),
        )
        reserved = _prefixed(
            "invalid reserved prefix config",
            lambda: _parse_reserved(srv.get("reservedPrefixConfig"), warnings),
        )
        return cls(
            map_roles=roles,
            map_users=users,
            map_accounts=accounts,
            reserved_prefixes=MappingProxyType(reserved),
            warnings=tuple(warnings),
        )

    def reserved_prefixes_for(self, backend: str) -> tuple[str, ...]:
        """The reserved username prefixes configured for one backend (may be empty)."""
        return self.reserved_prefixes.get(backend, ())
