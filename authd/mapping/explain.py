"""Explain a mapping decision: where each entry was written, which one matched, and near misses.

Pure: the chain decides (the same `MapperChain` a review runs); this module only points at the
entry's `FILE:LINE` and, when nothing matched, at entries that nearly did (docs/troubleshooting.md):

- `role_path`: a role entry for the same role under a path; a role session's ARN never carries
  one, so the entry never matches unless the `RolePathMatch` gate is on.
- `other_account`: the same role or user name (and path) in another account.
- `sso_suffix`: the same IAM Identity Center permission set with a different random suffix.
- `similar_name`: in the same account, a name one edit away (two for names of 8 or more
  characters) or the same name with a plural `s`. Names are compared lower-cased, as lookups are.

Each entry gives at most one hint (in that order of precedence); an entry that is near in none
of these ways gives none: a hint that guesses is worse than none.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from authd.config.file import FileConfig
from authd.config.located import Located, find, items
from authd.config.yamlevents import read_tree

_SSO_ROLE = re.compile(r"AWSReservedSSO_(.+)_([0-9a-f]{16})\Z", re.IGNORECASE)
_SSO_SUFFIX = re.compile("[0-9a-f]{16}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceEntry:
    """One mapping entry as written: its backend, section, ARN (or account) and where it is.

    `arn` is the entry's ARN as written (an `sso:` entry's is its pattern, ending `*`); for a
    `mapAccounts` entry it is the account ID. `source` is `FILE:LINE` of the ARN's line.
    """

    backend: str
    kind: str
    arn: str
    source: str
    userid: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Hint:
    """A near miss: `code`, the `FILE:LINE` of the entry it is about, and what to do."""

    code: str
    source: str
    message: str


@dataclass(frozen=True, slots=True)
class _Principal:
    """An IAM principal ARN split for comparison; every field lower-cased."""

    partition: str
    account: str
    kind: str
    path: str
    name: str


def _principal(arn: str) -> _Principal | None:
    """Split an IAM role or user ARN; None for anything else (no hint is drawn from it)."""
    fields = arn.lower().split(":", 5)
    if len(fields) != 6 or fields[0] != "arn" or fields[2] != "iam":
        return None
    parts = fields[5].split("/")
    if parts[0] not in ("role", "user") or len(parts) < 2 or not parts[-1]:
        return None
    return _Principal(fields[1], fields[4], parts[0], "/".join(parts[1:-1]), parts[-1])


# --- where the entries are written ---


def _where(path: str, val: Located | None, fallback: Located) -> str:
    """`FILE:LINE` of `val` (else of `fallback`, the entry itself)."""
    line = val.line if val is not None and val.line is not None else fallback.line
    return f"{path}:{line}"


def _text(val: Located | None) -> str:
    """A scalar's text, "" for anything else."""
    if val is None or isinstance(val.value, list | dict) or val.value is None:
        return ""
    return val.text if val.text is not None else str(val.value)


def _sso_pattern(sso: Located) -> str:
    """The role ARN pattern an `sso:` entry matches, as the MountedFile table builds it."""
    partition = _text(find(sso, "partition")) or "aws"
    account = _text(find(sso, "accountID"))
    name = _text(find(sso, "permissionSetName"))
    return f"arn:{partition}:iam::{account}:role/AWSReservedSSO_{name}_*"


def entries_of(root: Located | None, *, backend: str, path: str) -> tuple[SourceEntry, ...]:
    """Every entry under `root` (a `server` section or a DynamicFile document), in file order."""
    found: list[SourceEntry] = []
    for kind, key in (("mapRoles", "rolearn"), ("mapUsers", "userarn")):
        for item in items(find(root, kind)):
            if not isinstance(item.value, dict):
                continue
            arn_val = find(item, key)
            sso = find(item, "sso")
            arn = _text(arn_val)
            if not arn and kind == "mapRoles" and sso is not None and sso.value:
                arn, arn_val = _sso_pattern(sso), sso
            userid = _text(find(item, "userid"))
            where = _where(path, arn_val, item)
            found.append(
                SourceEntry(backend=backend, kind=kind, arn=arn, source=where, userid=userid)
            )
    for item in items(find(root, "mapAccounts")):
        where = _where(path, item, item)
        found.append(
            SourceEntry(backend=backend, kind="mapAccounts", arn=_text(item), source=where)
        )
    return tuple(found)


def mounted_file_entries(file: FileConfig) -> tuple[SourceEntry, ...]:
    """The MountedFile entries of a config file, with the lines of their ARNs."""
    server = Located(dict({k.lower(): v for k, v in file.server.items()}), file.path, 1)
    return entries_of(server, backend="MountedFile", path=file.path)


def dynamic_file_entries(text: str, *, path: str) -> tuple[SourceEntry, ...]:
    """The DynamicFile entries of one version of the file (JSON is read as YAML, keeping lines).

    Raises:
        ConfigError: the text does not parse.
    """
    return entries_of(read_tree(text, src=path, warnings=[]), backend="DynamicFile", path=path)


# --- which entry matched ---


def matched_entry(
    entries: Sequence[SourceEntry],
    *,
    backend: str,
    canonical_arn: str,
    account_id: str,
    user_id: str = "",
    userid_strict: bool = False,
    role_path_match: bool = False,
) -> SourceEntry | None:
    """The entry of `backend` that a lookup of the identity finds (the last of duplicates wins).

    Roles before SSO patterns before users before `mapAccounts`, as the tables look them up.
    The decision itself is the chain's; this only points at the line.
    """
    own = [e for e in entries if e.backend == backend]
    key = canonical_arn.lower()
    tests: list[Callable[[SourceEntry], bool]]
    if userid_strict:
        tests = [lambda e: e.kind != "mapAccounts" and bool(user_id) and e.userid == user_id]
    else:
        tests = [
            lambda e: e.kind == "mapRoles" and _role_matches(e.arn, key, role_path_match),
            lambda e: e.kind == "mapRoles" and _sso_matches(e.arn, key),
            lambda e: e.kind == "mapUsers" and e.arn.lower() == key,
        ]
    tests.append(lambda e: e.kind == "mapAccounts" and e.arn == account_id)
    for test in tests:
        for entry in reversed(own):
            if test(entry):
                return entry
    return None


def _role_matches(arn: str, key: str, role_path_match: bool) -> bool:
    """A role entry's ARN against a lower-cased canonical ARN."""
    if arn.endswith("*"):
        return False
    if arn.lower() == key:
        return True
    written = _principal(arn)
    wanted = _principal(key)
    return (
        role_path_match
        and written is not None
        and wanted is not None
        and written.path != ""
        and (written.partition, written.account, written.kind, written.name)
        == (wanted.partition, wanted.account, wanted.kind, wanted.name)
    )


def _sso_matches(pattern: str, key: str) -> bool:
    """An `sso:` pattern (`...AWSReservedSSO_<set>_*`) against a lower-cased canonical ARN."""
    if not pattern.endswith("*"):
        return False
    prefix = pattern[:-1].lower()
    return key.startswith(prefix) and bool(_SSO_SUFFIX.fullmatch(key[len(prefix) :]))


# --- near misses ---


def hints(
    canonical_arn: str, entries: Iterable[SourceEntry], *, role_path_match: bool = False
) -> tuple[Hint, ...]:
    """The near misses for an identity no entry matched, in the entries' order."""
    wanted = _principal(canonical_arn)
    if wanted is None:
        return ()
    found: list[Hint] = []
    for entry in entries:
        if entry.kind == "mapAccounts":
            continue
        written = _principal(entry.arn)
        if written is None or written.kind != wanted.kind or written.partition != wanted.partition:
            continue
        hint = _hint(entry, written, wanted, canonical_arn, role_path_match=role_path_match)
        if hint is not None:
            found.append(hint)
    return tuple(found)


def _hint(
    entry: SourceEntry, written: _Principal, wanted: _Principal, arn: str, *, role_path_match: bool
) -> Hint | None:
    """The one hint an entry gives about `wanted`, or None."""
    same_account = written.account == wanted.account
    if written == wanted:
        return None
    role_path = written.kind == "role" and written.path and not wanted.path
    if same_account and role_path and written.name == wanted.name and not role_path_match:
        return Hint(
            code="role_path",
            source=entry.source,
            message=f"{entry.arn} has a path; a role session's ARN never carries one, so "
            f"this entry never matches {arn}: write the ARN without the path, or turn on "
            "the RolePathMatch feature gate",
        )
    if same_account and (sso := _sso_hint(entry, arn)) is not None:
        return sso
    if not same_account and (written.path, written.name) == (wanted.path, wanted.name):
        return Hint(
            code="other_account",
            source=entry.source,
            message=f"{entry.arn} is the same {wanted.kind} name in account {written.account}; "
            f"the caller is in account {wanted.account}",
        )
    if same_account and written.path == wanted.path and _near(written.name, wanted.name):
        return Hint(
            code="similar_name",
            source=entry.source,
            message=f"{entry.arn} is a near spelling of {arn}: check which name is meant",
        )
    return None


def _sso_hint(entry: SourceEntry, arn: str) -> Hint | None:
    """`sso_suffix` when both are roles of one permission set with different suffixes."""
    mine = _SSO_ROLE.match(entry.arn.rsplit("/", 1)[-1])
    theirs = _SSO_ROLE.match(arn.rsplit("/", 1)[-1])
    if mine is None or theirs is None or mine.group(1).lower() != theirs.group(1).lower():
        return None
    if mine.group(2).lower() == theirs.group(2).lower():
        return None
    return Hint(
        code="sso_suffix",
        source=entry.source,
        message=f"{entry.arn} is permission set {mine.group(1)} with suffix {mine.group(2)}; "
        f"the caller's role has suffix {theirs.group(2)} (IAM Identity Center names a new "
        "role when the permission set is provisioned again): map it with an sso: entry and "
        "the SSORoleMatch feature gate, or update the suffix",
    )


def _near(a: str, b: str) -> bool:
    """A plural `s`, or at most one edit (two for names of 8 or more characters)."""
    if a == b:
        return False
    if a + "s" == b or b + "s" == a:
        return True
    shorter = min(len(a), len(b))
    if shorter < 4:
        return False
    return _distance(a, b, limit=2 if shorter >= 8 else 1)


def _distance(a: str, b: str, *, limit: int) -> bool:
    """True when the edit distance (with adjacent swaps) between `a` and `b` is at most `limit`."""
    if abs(len(a) - len(b)) > limit:
        return False
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        row = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                row[j] = min(row[j], prev2[j - 2] + 1)
        prev2, prev = prev, row
    return prev[-1] <= limit
