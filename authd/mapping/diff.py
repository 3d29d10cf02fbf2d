"""Compare two mapping sources as the backends apply them: who gains, loses or changes access.

Pure: text in, `Changes` out. Each source is read by the parser its backend runs (the config
file's `MappingConfig`, `DynamicFileTable`, `parse_configmap`, `parse_mappings`), so duplicates
resolve as the backend resolves them and ARNs are compared as it compares them (lower-cased,
canonicalised where it canonicalises). Entry order, ARN case and key spelling make no
difference, nor does the order of groups. SSO permission-set entries are compared by their
pattern (`arn:...:role/AWSReservedSSO_<set>_*`) whatever the `SSORoleMatch` gate says.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from authd.arn import canonicalize
from authd.config import FileConfig, MappingConfig
from authd.config.located import plain
from authd.errors import ArnError, ConfigError
from authd.mapping import Entry
from authd.mapping.configmap import parse_configmap
from authd.mapping.crd import canonical_arn, parse_mappings
from authd.mapping.dynamicfile import DynamicFileTable
from authd.mapping.file import MountedFileTable
from authd.mapping.lint import (
    CONFIGMAP,
    CRD,
    DYNAMIC_FILE,
    MASTERS,
    MOUNTED_FILE,
    detect,
    read_documents,
    spelled_key,
)

ACCOUNT = "account"
SSO = "sso"


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """One key whose mapping differs: `before`/`after` are None when absent on that side."""

    key: str
    kind: str
    change: str
    before: Entry | None
    after: Entry | None

    def as_json(self) -> dict[str, object]:
        """The change as `diff -o json` prints it."""
        return {
            "key": self.key,
            "kind": self.kind,
            "change": self.change,
            "before": _entry_json(self.before),
            "after": _entry_json(self.after),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Changes:
    """Every change, sorted by key, and the keys that lose or gain `system:masters`."""

    changes: tuple[Change, ...]
    loses_masters: tuple[str, ...]
    gains_masters: tuple[str, ...]

    def as_json(self) -> dict[str, object]:
        """`{"changes": [...], "losesMasters": [...], "gainsMasters": [...]}`."""
        return {
            "changes": [c.as_json() for c in self.changes],
            "losesMasters": list(self.loses_masters),
            "gainsMasters": list(self.gains_masters),
        }


def _entry_json(entry: Entry | None) -> dict[str, object] | None:
    """`{username, groups}` or None."""
    if entry is None:
        return None
    return {"username": entry.username, "groups": list(entry.groups)}


@dataclass(frozen=True, slots=True, kw_only=True)
class Effective:
    """What a source grants: compared key -> (kind, entry), and the warnings of its parser."""

    mappings: Mapping[str, tuple[str, Entry]]
    kind: str
    warnings: tuple[str, ...] = ()


def effective(text: str, *, src: str) -> Effective:
    """Read one source as its backend applies it.

    Raises:
        ConfigError: the source does not parse, or its backend would refuse it whole.
        KindError: the content is not a mapping source.
    """
    docs = read_documents(text, src=src)
    if not docs:
        return Effective(mappings={}, kind="empty")
    kinds = {detect(doc) for doc in docs}
    if len(kinds) > 1 or (len(docs) > 1 and kinds != {CRD}):
        raise ConfigError(f"{src}: several documents of different kinds; give one source", path=src)
    kind = kinds.pop()
    if kind == MOUNTED_FILE:
        mapping = MappingConfig.from_file_config(FileConfig.from_text(text, path=src))
        table = MountedFileTable.from_config(mapping, sso_role_match=True)
        return Effective(mappings=_table(table), kind=kind, warnings=mapping.warnings)
    if kind == DYNAMIC_FILE:
        dynamic = DynamicFileTable.from_bytes(text.encode(), path=src, userid_strict=False)
        found: dict[str, tuple[str, Entry]] = {}
        for rows in (dynamic.users, dynamic.roles):
            found.update({k: (_kind(k), row.entry) for k, row in rows.items()})
        found.update({a: (ACCOUNT, Entry(username="")) for a in dynamic.accounts})
        return Effective(mappings=found, kind=kind, warnings=dynamic.warnings)
    if kind == CONFIGMAP:
        located = docs[0].value.get("data") if isinstance(docs[0].value, dict) else None
        if located is not None and not isinstance(located.value, dict | None):
            raise ConfigError(f"{src}: data: expected a mapping", path=src, key="data")
        # Data keys are exact in aws-auth (`mapusers` is ignored): keep their spelling.
        children = located.value.values() if located is not None and located.value else ()
        return configmap_effective({spelled_key(c): plain(c) for c in children}, src=src)
    return identity_mappings_effective([plain(doc) for doc in docs])


def configmap_effective(data: Mapping[str, object], *, src: str) -> Effective:
    """An aws-auth ConfigMap's `data` (a manifest's or the live object's) as the backend applies it.

    Raises:
        ConfigError: a data key the backend would refuse whole (YAML that does not parse).
    """
    version = parse_configmap(data, sso_role_match=True, source=src)
    warnings = (*version.warnings, *(str(e) for e in version.rejected))
    return Effective(mappings=_table(version.table), kind=CONFIGMAP, warnings=warnings)


def identity_mappings_effective(objs: Iterable[object]) -> Effective:
    """IAMIdentityMapping objects (from manifests or the live cluster), each given the status its
    controller would write, whatever status it has: what the CRD backend maps once it is written.
    """
    objects: dict[str, dict[str, Any]] = {}
    for index, obj in enumerate(objs):
        assert isinstance(obj, dict)
        metadata = obj.get("metadata")
        name = metadata.get("name") if isinstance(metadata, dict) else None
        spec = obj.get("spec")
        arn = spec.get("arn") if isinstance(spec, dict) else None
        try:
            status = {"canonicalARN": canonical_arn(arn)} if isinstance(arn, str) else {}
        except ArnError:
            status = {}
        objects[str(name or f"document-{index + 1}")] = {**obj, "status": status}
    version = parse_mappings(objects)
    found = {k: (_kind(k), entry) for k, entry in version.table.by_arn.items()}
    return Effective(mappings=found, kind=CRD, warnings=(*version.warnings, *version.rejected))


def _table(table: MountedFileTable) -> dict[str, tuple[str, Entry]]:
    """The MountedFile-shaped table's keys: users, then roles (a role wins, as in lookups)."""
    found: dict[str, tuple[str, Entry]] = {k: (_kind(k), e) for k, e in table.users.items()}
    found.update({k: (_kind(k), e) for k, e in table.roles.items()})
    for head, patterns in table.sso.items():
        for prefix, entry in patterns:
            found[f"{head}{prefix}*"] = (SSO, entry)
    found.update({a: (ACCOUNT, Entry(username="")) for a in table.accounts})
    return found


def _kind(key: str) -> str:
    """`role`, `user`, `root`, `federated_user`, ... from a compared ARN."""
    try:
        ptype, _ = canonicalize(key)
    except ArnError:
        return "unknown"
    return ptype.value.lower()


def _same(a: Entry, b: Entry) -> bool:
    """Same username and the same set of groups."""
    return a.username == b.username and sorted(set(a.groups)) == sorted(set(b.groups))


def compare(old: Effective, new: Effective) -> Changes:
    """Every key added, removed or changed between two sources, and the masters moves."""
    changes: list[Change] = []
    loses: list[str] = []
    gains: list[str] = []
    for key in sorted(old.mappings.keys() | new.mappings.keys()):
        before = old.mappings.get(key)
        after = new.mappings.get(key)
        if before is not None and after is not None and _same(before[1], after[1]):
            continue
        change = "added" if before is None else "removed" if after is None else "changed"
        kind = (after or before or ("", Entry(username="")))[0]
        b_entry = before[1] if before else None
        a_entry = after[1] if after else None
        changes.append(Change(key=key, kind=kind, change=change, before=b_entry, after=a_entry))
        had = b_entry is not None and MASTERS in b_entry.groups
        has = a_entry is not None and MASTERS in a_entry.groups
        if had and not has:
            loses.append(key)
        if has and not had:
            gains.append(key)
    return Changes(changes=tuple(changes), loses_masters=tuple(loses), gains_masters=tuple(gains))
