"""The CRD backend's table: `IAMIdentityMapping` objects, looked up by `status.canonicalARN`.

As upstream (docs/kubernetes.md): an object maps the identity whose lower-cased canonical ARN
equals its `status.canonicalARN`; the status is written by a controller (authd is one) as the
lower-cased canonical form of `spec.arn`. An object without that status is not usable yet, and
neither is one whose status no longer matches its `spec.arn` (an edited ARN must not keep
mapping the old identity until the controller catches up). There is no account allow-list.
When several usable objects claim one ARN, the first by name wins and a warning says so.
With authd's `RolePathMatch` gate an object whose role ARN has a path is also indexed under the
role ARN without it, the only form a session's canonical ARN takes (docs/troubleshooting.md);
such an alias never displaces an object that names that ARN itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from authd.arn import canonicalize, strip_path
from authd.errors import ArnError
from authd.identity import Identity
from authd.mapping import Entry

if TYPE_CHECKING:
    from authd.mapping.lint import Finding

NAME = "CRD"
GROUP = "iamauthenticator.k8s.aws"
VERSION = "v1alpha1"
PLURAL = "iamidentitymappings"
PATH = f"/apis/{GROUP}/{VERSION}/{PLURAL}"


def canonical_arn(arn: str) -> str:
    """The `status.canonicalARN` for a `spec.arn`, as upstream's controller computes it.

    Raises:
        ArnError: the ARN does not parse.
    """
    _, canonical = canonicalize(arn.lower())
    return canonical.lower()


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusWrite:
    """An object whose `status.canonicalARN` is missing or stale, and the value it should have."""

    name: str
    resource_version: str
    canonical_arn: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CrdTable:
    """An immutable snapshot of the usable mappings, keyed by canonical ARN (lower case)."""

    by_arn: Mapping[str, Entry]
    aliases: int = 0  # keys added by `role_path_match`, not counted as mappings

    def lookup(self, identity: Identity) -> Entry | None:
        """The entry whose `status.canonicalARN` is the identity's canonical ARN, or None."""
        return self.by_arn.get(identity.canonical_arn.lower())

    def is_account_allowed(self, account_id: str) -> bool:
        """Always False: the CRD backend has no account allow-list (as upstream)."""
        return False

    def __len__(self) -> int:
        """Usable mappings."""
        return len(self.by_arn) - self.aliases


@dataclass(frozen=True, slots=True, kw_only=True)
class CrdVersion:
    """One view of every object: the table, the status writes due, and the objects refused."""

    table: CrdTable
    writes: tuple[StatusWrite, ...] = ()
    rejected: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    findings: tuple[Finding, ...] = ()  # `authd validate`'s, when the caller lints (the daemon)


def parse_mappings(
    objects: Mapping[str, Mapping[str, Any]], *, role_path_match: bool = False
) -> CrdVersion:
    """Build the table from the current objects (key: object name).

    An object with a malformed spec (no `arn`, an ARN that does not parse, a `username` or
    `groups` of the wrong type) is refused alone, with a message naming it and the field.
    With `role_path_match` a role ARN with a path is also indexed without its path, unless an
    object maps that ARN itself (the first such alias by name wins).
    """
    by_arn: dict[str, Entry] = {}
    owner: dict[str, str] = {}
    writes: list[StatusWrite] = []
    rejected: list[str] = []
    warnings: list[str] = []
    for name in sorted(objects):
        obj = objects[name]
        try:
            arn, entry = _spec(obj)
            wanted = canonical_arn(arn)
        except (ValueError, ArnError) as exc:
            rejected.append(f"{PLURAL}/{name}: {exc}")
            continue
        status = obj.get("status")
        current = status.get("canonicalARN", "") if isinstance(status, Mapping) else ""
        if current != wanted:
            version = _metadata(obj).get("resourceVersion", "")
            writes.append(
                StatusWrite(name=name, resource_version=str(version), canonical_arn=wanted)
            )
            continue
        if wanted in by_arn:
            warnings.append(
                f"{PLURAL}/{name}: maps {wanted} already mapped by {PLURAL}/{owner[wanted]}; "
                "ignored"
            )
            continue
        by_arn[wanted] = entry
        owner[wanted] = name
    aliases = 0
    if role_path_match:
        for wanted in list(owner):
            stripped = strip_path(wanted)
            if stripped not in by_arn:
                by_arn[stripped] = by_arn[wanted]
                aliases += 1
    return CrdVersion(
        table=CrdTable(by_arn=MappingProxyType(by_arn), aliases=aliases),
        writes=tuple(writes),
        rejected=tuple(rejected),
        warnings=tuple(warnings),
    )


def _spec(obj: Mapping[str, Any]) -> tuple[str, Entry]:
    """(`spec.arn`, the entry) of one object.

    Raises:
        ValueError: a field is missing or has the wrong type; the message names it.
    """
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise ValueError("spec: missing")
    arn = spec.get("arn")
    if not isinstance(arn, str) or not arn:
        raise ValueError("spec.arn: must be a non-empty string")
    username = spec.get("username", "")
    if not isinstance(username, str):
        raise ValueError("spec.username: must be a string")
    groups = spec.get("groups") or []
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise ValueError("spec.groups: must be a list of strings")
    return arn, Entry(username=username, groups=tuple(groups))


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = obj.get("metadata")
    return metadata if isinstance(metadata, Mapping) else {}
