"""Lint mapping sources: every problem of every entry, with file, line, key path and rule code.

Pure: text in, `Finding`s out. One reader serves the four kinds of source (docs/validate.md),
told apart by content: a document with `kind:` is a manifest (an `aws-auth` ConfigMap or
`IAMIdentityMapping` objects, several documents per file allowed), top-level `server` or
`clusterID` is the config file (MountedFile), top-level `mapRoles`/`mapUsers`/`mapAccounts`
is a DynamicFile. Unlike the backends, which stop at the first bad entry or drop it, this
reports every problem, so one error never hides the next. ARNs are compared as each backend
compares them (case-insensitively, canonicalised where that backend canonicalises).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import yaml

from authd.arn import PrincipalType, canonicalize
from authd.config.located import ACCOUNT_ID, Located, as_str, items
from authd.config.yamlevents import LOADER, from_node, read_tree
from authd.errors import ArnError, ConfigError

ERROR = "error"
WARNING = "warning"
RULES = {
    "syntax": ERROR,
    "invalid_arn": ERROR,
    "role_path": ERROR,
    "unknown_placeholder": ERROR,
    "assumed_role_arn": WARNING,  # an error in aws-auth, where it never matches
    "wrong_arn_kind": WARNING,
    "duplicate_arn": WARNING,
    "system_masters": WARNING,
    "unknown_key": WARNING,
    "map_accounts": WARNING,
}
PLACEHOLDERS = frozenset(
    {"AccountID", "SessionName", "SessionNameRaw", "AccessKeyID", "EC2PrivateDNSName"}
)
_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}")
MASTERS = "system:masters"

# The kinds of source.
MOUNTED_FILE = "MountedFile"
DYNAMIC_FILE = "DynamicFile"
CONFIGMAP = "aws-auth"
CRD = "IAMIdentityMapping"
# The kinds whose backend honours the RolePathMatch gate.
_GATED = (MOUNTED_FILE, CONFIGMAP, CRD)

_ENTRY_KEYS = {
    "mapRoles": ("rolearn", "username", "groups", "userid", "sso"),
    "mapUsers": ("userarn", "username", "groups", "userid"),
}
_SSO_KEYS = ("permissionSetName", "accountID", "partition")
_SPEC_KEYS = ("arn", "username", "groups")
_DATA_KEYS = ("mapRoles", "mapUsers", "mapAccounts")
_DYNAMIC_TOP = ("Version", "LastUpdatedDateTime", *_DATA_KEYS)


class KindError(ValueError):
    """The content is none of the kinds of mapping source authd reads."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One problem: where it is (`file`, `line`, full `key` path), its `rule` and `severity`."""

    file: str
    line: int
    key: str
    rule: str
    severity: str
    message: str

    def as_json(self) -> dict[str, object]:
        """The finding as `validate -o json` prints it."""
        return {
            "file": self.file,
            "line": self.line,
            "key": self.key,
            "rule": self.rule,
            "severity": self.severity,
            "message": self.message,
        }

    def text(self) -> str:
        """`file:line: severity: rule: key: message`, as `validate` prints it."""
        key = f" {self.key}:" if self.key else ""
        return f"{self.file}:{self.line}: {self.severity}: {self.rule}:{key} {self.message}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    """One document of a file, its kind, and where its ARN-bearing lists sit."""

    kind: str
    root: Located


def read_documents(text: str, *, src: str) -> list[Located]:
    """Every non-empty document of YAML (or JSON) text, as located values.

    Raises:
        ConfigError: a syntax error, with `line` where the parser stopped.
    """
    try:
        one = read_tree(text, src=src, warnings=[])
    except ConfigError as exc:
        if "another document" not in str(exc):
            raise
    else:
        return [] if one is None else [one]
    docs: list[Located] = []
    try:
        for node in yaml.compose_all(text, Loader=LOADER):
            if node is not None:
                docs.append(from_node(node, src=src, path="", warnings=[]))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = None if mark is None else mark.line + 1
        where = f"{src}:{line}" if line is not None else src
        raise ConfigError(f"{where}: {exc.problem or exc.context}", path=src, line=line) from exc
    return docs


def detect(doc: Located) -> str:
    """The kind of one document, from its content alone.

    Raises:
        KindError: none of the four kinds.
    """
    if not isinstance(doc.value, dict):
        raise KindError("expected a mapping at the top level")
    keys = doc.value
    if "kind" in keys:
        kind = as_str(keys["kind"])
        if kind == "ConfigMap":
            return CONFIGMAP
        if kind == CRD:
            return CRD
        raise KindError(f"a {kind or 'manifest'} is not a mapping source")
    if "server" in keys or "clusterid" in keys:
        return MOUNTED_FILE
    if any(k.lower() in keys for k in _DATA_KEYS):
        return DYNAMIC_FILE
    raise KindError(
        "not a mapping source: no kind:, server, clusterID, mapRoles, mapUsers or mapAccounts"
    )


def lint_text(text: str, *, src: str, role_path_match: bool = False) -> list[Finding]:
    """Every finding of one file's text, sorted by line.

    A file that does not parse is one `syntax` finding.

    Raises:
        KindError: a document that is none of the kinds of mapping source.
    """
    try:
        docs = read_documents(text, src=src)
    except ConfigError as exc:
        problem = str(exc).removeprefix(f"{src}:{exc.line}: ").removeprefix(f"{src}: ")
        return [_finding(src, exc.line or 1, exc.key or "", "syntax", problem)]
    linter = _Linter(src=src, text=text, role_path_match=role_path_match)
    for doc in docs:
        linter.document(detect(doc), doc)
    return sorted(linter.findings, key=lambda f: (f.line, f.key, f.rule))


def lint_configmap_data(
    data: Mapping[str, object], *, src: str, role_path_match: bool = False
) -> list[Finding]:
    """Every finding of a live aws-auth ConfigMap's `data`, as `lint_text` finds them in a manifest.

    There is no file: `line` is counted inside the data key's string (as the EKSConfigMap
    backend counts it), 1 for a finding about a data key as a whole (`unknown_key`).
    """
    findings: list[Finding] = []
    for name in sorted(data):
        if name not in _DATA_KEYS:
            message = f"{name!r} is not a key here; it is ignored"
            findings.append(_finding(src, 1, f"data.{name}", "unknown_key", message))
    for key in _DATA_KEYS:
        text = data.get(key)
        if isinstance(text, str):
            linter = _Linter(src=src, text=text, role_path_match=role_path_match)
            linter.data_key(key, text, base=f"data.{key}", offset=0)
            findings.extend(linter.findings)
    return sorted(findings, key=lambda f: (f.key.split("[")[0], f.line, f.key, f.rule))


def lint_identity_mapping(
    spec: object, *, src: str, role_path_match: bool = False
) -> list[Finding]:
    """Every finding of a live IAMIdentityMapping's `spec`, as `lint_text` finds them in a
    manifest. There is no file and no meaningful line: `line` is 0."""
    text = json.dumps({"kind": CRD, "spec": spec})
    found = lint_text(text, src=src, role_path_match=role_path_match)
    return [dataclasses.replace(f, line=0) for f in found]


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Findings sorted by file, then line (the order `validate` prints them in)."""
    return sorted(findings, key=lambda f: (f.file, f.line, f.key, f.rule))


def _finding(
    src: str, line: int, key: str, rule: str, message: str, *, severity: str = ""
) -> Finding:
    """A finding with the rule's default severity unless one is given."""
    return Finding(
        file=src, line=line, key=key, rule=rule, severity=severity or RULES[rule], message=message
    )


def _text(val: Located) -> str | None:
    """A scalar's text, or None for a list or mapping."""
    return None if isinstance(val.value, list | dict) else as_str(val)


def spelled_key(val: Located) -> str:
    """The key as spelled in the file (the last step of the value's key path)."""
    return re.split(r"[.\]]", val.key)[-1]


class _Linter:
    """Collects findings over the documents of one file."""

    def __init__(self, *, src: str, text: str, role_path_match: bool) -> None:
        self.src = src
        self.lines = text.splitlines()
        self.role_path_match = role_path_match
        self.findings: list[Finding] = []
        # (section, compared ARN) -> line of the entry that had it; sections are separate tables
        self.seen: dict[tuple[str, str], int] = {}

    # --- where ------------------------------------------------------------------

    def add(
        self,
        val: Located,
        rule: str,
        message: str,
        *,
        base: str = "",
        offset: int = 0,
        severity: str = "",
    ) -> None:
        """Record a finding about `val` (inside an aws-auth string: `base` and `offset`)."""
        if not base:
            key = val.key
        elif not val.key or val.key.startswith("["):
            key = base + val.key
        else:
            key = f"{base}.{val.key}"
        line = (val.line or 1) + offset
        if isinstance(val.value, list | dict) and val.key and not val.key.endswith("]"):
            line = self.key_line(line, spelled_key(val))
        self.findings.append(_finding(self.src, line, key, rule, message, severity=severity))

    def key_line(self, line: int, spelled: str) -> int:
        """The line of the key `spelled` whose block value starts on `line` (at or above it)."""
        pattern = re.compile(rf"\s*(-\s+)?[\"']?{re.escape(spelled)}[\"']?\s*:", re.IGNORECASE)
        for number in range(min(line, len(self.lines)), 0, -1):
            if pattern.match(self.lines[number - 1]):
                return number
        return line

    # --- documents --------------------------------------------------------------

    def document(self, kind: str, doc: Located) -> None:
        """Lint one document of a known kind."""
        assert isinstance(doc.value, dict)
        if kind == MOUNTED_FILE:
            server = doc.value.get("server")
            if server is not None and isinstance(server.value, dict):
                self.sections(MOUNTED_FILE, server.value, base="", offset=0)
        elif kind == DYNAMIC_FILE:
            self.unknown_keys(doc, _DYNAMIC_TOP, base="", offset=0)
            self.sections(DYNAMIC_FILE, doc.value, base="", offset=0)
        elif kind == CONFIGMAP:
            self.configmap(doc)
        else:
            self.crd(doc)

    def sections(self, kind: str, keys: dict[str, Located], *, base: str, offset: int) -> None:
        """`mapRoles`, `mapUsers` and `mapAccounts` of a config file or DynamicFile."""
        for section in ("mapRoles", "mapUsers"):
            val = keys.get(section.lower())
            if val is not None:
                for entry in self.list_of(val, base=base, offset=offset):
                    self.entry(kind, section, entry, base=base, offset=offset)
        accounts = keys.get("mapaccounts")
        if accounts is not None:
            self.accounts(accounts, base=base, offset=offset)

    def list_of(self, val: Located, *, base: str, offset: int) -> list[Located]:
        """A section's entries; one that is not a list is reported and yields nothing."""
        try:
            return items(val)
        except ConfigError:
            self.add(val, "syntax", "expected a list of entries", base=base, offset=offset)
            return []

    def unknown_keys(
        self, val: Located, known: Iterable[str], *, base: str, offset: int, exact: bool = False
    ) -> None:
        """Warn about each key the backend ignores."""
        assert isinstance(val.value, dict)
        names = set(known) if exact else {k.lower() for k in known}
        for child in val.value.values():
            spelled = spelled_key(child)
            if (spelled if exact else spelled.lower()) not in names:
                self.add(
                    child,
                    "unknown_key",
                    f"{spelled!r} is not a key here; it is ignored",
                    base=base,
                    offset=offset,
                )

    def accounts(self, val: Located, *, base: str, offset: int) -> None:
        """`mapAccounts`: admits every identity of each account; each must be 12 digits."""
        listed = self.list_of(val, base=base, offset=offset)
        if listed:
            self.add(
                val,
                "map_accounts",
                "mapAccounts admits every identity of the listed accounts",
                base=base,
                offset=offset,
            )
        for item in listed:
            text = as_str(item) if not isinstance(item.value, list | dict) else ""
            if not ACCOUNT_ID.match(text):
                self.add(
                    item,
                    "invalid_arn",
                    f"account ID {text!r} is not 12 digits",
                    base=base,
                    offset=offset,
                )

    def entry(self, kind: str, section: str, entry: Located, *, base: str, offset: int) -> None:
        """One `mapRoles` or `mapUsers` entry: every rule that applies to it."""
        if not isinstance(entry.value, dict):
            self.add(entry, "syntax", "expected a mapping of keys", base=base, offset=offset)
            return
        self.unknown_keys(entry, _ENTRY_KEYS[section], base=base, offset=offset)
        keys = entry.value
        arn_key = "rolearn" if section == "mapRoles" else "userarn"
        arn_val = keys.get(arn_key)
        self.templates(keys, base=base, offset=offset)
        if section == "mapRoles" and keys.get("sso") is not None and arn_val is None:
            self.sso(keys["sso"], base=base, offset=offset)
            return
        if arn_val is None or _text(arn_val) == "":
            self.add(
                arn_val or entry,
                "invalid_arn",
                f"no {arn_key}: the entry maps nothing",
                base=base,
                offset=offset,
            )
            return
        assert arn_val is not None
        self.arn(kind, section, arn_val, keys, base=base, offset=offset)

    def arn(
        self,
        kind: str,
        section: str,
        val: Located,
        keys: dict[str, Located],
        *,
        base: str,
        offset: int,
    ) -> None:
        """Check one ARN and record it for duplicates."""
        text = _text(val)
        if text is None:
            self.add(val, "invalid_arn", "expected an ARN string", base=base, offset=offset)
            return
        try:
            lowered = kind in (DYNAMIC_FILE, CRD) or section == "mapUsers"
            ptype, canonical = canonicalize(text.lower() if lowered else text)
        except ArnError as exc:
            self.add(val, "invalid_arn", str(exc), base=base, offset=offset)
            return
        account = text.split(":")[4]
        if not ACCOUNT_ID.match(account):
            self.add(
                val,
                "invalid_arn",
                f"account {account!r} in {text} is not 12 digits",
                base=base,
                offset=offset,
            )
        resource = text.split(":", 5)[5]
        if ptype is PrincipalType.ASSUMED_ROLE:
            never = kind == CONFIGMAP
            self.add(
                val,
                "assumed_role_arn",
                f"{text} is a session ARN; it never matches here (write {canonical})"
                if never
                else f"{text} is a session ARN; it is read as {canonical} and grants every "
                "session of that role",
                base=base,
                offset=offset,
                severity=ERROR if never else WARNING,
            )
        elif (
            ptype is PrincipalType.ROLE
            and "/" in resource.removeprefix("role/")
            # The gate makes such an entry match in every source but the DynamicFile.
            and not (self.role_path_match and kind in _GATED)
        ):
            name = resource.rsplit("/", 1)[-1]
            gate = ", or turn on the RolePathMatch feature gate" if kind in _GATED else ""
            self.add(
                val,
                "role_path",
                "a role ARN with a path never matches: a caller's assumed-role ARN carries "
                f"no path (write {text.split(':role/')[0]}:role/{name}{gate})",
                base=base,
                offset=offset,
            )
        if section == "mapRoles" and ptype not in (PrincipalType.ROLE, PrincipalType.ASSUMED_ROLE):
            self.add(
                val,
                "wrong_arn_kind",
                f"{text} is not a role ARN but is under mapRoles",
                base=base,
                offset=offset,
            )
        if section == "mapUsers" and ptype in (PrincipalType.ROLE, PrincipalType.ASSUMED_ROLE):
            self.add(
                val,
                "wrong_arn_kind",
                f"{text} is a role ARN but is under mapUsers",
                base=base,
                offset=offset,
            )
        compared = text.lower() if kind == CONFIGMAP else canonical.lower()
        self.duplicate(val, (section, compared), base=base, offset=offset)

    def duplicate(self, val: Located, compared: tuple[str, str], *, base: str, offset: int) -> None:
        """Warn on the later of two entries for the same ARN (the one that applies)."""
        line = (val.line or 1) + offset
        earlier = self.seen.get(compared)
        if earlier is not None:
            self.add(
                val,
                "duplicate_arn",
                f"{compared[1]} is already mapped on line {earlier}; this later entry wins",
                base=base,
                offset=offset,
            )
        self.seen[compared] = line

    def sso(self, val: Located, *, base: str, offset: int) -> None:
        """An `sso:` block: its account must be 12 digits; unknown keys are ignored."""
        if not isinstance(val.value, dict):
            return
        self.unknown_keys(val, _SSO_KEYS, base=base, offset=offset)
        account = val.value.get("accountid")
        text = as_str(account) if account is not None else ""
        if not ACCOUNT_ID.match(text):
            self.add(
                account or val,
                "invalid_arn",
                f"account ID {text!r} is not 12 digits",
                base=base,
                offset=offset,
            )

    def templates(self, keys: dict[str, Located], *, base: str, offset: int) -> None:
        """Unknown `{{...}}` placeholders in username and groups; a `system:masters` grant."""
        username = keys.get("username")
        values: list[Located] = [username] if username is not None else []
        groups = keys.get("groups")
        group_items: list[Located] = []
        if groups is not None:
            try:
                group_items = items(groups)
            except ConfigError:
                group_items = []
        for val in (*values, *group_items):
            if isinstance(val.value, list | dict):
                continue
            for name in _PLACEHOLDER.findall(as_str(val)):
                if name not in PLACEHOLDERS:
                    self.add(
                        val,
                        "unknown_placeholder",
                        f"{{{{{name}}}}} is not a placeholder (known: "
                        f"{', '.join(sorted(PLACEHOLDERS))})",
                        base=base,
                        offset=offset,
                    )
        if groups is not None and any(
            as_str(g) == MASTERS for g in group_items if not isinstance(g.value, list | dict)
        ):
            self.add(
                groups,
                "system_masters",
                "this entry grants system:masters (cluster admin)",
                base=base,
                offset=offset,
            )

    # --- manifests ----------------------------------------------------------------

    def configmap(self, doc: Located) -> None:
        """An aws-auth ConfigMap: each data key's YAML string, lines counted in the file."""
        assert isinstance(doc.value, dict)
        data = doc.value.get("data")
        if data is None or not isinstance(data.value, dict):
            return
        self.unknown_keys(data, _DATA_KEYS, base="", offset=0, exact=True)
        for key in _DATA_KEYS:
            val = data.value.get(key.lower())
            if val is None or spelled_key(val) != key or isinstance(val.value, list | dict):
                continue
            self.data_key(key, as_str(val), base=val.key, offset=self.block_offset(val))

    def data_key(self, key: str, text: str, *, base: str, offset: int) -> None:
        """One aws-auth data key's YAML string (`base` is `data.<key>`)."""
        if text.strip() in ("", "``", '""', "''"):
            return
        try:
            root = read_tree(text, src=self.src, warnings=[])
        except ConfigError as exc:
            problem = str(exc).split(": ", 1)[-1]
            self.findings.append(
                _finding(self.src, (exc.line or 1) + offset, base, "syntax", problem)
            )
            return
        if root is None:
            return
        if key == "mapAccounts":
            self.accounts(root, base=base, offset=offset)
            return
        for entry in self.list_of(root, base=base, offset=offset):
            self.entry(CONFIGMAP, key, entry, base=base, offset=offset)

    def block_offset(self, val: Located) -> int:
        """What to add to a line inside a data key's string to get the file's own line."""
        line = val.line or 1
        own = self.lines[line - 1] if line - 1 < len(self.lines) else ""
        head = own.split(":", 1)[1].strip() if ":" in own else own.strip()
        # A block scalar (`|`, `>-`, ...) starts on the next line; any other on its own line.
        return line if head[:1] in ("|", ">") else line - 1

    def crd(self, doc: Located) -> None:
        """An IAMIdentityMapping object: `spec.arn`, `spec.username`, `spec.groups`."""
        assert isinstance(doc.value, dict)
        spec = doc.value.get("spec")
        if spec is None or not isinstance(spec.value, dict):
            self.add(doc, "invalid_arn", "no spec.arn: the object maps nothing")
            return
        self.unknown_keys(spec, _SPEC_KEYS, base="", offset=0)
        keys = spec.value
        self.templates(keys, base="", offset=0)
        arn_val = keys.get("arn")
        if arn_val is None or _text(arn_val) == "":
            self.add(arn_val or spec, "invalid_arn", "no spec.arn: the object maps nothing")
            return
        self.arn(CRD, "", arn_val, keys, base="", offset=0)
