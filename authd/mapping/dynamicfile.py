"""Parse upstream's DynamicFile JSON into an immutable mapping table.

See mapping 4 in docs/upstream-compat.md.

Only parsing lives here; reading, watching and swapping the file belong to the reloader. Key
names are matched case-insensitively, as Go's `encoding/json` does; unknown keys are ignored
and `sso` is parsed by upstream but never used, so it is skipped.

Non-strict tables are keyed by the lower-cased canonical ARN; strict tables
(`dynamicfileUserIDStrict`) by the STS user ID, with the entry's ARN (path stripped) checked
against the caller's canonical ARN.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from authd import jsoncodec
from authd.arn import PARTITIONS, canonicalize, strip_path
from authd.config.located import find
from authd.config.yamlevents import read_tree
from authd.errors import ArnError, ConfigError, NotMappedError
from authd.identity import Identity
from authd.mapping import Entry

NAME = "DynamicFile"
ARN_MISMATCH = "ARN does not match User ID"


@dataclass(frozen=True, slots=True, kw_only=True)
class _Row:
    """One entry plus, in strict mode, the ARN it must also match ("" = no ARN given)."""

    entry: Entry
    arn: str = ""


def _where(path: str, at: str) -> str:
    """The start of a message about the value at key path `at` ("" for the document)."""
    return f"{path}: {at}" if at else path


def _child(at: str, key: str) -> str:
    """The key path of member `key` of the object at `at`."""
    return f"{at}.{key}" if at else key


def _fields(value: object, path: str, at: str) -> dict[str, Any]:
    """A JSON object as a dict with lower-cased keys (the last spelling wins)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(
            f"{_where(path, at)}: expected an object, got {type(value).__name__}", key=at
        )
    return {str(k).lower(): v for k, v in value.items()}


def _string(obj: Mapping[str, Any], key: str, path: str, at: str) -> str:
    """A string member; JSON null or absence is the empty string, as in Go."""
    value = obj.get(key.lower())
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(
            f"{_where(path, at)}.{key}: expected a string, got {json.dumps(value)}",
            key=_child(at, key),
        )
    return value


def _strings(obj: Mapping[str, Any], key: str, path: str, at: str) -> tuple[str, ...]:
    """A list-of-strings member; null or absence is empty."""
    value = obj.get(key.lower())
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f"{_where(path, at)}.{key}: expected a list of strings", key=_child(at, key)
        )
    return tuple(value)


def _entries(top: Mapping[str, Any], key: str, path: str) -> list[tuple[str, dict[str, Any]]]:
    """The objects of one top-level list, each with its key path."""
    value = top.get(key.lower())
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{path}: {key}: expected a list", key=key)
    return [(f"{key}[{i}]", _fields(item, path, f"{key}[{i}]")) for i, item in enumerate(value)]


def _located(exc: ConfigError, data: bytes, path: str) -> ConfigError:
    """The same error with `path` set and the line of its key path found in the document.

    Only a refused version pays for this: the document is read once more, by the config
    reader, which keeps lines (JSON is YAML), and the key path is looked up in it.
    """
    line = None
    if exc.key is not None:
        try:
            root = read_tree(data.decode("utf-8"), src=path, warnings=[])
        except (ConfigError, UnicodeDecodeError):
            root = None
        found = find(root, exc.key)
        line = found.line if found is not None else None
    return ConfigError(str(exc), path=path, line=line, key=exc.key or None)


@dataclass(frozen=True, slots=True, kw_only=True)
class DynamicFileTable:
    """An immutable snapshot of one DynamicFile version. Build with `from_bytes`."""

    roles: Mapping[str, _Row]
    users: Mapping[str, _Row]
    accounts: frozenset[str]
    userid_strict: bool
    version: str = ""
    last_updated: str = ""
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_bytes(
        cls, data: bytes, *, path: str, userid_strict: bool, refuse_bad_arns: bool = False
    ) -> DynamicFileTable:
        """Parse one version of the file; any problem rejects the whole file.

        An ARN that does not parse leaves its entry out with a warning, as upstream keeps it
        where no lookup finds it; with `refuse_bad_arns` it rejects the file instead.

        Raises:
            ConfigError: invalid JSON, a wrong type, or an entry without its key
                (`value for rolearn or userid(if dynamicfileUserIDStrict = true) must be
                supplied`, likewise `userarn`); every message starts with `path`, and the
                `path`, `line` and `key` attributes say where (the first problem's).
        """
        try:
            document = jsoncodec.loads(data)
        except ValueError as exc:  # bad JSON, not UTF-8, or nested too deeply
            line = exc.lineno if isinstance(exc, json.JSONDecodeError) else None
            message = f"{path}: could not unmarshal dynamic file: {exc}"
            raise ConfigError(message, path=path, line=line) from exc
        try:
            return cls._build(document, path=path, strict=userid_strict, refuse=refuse_bad_arns)
        except ConfigError as exc:
            raise _located(exc, data, path) from exc

    @classmethod
    def _build(cls, document: object, *, path: str, strict: bool, refuse: bool) -> DynamicFileTable:
        """Index a decoded document; errors carry their key path (the caller adds the line)."""
        top = _fields(document, path, "")
        warnings: list[tuple[str, str]] = []
        problems: list[tuple[str, str]] = []
        roles = cls._index(
            top,
            "mapRoles",
            arn_key="rolearn",
            path=path,
            strict=strict,
            problems=problems,
            warnings=warnings,
        )
        users = cls._index(
            top,
            "mapUsers",
            arn_key="userarn",
            path=path,
            strict=strict,
            problems=problems,
            warnings=warnings,
        )
        accounts = top.get("mapaccounts") or []
        if not isinstance(accounts, list) or not all(isinstance(a, str) for a in accounts):
            problems.append(("mapAccounts", "mapAccounts: expected a list of strings"))
        if problems:
            text = "; ".join(message for _, message in problems)
            raise ConfigError(f"{path}: error parsing dynamic file: {text}", key=problems[0][0])
        if refuse and warnings:
            # Upstream keeps such an entry where nothing finds it; refusing the version shows
            # the typo while the last good mapping keeps serving.
            raise ConfigError("; ".join(message for _, message in warnings), key=warnings[0][0])
        return cls(
            roles=MappingProxyType(roles),
            users=MappingProxyType(users),
            accounts=frozenset(accounts),
            userid_strict=strict,
            version=_string(top, "Version", path, ""),
            last_updated=_string(top, "LastUpdatedDateTime", path, ""),
            warnings=tuple(message for _, message in warnings),
        )

    @staticmethod
    def _index(
        top: Mapping[str, Any],
        section: str,
        *,
        arn_key: str,
        path: str,
        strict: bool,
        problems: list[tuple[str, str]],
        warnings: list[tuple[str, str]],
    ) -> dict[str, _Row]:
        """Key one section's entries by user ID (strict) or canonical lower-cased ARN."""
        rows: dict[str, _Row] = {}
        items = top.get(section.lower())
        if isinstance(items, list) and _index_plain(items, rows, arn_key=arn_key, strict=strict):
            return rows
        rows.clear()
        for at, obj in _entries(top, section, path):
            arn = _string(obj, arn_key, path, at)
            userid = _string(obj, "userid", path, at)
            entry = Entry(
                username=_string(obj, "username", path, at),
                groups=_strings(obj, "groups", path, at),
            )
            key = userid if strict else arn
            if not key:
                problems.append(
                    (
                        at,
                        f"{at}: value for {arn_key} or userid(if dynamicfileUserIDStrict = true) "
                        "must be supplied",
                    )
                )
                continue
            if strict:
                rows[key] = _Row(entry=entry, arn=arn)
                continue
            try:
                _, canonical = canonicalize(arn.lower())
            except ArnError as exc:
                # Upstream keys such an entry by "", where nothing can find it.
                where = f"{at}.{arn_key}"
                warnings.append((where, f"{path}: {where}: {exc}; entry never matches"))
                continue
            rows[canonical] = _Row(entry=entry)
        return rows

    def lookup(self, identity: Identity) -> Entry | None:
        """Return the entry for the identity (roles, then users), or None.

        Raises:
            NotMappedError: strict mode found the user ID but the entry's ARN is another
                principal's (`ARN does not match User ID`).
        """
        canonical = identity.canonical_arn.lower()
        key = identity.user_id if self.userid_strict else canonical
        row = self.roles.get(key) or self.users.get(key)
        if row is None:
            return None
        if self.userid_strict and row.arn and not _same_principal(row.arn, canonical):
            raise NotMappedError(ARN_MISMATCH)
        return row.entry

    def is_account_allowed(self, account_id: str) -> bool:
        """True when the file's `mapAccounts` lists the account."""
        return account_id in self.accounts

    def __len__(self) -> int:
        """Mappings in the snapshot: roles, users and allowed accounts."""
        return len(self.roles) + len(self.users) + len(self.accounts)


_PLAIN_KEYS = frozenset({"rolearn", "userarn", "username", "groups", "userid", "sso"})
_IAM_RESOURCES = frozenset({"user", "role", "root"})


def _index_plain(items: list[Any], rows: dict[str, _Row], *, arn_key: str, strict: bool) -> bool:
    """Index entries that need no checking beyond their types (the common case), fast.

    Returns False at the first entry that has another key spelling, a wrong or missing value,
    or an ARN that is not a plain IAM one; the caller then indexes the whole section the
    careful way, which produces upstream's messages. Same result, without per-entry
    key-path strings, key lower-casing and ARN parsing objects: a 100,000-entry file parses
    several times faster.
    """
    for item in items:
        if type(item) is not dict or not item.keys() <= _PLAIN_KEYS:
            return False
        arn, username = item.get(arn_key), item.get("username")
        groups, userid = item.get("groups", ()), item.get("userid", "")
        if type(arn) is not str or type(username) is not str or type(userid) is not str:
            return False
        plain_groups = type(groups) is list and all(type(g) is str for g in groups)
        if not plain_groups and groups != ():
            return False
        entry = Entry(username=username, groups=tuple(groups))
        if strict:
            if not userid:
                return False
            rows[userid] = _Row(entry=entry, arn=arn)
            continue
        key = arn.lower()
        fields = key.split(":", 5)
        # IAM user, role and root ARNs are their own canonical form (R5 in docs/upstream-compat.md).
        if (
            len(fields) != 6
            or fields[0] != "arn"
            or fields[2] != "iam"
            or fields[1] not in PARTITIONS
            or fields[5].split("/", 1)[0] not in _IAM_RESOURCES
        ):
            return False
        rows[key] = _Row(entry=entry)
    return True


def _same_principal(mapping_arn: str, canonical_lower: str) -> bool:
    """Compare a strict entry's ARN, path stripped, with the caller's canonical ARN.

    An ARN that cannot be parsed never matches (upstream skips the check then; failing
    closed keeps a typo from turning the ARN check off).
    """
    try:
        stripped = strip_path(mapping_arn)
    except ArnError:
        return False
    return stripped.lower() == canonical_lower
