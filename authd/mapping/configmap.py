"""The EKSConfigMap backend's table: `mapRoles`, `mapUsers`, `mapAccounts` of aws-auth.

Each data key holds a YAML document in a string, in upstream's format (docs/kubernetes.md):
data keys are exact (`mapusers` is ignored), entry keys ignore case (`rolearn`, `roleARN`), and
ARNs are NOT canonicalised, as upstream: a role matches when its `rolearn`, lower-cased, equals
the caller's canonical ARN lower-cased (an `assumed-role` ARN written here never matches; a
warning says so). Lookups are those of the MountedFile table; with authd's `RolePathMatch`
gate a role entry with a path also matches that role's sessions, as in the config file
(docs/troubleshooting.md).

Better than upstream, and documented there:

- one bad entry (a missing ARN, an ARN that does not parse, a bad `sso` block) is rejected
  alone, with its key path (`data.mapRoles[3].rolearn`) and its line counted inside that key's
  string; every other entry still applies;
- a data key whose YAML does not parse (or is not a list) refuses the whole version, so the
  caller keeps its last good snapshot: upstream would drop every entry of that key, node roles
  included.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from authd.arn import canonicalize
from authd.config import MappingConfig, RoleMapping, UserMapping
from authd.config.located import Located, as_account, as_str
from authd.config.mappings import read_role, read_user
from authd.config.yamlevents import read_tree
from authd.errors import ArnError, ConfigError
from authd.mapping.file import MountedFileTable

if TYPE_CHECKING:
    from authd.mapping.lint import Finding

NAME = "EKSConfigMap"
NAMESPACE = "kube-system"
OBJECT = "aws-auth"
SOURCE = f"configmap/{NAMESPACE}/{OBJECT}"
KEYS = ("mapRoles", "mapUsers", "mapAccounts")
# Values upstream treats as "no data" for a key.
_EMPTY = frozenset({"", "``", '""', "''"})
T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigMapVersion:
    """One parsed version of the ConfigMap: the table, and what was left out of it.

    `rejected` holds one ConfigError per rejected entry (`key` like `data.mapRoles[3].rolearn`,
    `line` counted inside that data key's string); `warnings` are entries kept that can never
    match as written (and unknown keys); `findings` are left empty by `parse_configmap`.
    """

    table: MountedFileTable
    rejected: tuple[ConfigError, ...] = ()
    warnings: tuple[str, ...] = ()
    findings: tuple[Finding, ...] = ()  # `authd validate`'s, when the caller lints (the daemon)


def parse_configmap(
    data: Mapping[str, object] | None,
    *,
    sso_role_match: bool = False,
    role_path_match: bool = False,
    source: str = SOURCE,
) -> ConfigMapVersion:
    """Parse the ConfigMap's `data` into a table; bad entries are left out and reported.

    Args:
        data: the object's `data` (None or missing keys: no mappings).
        sso_role_match: the `SSORoleMatch` feature gate.
        role_path_match: authd's `RolePathMatch` gate: a role ARN with a path is also indexed
            without it, so the role's sessions match.
        source: names the object in messages (`configmap/kube-system/aws-auth`).

    Raises:
        ConfigError: a data key that is not a string, whose YAML does not parse, or which is
            not a list; `key` is `data.<key>` (or deeper), `line` inside that key's string.
    """
    warnings: list[str] = []
    rejected: list[ConfigError] = []
    data = data or {}
    roles: list[RoleMapping] = []
    users: list[UserMapping] = []
    accounts: list[str] = []
    for val in _entries(data, "mapRoles", source, warnings):
        _collect(_role, val, warnings, roles, rejected)
    for val in _entries(data, "mapUsers", source, warnings):
        _collect(_user, val, warnings, users, rejected)
    for val in _entries(data, "mapAccounts", source, warnings):
        _collect(as_account, val, warnings, accounts, rejected)
    config = MappingConfig(
        map_roles=tuple(roles), map_users=tuple(users), map_accounts=tuple(accounts)
    )
    table = MountedFileTable.from_config(
        config, sso_role_match=sso_role_match, role_path_match=role_path_match
    )
    return ConfigMapVersion(table=table, rejected=tuple(rejected), warnings=tuple(warnings))


def _collect(
    parse: Callable[[Located, list[str]], T],
    val: Located,
    warnings: list[str],
    out: list[T],
    rejected: list[ConfigError],
) -> None:
    """Parse one entry into `out`, or record why it was rejected."""
    try:
        out.append(parse(val, warnings))
    except ConfigError as exc:
        rejected.append(exc)


def _entries(
    data: Mapping[str, object], key: str, source: str, warnings: list[str]
) -> list[Located]:
    """The list under one data key, each value re-rooted at `data.<key>` for its messages."""
    if key not in data:
        return []
    text = data[key]
    where = f"data.{key}"
    if not isinstance(text, str):
        raise ConfigError(f"{source}: {where}: expected a string", path=source, key=where)
    if text.strip() in _EMPTY:
        return []
    try:
        root = read_tree(text, src=source, warnings=warnings)
    except ConfigError as exc:
        at = f"{source}:{exc.line}" if exc.line is not None else source
        problem = str(exc).removeprefix(f"{at}: ")
        raise ConfigError(
            f"{at}: {where}: {problem}", path=source, line=exc.line, key=where
        ) from exc
    if root is None:
        return []
    _rebase(root, where)
    if not isinstance(root.value, list):
        root.fail("expected a list of entries")
    return root.value


def _rebase(val: Located, prefix: str) -> None:
    """Prefix every key path under `val`: `[3].rolearn` -> `data.mapRoles[3].rolearn`."""
    stack = [val]
    while stack:
        node = stack.pop()
        node.key = prefix + (
            node.key if node.key.startswith("[") or not node.key else "." + node.key
        )
        if isinstance(node.value, list):
            stack.extend(node.value)
        elif isinstance(node.value, dict):
            stack.extend(node.value.values())


def _role(val: Located, warnings: list[str]) -> RoleMapping:
    """One `mapRoles` entry, validated as upstream does; the ARN must parse and stays as written."""
    entry, keys = read_role(val, warnings)
    if entry.rolearn:
        _check_arn(keys["rolearn"], warnings)
    return entry


def _user(val: Located, warnings: list[str]) -> UserMapping:
    """One `mapUsers` entry; the ARN must parse, and is only lower-cased (as upstream)."""
    entry, keys = read_user(val, warnings)
    _check_arn(keys["userarn"], warnings)
    return UserMapping(userarn=entry.userarn.lower(), username=entry.username, groups=entry.groups)


def _check_arn(val: Located, warnings: list[str]) -> None:
    """Refuse an ARN that does not parse; warn when it is not canonical (it never matches)."""
    text = as_str(val)
    try:
        _, canonical = canonicalize(text)
    except ArnError as exc:
        val.fail(str(exc))
    if canonical.lower() != text.lower():
        warnings.append(
            f"{val.where}: {text} is not a canonical ARN and never matches (ARNs here are not "
            f"canonicalised, as upstream); write {canonical}"
        )
