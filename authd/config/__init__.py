"""Frozen configuration values, built by named constructors from flags, environment and file.

Three layers, each a frozen value:

- `FileConfig`: the YAML or JSON config file, parsed once with line numbers kept, so every error
  names the file, the line and the key path (`config.yaml:12: server.mapRoles[3].rolearn: ...`).
  Keys are case-insensitive as upstream's viper makes them; unknown keys become warnings.
- `MappingConfig`: the MountedFile mappings (`server.mapRoles`, `mapUsers`, `mapAccounts`,
  `reservedPrefixConfig`), validated with upstream's texts (mapping.md section 2).
- `ServerSettings`: every `server`/`init` setting resolved with upstream's precedence
  (flag > env > config file > default) and start-up validation in upstream's order
  (server.md section 2, authd.md section 1).

Upstream spellings (`mapRoles`, `rolearn`, `roleARN`) appear only in the constructors below.
Warnings are returned on the values (`.warnings`), never printed here.
"""

from __future__ import annotations

import ipaddress
import json
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

import yaml

from authd import jsoncodec
from authd.arn import PARTITIONS, canonicalize
from authd.errors import ArnError, ConfigError

BACKEND_MODES: tuple[str, ...] = ("MountedFile", "EKSConfigMap", "CRD", "DynamicFile")
DEPRECATED_BACKEND_MODES: Mapping[str, str] = MappingProxyType(
    {"File": "MountedFile", "ConfigMap": "EKSConfigMap"}
)
LOG_LEVELS: tuple[str, ...] = ("panic", "fatal", "error", "warning", "info", "debug", "trace")
CLUSTER_ID_ENV = "KUBERNETES_AWS_AUTHENTICATOR_CLUSTER_ID"
LOG_VERBOSITY_ENV = "AWS_IAM_AUTHENTICATOR_LOG_VERBOSITY"

_ACCOUNT_ID = re.compile(r"[0-9]{12}\Z")
_PERMISSION_SET_NAME = re.compile(r"[\w+=,.@-]{1,32}\Z", re.ASCII)
_DECIMAL = re.compile(r"[-+]?[0-9][0-9_]*\Z")
_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
_YAML_TAG = "tag:yaml.org,2002:"
# libyaml is about ten times faster than the pure-Python scanner; both give the same nodes.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def aggregate_message(messages: Sequence[str]) -> str:
    """Join error texts as Kubernetes' `utilerrors.NewAggregate` prints them.

    One message prints alone; several (duplicates dropped) print as `[a, b]`.
    """
    unique = list(dict.fromkeys(messages))
    if len(unique) == 1:
        return unique[0]
    return "[" + ", ".join(unique) + "]"


def go_quote(text: str) -> str:
    """Quote a string roughly as Go's `%q` does (double quotes, backslash escapes)."""
    return json.dumps(text, ensure_ascii=False)


# --------------------------------------------------------------------------------------------
# Located values: one configuration value and where it came from.


class _Val:
    """A raw value (scalar, list of `_Val`, or dict of lower-cased key to `_Val`) and its origin.

    `where` is what error messages start with: `file:line: key.path` for the config file,
    `--flag` for flags, the variable name for the environment.
    """

    __slots__ = ("text", "unquoted_number", "value", "where")

    def __init__(
        self, value: object, where: str, *, text: str | None = None, unquoted_number: bool = False
    ) -> None:
        self.value = value
        self.where = where
        self.text = text
        self.unquoted_number = unquoted_number

    def fail(self, message: str) -> NoReturn:
        """Raise a ConfigError naming where this value came from."""
        raise ConfigError(f"{self.where}: {message}")


def _kind(value: object) -> str:
    """Name a raw value's shape for 'expected X, got Y' messages."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if value is None:
        return "nothing"
    return go_quote(str(value))


def _wrap(value: object, where: str) -> _Val:
    """Wrap a plain Python value (from a flag, the environment or a test) as a `_Val`."""
    if isinstance(value, _Val):
        return value
    if isinstance(value, list | tuple):
        return _Val([_wrap(v, f"{where}[{i}]") for i, v in enumerate(value)], where)
    if isinstance(value, Mapping):
        return _Val({str(k).lower(): _wrap(v, f"{where}.{k}") for k, v in value.items()}, where)
    return _Val(value, where)


def _scalar(node: yaml.ScalarNode, where: str) -> _Val:
    """Turn a YAML scalar into a `_Val`; plain digit runs are read as base-10 numbers."""
    tag = node.tag.removeprefix(_YAML_TAG)
    text = node.value
    if tag == "int" and not node.style and _DECIMAL.match(text):
        # YAML 1.1 reads 0123 as octal; upstream's Go reader gives the decimal number.
        return _Val(int(text.replace("_", ""), 10), where, text=text, unquoted_number=True)
    if tag in ("str", "timestamp", "binary"):
        return _Val(text, where, text=text)
    if tag not in ("null", "bool", "int", "float"):
        raise ConfigError(f"{where}: unsupported YAML tag {node.tag!r}")
    try:
        value = yaml.constructor.SafeConstructor().construct_object(node)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    return _Val(value, where, text=text)


def _from_node(node: yaml.Node, *, src: str, path: str, warnings: list[str]) -> _Val:
    """Convert a composed YAML node tree to `_Val`s that remember file, line and key path."""
    line = node.start_mark.line + 1
    where = f"{src}:{line}: {path}" if path else f"{src}:{line}"
    if isinstance(node, yaml.ScalarNode):
        return _scalar(node, where)
    if isinstance(node, yaml.SequenceNode):
        items = [
            _from_node(child, src=src, path=f"{path}[{i}]", warnings=warnings)
            for i, child in enumerate(node.value)
        ]
        return _Val(items, where)
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{where}: unsupported YAML node")
    if any(key.tag == "tag:yaml.org,2002:merge" for key, _ in node.value):
        try:
            # Resolves `<<: *anchor` merge keys in place, as every YAML reader does.
            yaml.constructor.SafeConstructor().flatten_mapping(node)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    children: dict[str, _Val] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise ConfigError(f"{where}: keys must be plain strings")
        key = key_node.value
        child_path = f"{path}.{key}" if path else key
        if key.lower() in children:
            warnings.append(
                f"{src}:{key_node.start_mark.line + 1}: {child_path}: duplicate key "
                "(keys are case-insensitive); the last one wins"
            )
        children[key.lower()] = _from_node(value_node, src=src, path=child_path, warnings=warnings)
    return _Val(children, where)


def _section(val: _Val | None, known: Iterable[str], warnings: list[str]) -> dict[str, _Val]:
    """Read a mapping, keyed by the canonical spelling in `known`; unknown keys warn."""
    if val is None or val.value is None:
        return {}
    if not isinstance(val.value, dict):
        val.fail(f"expected a mapping of keys, got {_kind(val.value)}")
    by_lower = {name.lower(): name for name in known}
    result: dict[str, _Val] = {}
    for lower, child in val.value.items():
        name = by_lower.get(lower)
        if name is None:
            warnings.append(f"{child.where}: unknown key, ignored")
        else:
            result[name] = child
    return result


def _items(val: _Val | None) -> list[_Val]:
    """Read a list; nothing is an empty list and a single scalar a one-element list."""
    if val is None or val.value is None:
        return []
    if isinstance(val.value, list):
        return val.value
    if isinstance(val.value, dict):
        val.fail("expected a list, got a mapping")
    # Upstream decodes weakly: `groups: system:masters` is a one-element list.
    return [val]


def _str(val: _Val | None) -> str:
    """Read a string; numbers become their decimal text, nothing is the empty string."""
    if val is None or val.value is None:
        return ""
    value = val.value
    if isinstance(value, list | dict):
        val.fail(f"expected a string, got {_kind(value)}")
    if isinstance(value, int) and not isinstance(value, bool) and val.unquoted_number:
        return str(value)
    if val.text is not None:
        return val.text
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _strs(val: _Val | None, *, split: str | None = None) -> tuple[str, ...]:
    """Read a list of strings; with `split`, plain strings are split on those characters."""
    out: list[str] = []
    for item in _items(val):
        text = _str(item)
        if split is not None and isinstance(item.value, str):
            out.extend(p for p in re.split(f"[{re.escape(split)}]+", text) if p)
        else:
            out.append(text)
    return tuple(out)


def _int(val: _Val) -> int:
    """Read an integer (a number, or a string of digits from a flag or the environment)."""
    value = val.value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _DECIMAL.match(value.strip()):
        return int(value.strip().replace("_", ""), 10)
    val.fail(f"expected an integer, got {_kind(value)}")


def _number(val: _Val) -> float:
    """Read a number (integer or decimal)."""
    value = val.value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    val.fail(f"expected a number, got {_kind(value)}")


def _bool(val: _Val) -> bool:
    """Read a boolean; strings follow Go's `strconv.ParseBool`, as viper does."""
    value = val.value
    if isinstance(value, bool):
        return value
    text = _str(val).strip() if isinstance(value, str | int) else None
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    val.fail(f"expected true or false, got {_kind(value)}")


_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Parse a Go-style duration (`500ms`, `10s`, `15m`, `1h30m`) into seconds.

    Raises:
        ConfigError: the text is not a Go duration (a bare number other than 0 has no unit).
    """
    s = text.strip()
    sign = -1.0 if s.startswith("-") else 1.0
    body = s.lstrip("+-") if s[:1] in "+-" else s
    if body == "0":
        return 0.0
    total, pos = 0.0, 0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if match is None or match.group(1) in ("", "."):
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not body or pos != len(body):
        raise ConfigError(
            f"invalid duration {go_quote(text)}: use a number with a unit, "
            "e.g. 500ms, 10s, 15m or 1h30m"
        )
    return sign * total


def _duration(val: _Val) -> float:
    """Read a duration: a Go-style string, or the number 0."""
    value = val.value
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
        return 0.0
    if not isinstance(value, str):
        val.fail(f"expected a duration such as 10s, got {_kind(value)}")
    try:
        return parse_duration(value)
    except ConfigError as exc:
        val.fail(str(exc))


def _account(val: _Val, warnings: list[str]) -> str:
    """Read an AWS account ID; warn when it cannot match (unquoted, lost leading zeros)."""
    text = _str(val)
    if not _ACCOUNT_ID.match(text):
        hint = " (quote account IDs so leading zeros are kept)" if val.unquoted_number else ""
        warnings.append(
            f"{val.where}: account ID {go_quote(text)} is not 12 digits and never matches{hint}"
        )
    return text


# --------------------------------------------------------------------------------------------
# The config file.

_TOP_KEYS = (
    "clusterID",
    "server",
    "log-verbosity",
    "feature-gates",
    "token",
    "output",
    "partition",
)
_SERVER_KEYS = (
    "partition",
    "generateKubeconfig",
    "kubeconfigPregenerated",
    "stateDir",
    "kubeconfig",
    "master",
    "address",
    "port",
    "hostname",
    "backendMode",
    "ec2DescribeInstancesQps",
    "ec2DescribeInstancesBurst",
    "ec2DescribeInstancesRoleARN",
    "sourceARN",
    "scrubbedAccounts",
    "dynamicfilepath",
    "dynamicfileUserIDStrict",
    "dynamicBackendModePath",
    "reservedPrefixConfig",
    "mapRoles",
    "mapUsers",
    "mapAccounts",
    "extraSTSEndpoints",
    "stsTimeout",
    "stsQPS",
    "stsBurst",
    "identityCacheSize",
    "ec2CacheTTL",
    "ec2BatchWindow",
    "healthAddress",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class FileConfig:
    """The parsed config file: top-level and `server` keys with their locations.

    Build with `from_file` or `from_text`; read typed values through `MappingConfig` and
    `ServerSettings`. `warnings` lists unknown and duplicate keys.
    """

    path: str
    top: Mapping[str, _Val]
    server: Mapping[str, _Val]
    warnings: tuple[str, ...] = ()

    @classmethod
    def from_file(cls, path: str | Path) -> FileConfig:
        """Read and parse a config file; the format comes from the extension (`.json` or YAML).

        Raises:
            ConfigError: `Can't read configuration file "<path>": ...` when the file cannot be
                read or parsed, with the line of a syntax error.
        """
        name = str(path)
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"Can't read configuration file {go_quote(name)}: {exc.strerror or exc}"
            ) from exc
        return cls.from_bytes(data, path=name)

    @classmethod
    def from_bytes(cls, data: bytes, *, path: str) -> FileConfig:
        """Parse one version of the config file already read (the reloader hashes it first).

        Raises:
            ConfigError: as `from_file`, `Can't read configuration file "<path>": ...`.
        """
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"Can't read configuration file {go_quote(path)}: not UTF-8 text ({exc.reason})"
            ) from exc
        try:
            return cls.from_text(text, path=path)
        except ConfigError as exc:
            raise ConfigError(f"Can't read configuration file {go_quote(path)}: {exc}") from exc

    @classmethod
    def from_text(cls, text: str, *, path: str, json_format: bool | None = None) -> FileConfig:
        """Parse config text; `path` names it in messages and picks JSON when it ends `.json`.

        Raises:
            ConfigError: a syntax error (`<path>:<line>: <problem>`) or a top level that is
                not a mapping.
        """
        is_json = path.lower().endswith(".json") if json_format is None else json_format
        if is_json:
            try:
                jsoncodec.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{exc.lineno}: {exc.msg}") from exc
            except ValueError as exc:  # nesting too deep for the json module
                raise ConfigError(f"{path}: {exc}") from None
        warnings: list[str] = []
        root = _tree(text, src=path, warnings=warnings)
        if root is None:
            return cls(path=path, top={}, server={})
        if not isinstance(root.value, dict) and root.value is not None:
            root.fail(f"the config file must be a mapping of keys, got {_kind(root.value)}")
        top = _section(root, _TOP_KEYS, warnings)
        server = _section(top.get("server"), _SERVER_KEYS, warnings)
        return cls(
            path=path,
            top=MappingProxyType(top),
            server=MappingProxyType(server),
            warnings=tuple(warnings),
        )

    def restart_values(self) -> dict[str, object]:
        """Every setting in the file that a reload does not apply, as plain values by key path.

        The reloadable keys (`server.mapRoles`, `mapUsers`, `mapAccounts`,
        `reservedPrefixConfig`) are left out; comparing two versions' results names the
        settings that only take effect at the next restart (authd.md section 2).
        """
        values: dict[str, object] = {
            key: _plain(val) for key, val in self.top.items() if key != "server"
        }
        for key, val in self.server.items():
            if key not in RELOADABLE_SERVER_KEYS:
                values[f"server.{key}"] = _plain(val)
        return values


RELOADABLE_SERVER_KEYS = frozenset({"mapRoles", "mapUsers", "mapAccounts", "reservedPrefixConfig"})


def _plain(val: _Val) -> object:
    """A located value as plain Python data (lists, dicts, scalars)."""
    if isinstance(val.value, list):
        return [_plain(v) for v in val.value]
    if isinstance(val.value, dict):
        return {k: _plain(v) for k, v in val.value.items()}
    return val.value


# --------------------------------------------------------------------------------------------
# Fast path: build the located tree straight from libyaml's events.


class _NeedsComposer(Exception):
    """The text uses a YAML feature the event builder leaves to the composer (anchors, tags)."""


def _tree(text: str, *, src: str, warnings: list[str]) -> _Val | None:
    """Parse YAML (or JSON) text into located values; None for an empty document.

    Plain files are built straight from the parser's events, which is several times faster than
    composing nodes first (a 10,000-entry mapping file loads well under a second). Anchors,
    aliases, merge keys, explicit tags, several documents and syntax errors take the composer
    path, which gives the same values and the exact error messages.

    Raises:
        ConfigError: a syntax error (`<path>:<line>: <problem>`) or an unsupported value.
    """
    fast_warnings: list[str] = []
    try:
        root = _tree_from_events(text, src=src, warnings=fast_warnings)
    except (_NeedsComposer, yaml.YAMLError):
        pass
    else:
        warnings.extend(fast_warnings)
        return root
    try:
        node = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{src}{line}: {exc.problem or exc.context}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{src}: {exc}") from exc
    if node is None:
        return None
    return _from_node(node, src=src, path="", warnings=warnings)


@dataclass(slots=True)
class _Open:
    """A sequence or mapping whose end event has not come yet."""

    items: list[_Val] | dict[str, _Val]
    where: str
    path: str
    key: str | None = None


def _tree_from_events(text: str, *, src: str, warnings: list[str]) -> _Val | None:
    """Build the located tree from parser events (iteratively: nesting depth costs no stack)."""
    loader = _LOADER(text)
    try:
        loader.get_event()  # StreamStart
        if loader.check_event(yaml.StreamEndEvent):
            return None
        loader.get_event()  # DocumentStart
        root = _events_to_tree(loader, src=src, warnings=warnings)
        loader.get_event()  # DocumentEnd
        if not loader.check_event(yaml.StreamEndEvent):
            raise _NeedsComposer("several documents")
        return root
    finally:
        loader.dispose()


def _events_to_tree(loader: Any, *, src: str, warnings: list[str]) -> _Val:
    """Consume one node's events and return it as a `_Val`, as `_from_node` would build it."""
    stack: list[_Open] = []
    while True:
        event = loader.get_event()
        if isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
            done = stack.pop()
            value = _Val(done.items, done.where)
        else:
            if isinstance(event, yaml.AliasEvent) or event.anchor is not None:
                raise _NeedsComposer("anchor")
            if event.tag not in (None, "!"):
                raise _NeedsComposer("explicit tag")
            parent = stack[-1] if stack else None
            if isinstance(parent, _Open) and isinstance(parent.items, dict) and parent.key is None:
                _open_key(parent, event, src=src, loader=loader, warnings=warnings)
                continue
            path = _child_path(parent)
            line = event.start_mark.line + 1
            where = f"{src}:{line}: {path}" if path else f"{src}:{line}"
            if isinstance(event, yaml.SequenceStartEvent):
                stack.append(_Open([], where, path))
                continue
            if isinstance(event, yaml.MappingStartEvent):
                stack.append(_Open({}, where, path))
                continue
            tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
            node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
            value = _scalar(node, where)
        if not stack:
            return value
        top = stack[-1]
        if isinstance(top.items, list):
            top.items.append(value)
        else:
            assert top.key is not None
            top.items[top.key.lower()] = value
            top.key = None


def _open_key(parent: _Open, event: Any, *, src: str, loader: Any, warnings: list[str]) -> None:
    """Record a mapping key; warn about a duplicate as `_from_node` does."""
    if not isinstance(event, yaml.ScalarEvent):
        raise _NeedsComposer("complex key")
    if loader.resolve(yaml.ScalarNode, event.value, event.implicit) == _YAML_TAG + "merge":
        raise _NeedsComposer("merge key")
    key = event.value
    assert isinstance(parent.items, dict)
    if key.lower() in parent.items:
        child_path = f"{parent.path}.{key}" if parent.path else key
        mark: Any = event.start_mark
        warnings.append(
            f"{src}:{mark.line + 1}: {child_path}: duplicate key "
            "(keys are case-insensitive); the last one wins"
        )
    parent.key = key


def _child_path(parent: _Open | None) -> str:
    """The key path of the next value inside `parent` (the root's is empty)."""
    if parent is None:
        return ""
    if isinstance(parent.items, list):
        return f"{parent.path}[{len(parent.items)}]"
    assert parent.key is not None
    return f"{parent.path}.{parent.key}" if parent.path else parent.key


# --------------------------------------------------------------------------------------------
# Mapping entries (mapping.md section 2).


@dataclass(frozen=True, slots=True, kw_only=True)
class SSOSpec:
    """An `sso:` role entry: matches the IAM Identity Center roles of one permission set."""

    permission_set_name: str
    account_id: str
    partition: str = ""

    def arn_prefix(self) -> str:
        """The lower-cased canonical-ARN prefix this entry matches (the pattern minus `*`).

        Upstream drops a non-empty partition (a bug, mapping.md section 5); authd uses it.
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
    userid: str = ""
    origin: str = field(default="", compare=False)

    def check(self) -> tuple[str, str] | None:
        """Return `(key, message)` for the first problem upstream rejects, or None.

        `key` is where the problem is (`""` for the entry itself, or `sso.accountID`, ...).
        """
        if not self.rolearn and self.sso is None:
            return "", "one of rolearn or SSO must be supplied"
        if self.rolearn and self.sso is not None:
            return "", "only one of rolearn or SSO can be supplied"
        return None if self.sso is None else _sso_problem(self.sso)

    def validate(self) -> None:
        """Raise ConfigError with upstream's text when the entry is invalid."""
        problem = self.check()
        if problem is not None:
            raise ConfigError(problem[1])


def _sso_problem(sso: SSOSpec) -> tuple[str, str] | None:
    """Check an `sso:` block's fields with upstream's texts."""
    if not _ACCOUNT_ID.match(sso.account_id):
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
    userid: str = ""
    origin: str = field(default="", compare=False)

    def validate(self) -> None:
        """Raise ConfigError with upstream's text when the entry is invalid."""
        if not self.userarn:
            raise ConfigError("value for userarn must be supplied")


def _parse_sso(val: _Val, warnings: list[str]) -> SSOSpec | None:
    """Read an `sso:` block; an explicit empty mapping is an (invalid) entry, as upstream."""
    if val.value is None:
        return None
    sec = _section(val, ("permissionSetName", "accountID", "partition"), warnings)
    return SSOSpec(
        permission_set_name=_str(sec.get("permissionSetName")),
        account_id=_str(sec.get("accountID")),
        partition=_str(sec.get("partition")),
    )


def _parse_role(val: _Val, warnings: list[str]) -> RoleMapping:
    """Read, validate and canonicalise one `mapRoles` entry."""
    sec = _section(val, ("rolearn", "username", "groups", "userid", "sso"), warnings)
    sso_val = sec.get("sso")
    entry = RoleMapping(
        rolearn=_str(sec.get("rolearn")),
        sso=_parse_sso(sso_val, warnings) if sso_val is not None else None,
        username=_str(sec.get("username")),
        groups=_strs(sec.get("groups")),
        userid=_str(sec.get("userid")),
        origin=val.where,
    )
    problem = entry.check()
    if problem is not None:
        key, message = problem
        target = val
        if key and sso_val is not None:
            sso_sec = _section(sso_val, ("permissionSetName", "accountID", "partition"), [])
            target = sso_sec.get(key.removeprefix("sso."), sso_val)
        target.fail(message)
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
            "this entry never matches (use arn:<partition>:iam::<account>:role/<name>)"
        )
    return RoleMapping(
        rolearn=canonical,
        username=entry.username,
        groups=entry.groups,
        userid=entry.userid,
        origin=entry.origin,
    )


def _parse_user(val: _Val, warnings: list[str]) -> UserMapping:
    """Read, validate and canonicalise (lower-cased) one `mapUsers` entry."""
    sec = _section(val, ("userarn", "username", "groups", "userid"), warnings)
    entry = UserMapping(
        userarn=_str(sec.get("userarn")),
        username=_str(sec.get("username")),
        groups=_strs(sec.get("groups")),
        userid=_str(sec.get("userid")),
        origin=val.where,
    )
    if not entry.userarn:
        val.fail("value for userarn must be supplied")
    try:
        _, canonical = canonicalize(entry.userarn.lower())
    except ArnError as exc:
        sec["userarn"].fail(f"error canonicalizing ARN: {exc}")
    return UserMapping(
        userarn=canonical,
        username=entry.username,
        groups=entry.groups,
        userid=entry.userid,
        origin=entry.origin,
    )


def _parse_reserved(val: _Val | None, warnings: list[str]) -> dict[str, tuple[str, ...]]:
    """Read `reservedPrefixConfig` into backend name -> prefixes (the last entry wins)."""
    result: dict[str, tuple[str, ...]] = {}
    for item in _items(val):
        sec = _section(item, ("backendMode", "usernamePrefixReserveList"), warnings)
        mode_val = sec.get("backendMode", item)
        mode = _str(sec.get("backendMode"))
        if mode not in BACKEND_MODES:
            # Upstream silently ignores such an entry, leaving the prefixes unprotected.
            hint = DEPRECATED_BACKEND_MODES.get(mode)
            suffix = f" (use {go_quote(hint)})" if hint else ""
            mode_val.fail(f"backendmode {go_quote(mode)} is not a valid mode{suffix}")
        result[mode] = _strs(sec.get("usernamePrefixReserveList"))
    return result


def _prefixed(prefix: str, fn: Any, *args: Any) -> Any:
    """Run one section parser, prefixing its error with upstream's section text."""
    try:
        return fn(*args)
    except ConfigError as exc:
        raise ConfigError(f"{prefix}: {exc}") from exc


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
                likewise `user mappings`, `account mappings`, `reserved prefix config`).
        """
        if file is None:
            return cls()
        warnings: list[str] = []
        srv = file.server
        roles = _prefixed(
            "invalid server role mappings",
            lambda: tuple(_parse_role(v, warnings) for v in _items(srv.get("mapRoles"))),
        )
        users = _prefixed(
            "invalid server user mappings",
            lambda: tuple(_parse_user(v, warnings) for v in _items(srv.get("mapUsers"))),
        )
        accounts = _prefixed(
            "invalid server account mappings",
            lambda: tuple(_account(v, warnings) for v in _items(srv.get("mapAccounts"))),
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


# --------------------------------------------------------------------------------------------
# Feature gates.

_GATES = {
    "ConfiguredInitDirectories": "configured_init_directories",
    "IAMIdentityMappingCRD": "iam_identity_mapping_crd",
    "SSORoleMatch": "sso_role_match",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class FeatureGates:
    """Upstream's feature gates (mapping.md section 10); all Alpha, all off by default."""

    configured_init_directories: bool = False
    iam_identity_mapping_crd: bool = False
    sso_role_match: bool = False

    @classmethod
    def parse(cls, text: str) -> FeatureGates:
        """Parse `--feature-gates` text: `Name=bool,...` (`AllAlpha`, `AllBeta` accepted).

        Raises:
            ConfigError: an unknown gate (`unrecognized feature gate: X`) or a bad value.
        """
        values: dict[str, bool] = {}
        for part in text.split(","):
            item = part.strip()
            if not item:
                continue
            name, sep, raw = item.partition("=")
            name, raw = name.strip(), raw.strip()
            if not sep:
                raise ConfigError(f"missing bool value for {name}")
            if raw not in _GO_TRUE and raw not in _GO_FALSE:
                raise ConfigError(
                    f"invalid value of {name}={raw}, err: strconv.ParseBool: parsing "
                    f"{go_quote(raw)}: invalid syntax"
                )
            values[name] = raw in _GO_TRUE
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, bool]) -> FeatureGates:
        """Build gates from `{name: bool}`; explicit gates win over `AllAlpha`.

        Raises:
            ConfigError: `unrecognized feature gate: X`.
        """
        for name in values:
            if name not in _GATES and name not in ("AllAlpha", "AllBeta"):
                raise ConfigError(f"unrecognized feature gate: {name}")
        # Every gate is Alpha, so AllAlpha sets them all and AllBeta none.
        base = bool(values.get("AllAlpha", False))
        kwargs = {attr: bool(values.get(name, base)) for name, attr in _GATES.items()}
        return cls(**kwargs)


# --------------------------------------------------------------------------------------------
# Server settings.


def _backend_modes(raw: Sequence[str], warnings: list[str]) -> tuple[str, ...]:
    """Validate the backend list as upstream does; return canonical names, in order.

    Raises:
        ConfigError: the aggregate of `not a valid mode`, `has duplicates`, `at least one`.
    """
    errors = [
        f"backend-mode {go_quote(m)} is not a valid mode"
        for m in raw
        if m not in BACKEND_MODES and m not in DEPRECATED_BACKEND_MODES
    ]
    for mode in raw:
        if mode in DEPRECATED_BACKEND_MODES:
            replacement = DEPRECATED_BACKEND_MODES[mode]
            warnings.append(
                f"warning: backend-mode {go_quote(mode)} is deprecated, "
                f"use {go_quote(replacement)} instead"
            )
    if len(set(raw)) != len(raw):
        listed = " ".join(go_quote(m) for m in raw)
        errors.append(f"backend-mode [{listed}] has duplicates")
    if not raw:
        errors.append("at least one backend-mode must be specified")
    if errors:
        raise ConfigError(aggregate_message(errors))
    canonical = [DEPRECATED_BACKEND_MODES.get(m, m) for m in raw]
    unique = tuple(dict.fromkeys(canonical))
    if len(unique) != len(canonical):
        warnings.append(
            "warning: backend-mode lists the same backend under its old and new name; it runs once"
        )
    return unique


def _is_loopback(host: str) -> bool:
    """True for `localhost` and loopback IP addresses."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _sts_origin(val: _Val) -> str:
    """Validate one extra STS endpoint as `scheme://host[:port]` (http for loopback only)."""
    text = _str(val).strip()
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as exc:
        val.fail(f"{go_quote(text)} is not a valid STS endpoint: {exc}")
    host = parts.hostname or ""
    if parts.scheme not in ("https", "http") or not host:
        val.fail(f"{go_quote(text)} is not a valid STS endpoint: expected https://host[:port]")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        val.fail(f"{go_quote(text)} is not a valid STS endpoint: only scheme://host[:port]")
    if parts.scheme == "http" and not _is_loopback(host):
        val.fail(f"{go_quote(text)} is not a valid STS endpoint: http is only for loopback hosts")
    shown = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{shown}" + (f":{port}" if port is not None else "")


def _host_port(val: _Val) -> str:
    """Validate a `host:port` listen address (host may be empty for all interfaces)."""
    text = _str(val).strip()
    if not text:
        return ""
    _, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        val.fail(f"{go_quote(text)} is not a host:port address")
    return text


def _port(val: _Val) -> int:
    """Read a TCP port (0 picks a free one)."""
    port = _int(val)
    if not 0 <= port <= 65535:
        val.fail(f"port {port} is out of range 0-65535")
    return port


def _non_negative(conv: Any) -> Any:
    """Wrap a number converter to reject negative values."""

    def read(val: _Val) -> Any:
        value = conv(val)
        if value < 0:
            val.fail(f"must not be negative, got {_str(val)}")
        return value

    return read


def _positive(conv: Any) -> Any:
    """Wrap a number converter to reject zero and negative values."""

    def read(val: _Val) -> Any:
        value = conv(val)
        if value <= 0:
            val.fail(f"must be greater than zero, got {_str(val)}")
        return value

    return read


@dataclass(frozen=True, slots=True)
class _Setting:
    """How one ServerSettings attribute is found: flag, env, config key, default, converter."""

    attr: str
    flag: str | None
    key: str | None
    conv: Any
    default: Any
    env: str | None = None


def _strings_split(val: _Val) -> tuple[str, ...]:
    """A list of strings where each string may itself be comma/space separated."""
    return _strs(val, split=", \t\n")


_SETTINGS: tuple[_Setting, ...] = (
    _Setting("partition", "--partition", "server.partition", _str, "aws"),
    _Setting(
        "generate_kubeconfig",
        "--generate-kubeconfig",
        "server.generateKubeconfig",
        _str,
        "/etc/kubernetes/aws-iam-authenticator/kubeconfig.yaml",
    ),
    _Setting(
        "kubeconfig_pregenerated",
        "--kubeconfig-pregenerated",
        "server.kubeconfigPregenerated",
        _bool,
        False,
    ),
    _Setting("state_dir", "--state-dir", "server.stateDir", _str, "/var/aws-iam-authenticator"),
    _Setting("kubeconfig", "--kubeconfig", "server.kubeconfig", _str, ""),
    _Setting("master", "--master", "server.master", _str, ""),
    _Setting("address", "--address", "server.address", _str, "127.0.0.1"),
    _Setting("port", "--port", "server.port", _port, 21362),
    _Setting("hostname", "--hostname", "server.hostname", _str, "localhost"),
    _Setting(
        "ec2_describe_instances_qps",
        "--ec2-describeInstances-qps",
        "server.ec2DescribeInstancesQps",
        _positive(_int),
        15,
    ),
    _Setting(
        "ec2_describe_instances_burst",
        "--ec2-describeInstances-burst",
        "server.ec2DescribeInstancesBurst",
        _positive(_int),
        5,
    ),
    _Setting(
        "ec2_describe_instances_role_arn", None, "server.ec2DescribeInstancesRoleARN", _str, ""
    ),
    _Setting("source_arn", None, "server.sourceARN", _str, ""),
    _Setting(
        "extra_sts_endpoints",
        "--extra-sts-endpoint",
        "server.extraSTSEndpoints",
        lambda v: tuple(dict.fromkeys(_sts_origin(i) for i in _items(v))),
        (),
    ),
    _Setting("dynamicfile_path", "--dynamicfile-path", "server.dynamicfilepath", _str, ""),
    _Setting(
        "dynamicfile_userid_strict",
        "--dynamicfile-userid-strict",
        "server.dynamicfileUserIDStrict",
        _bool,
        False,
    ),
    _Setting("dynamic_backend_mode_path", None, "server.dynamicBackendModePath", _str, ""),
    _Setting("sts_timeout", "--sts-timeout", "server.stsTimeout", _positive(_duration), 10.0),
    _Setting("sts_qps", "--sts-qps", "server.stsQPS", _positive(_number), 50.0),
    _Setting("sts_burst", "--sts-burst", "server.stsBurst", _positive(_int), 100),
    _Setting(
        "identity_cache_size",
        "--identity-cache-size",
        "server.identityCacheSize",
        _non_negative(_int),
        100000,
    ),
    _Setting(
        "ec2_cache_ttl", "--ec2-cache-ttl", "server.ec2CacheTTL", _non_negative(_duration), 900.0
    ),
    _Setting(
        "ec2_batch_window",
        "--ec2-batch-window",
        "server.ec2BatchWindow",
        _non_negative(_duration),
        0.01,
    ),
    _Setting("health_address", "--health-address", "server.healthAddress", _host_port, ""),
    _Setting(
        "log_verbosity", "--log-verbosity", "log-verbosity", _str, "info", env=LOG_VERBOSITY_ENV
    ),
    _Setting("log_format", "--log-format", None, _str, "json"),
)
_BY_ATTR = {s.attr: s for s in _SETTINGS}
_SPECIAL_FLAGS = {
    "cluster_ids": "--cluster-id",
    "backend_mode": "--backend-mode",
    "feature_gates": "--feature-gates",
}


class _Sources:
    """Looks a setting up in flags, then env, then the config file (upstream's precedence)."""

    def __init__(
        self, flags: Mapping[str, object], env: Mapping[str, str], file: FileConfig | None
    ) -> None:
        unknown = set(flags) - set(_BY_ATTR) - set(_SPECIAL_FLAGS)
        if unknown:
            raise ConfigError(f"unknown server setting(s): {', '.join(sorted(unknown))}")
        self.flags = flags
        self.env = env
        self.file = file

    def get(self, attr: str, flag: str | None, key: str | None, env: str | None) -> _Val | None:
        """Return the highest-precedence value given for one setting, or None."""
        if attr in self.flags and self.flags[attr] is not None:
            return _wrap(self.flags[attr], flag or attr)
        if env is not None and self.env.get(env):
            return _Val(self.env[env], env)
        if key is None or self.file is None:
            return None
        section, _, name = key.rpartition(".")
        table = self.file.server if section == "server" else self.file.top
        return table.get(name)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSettings:
    """Every setting of `server` and `init` (server.md sections 1, 2, 6; authd.md section 1).

    Build with `resolve`. Durations are seconds; `backend_mode` holds canonical names in chain
    order; `cluster_ids[0]` is the current cluster ID, later ones are accepted during rotation.
    """

    cluster_ids: tuple[str, ...]
    partition: str = "aws"
    generate_kubeconfig: str = "/etc/kubernetes/aws-iam-authenticator/kubeconfig.yaml"
    kubeconfig_pregenerated: bool = False
    state_dir: str = "/var/aws-iam-authenticator"
    kubeconfig: str = ""
    master: str = ""
    address: str = "127.0.0.1"
    port: int = 21362
    hostname: str = "localhost"
    backend_mode: tuple[str, ...] = ("MountedFile",)
    ec2_describe_instances_qps: int = 15
    ec2_describe_instances_burst: int = 5
    ec2_describe_instances_role_arn: str = ""
    source_arn: str = ""
    scrubbed_accounts: tuple[str, ...] = ()
    extra_sts_endpoints: tuple[str, ...] = ()
    dynamicfile_path: str = ""
    dynamicfile_userid_strict: bool = False
    dynamic_backend_mode_path: str = ""
    sts_timeout: float = 10.0
    sts_qps: float = 50.0
    sts_burst: int = 100
    identity_cache_size: int = 100000
    ec2_cache_ttl: float = 900.0
    ec2_batch_window: float = 0.01
    health_address: str = ""
    log_verbosity: str = "info"
    log_format: str = "json"
    feature_gates: FeatureGates = field(default_factory=FeatureGates)
    mapping: MappingConfig = field(default_factory=MappingConfig)
    config_path: str = ""
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def cluster_id(self) -> str:
        """The current cluster ID (the first one given)."""
        return self.cluster_ids[0]

    @classmethod
    def resolve(
        cls,
        *,
        flags: Mapping[str, object],
        env: Mapping[str, str],
        file: FileConfig | None,
    ) -> ServerSettings:
        """Resolve every setting (flag > env > config file > default) and validate start-up.

        Args:
            flags: only the flags given on the command line, keyed by attribute name
                (`port`, `cluster_ids`, `backend_mode`, `feature_gates`, ...).
            env: the process environment (only upstream's bound variables are read).
            file: the parsed `--config` file, or None.

        Raises:
            ConfigError: the first failure, in upstream's order: role, user and account
                mappings, reserved prefix config, `cluster ID cannot be empty`,
                `invalid partition`, the DynamicFile/dynamicfilepath pair, the backend-mode
                list; then authd's own checks of the remaining settings.
        """
        src = _Sources(flags, env, file)
        warnings: list[str] = list(file.warnings) if file is not None else []
        mapping = MappingConfig.from_file_config(file)
        warnings.extend(mapping.warnings)
        cluster_ids = _cluster_ids(src)
        values: dict[str, Any] = {}
        values["partition"] = _resolve_one(src, "partition")
        if values["partition"] not in PARTITIONS:
            raise ConfigError(
                f"invalid partition {go_quote(values['partition'])}: must be one of "
                + ", ".join(PARTITIONS)
            )
        values["dynamicfile_path"] = _resolve_one(src, "dynamicfile_path")
        raw_modes = _raw_backend_modes(src)
        if "DynamicFile" in raw_modes and not values["dynamicfile_path"]:
            raise ConfigError("dynamicfile is set in backend-mode but dynamicfilepath is not set")
        if "DynamicFile" not in raw_modes and values["dynamicfile_path"]:
            raise ConfigError("dynamicfile is not set in backend-mode but dynamicfilepath is set")
        backend_mode = _backend_modes(raw_modes, warnings)
        for setting in _SETTINGS:
            if setting.attr not in values:
                values[setting.attr] = _resolve_one(src, setting.attr)
        _check_extras(values, warnings)
        return cls(
            cluster_ids=cluster_ids,
            backend_mode=backend_mode,
            scrubbed_accounts=_scrubbed(file, warnings),
            feature_gates=_feature_gates(src, file, warnings),
            mapping=mapping,
            config_path=file.path if file is not None else "",
            warnings=tuple(warnings),
            **values,
        )


def _resolve_one(src: _Sources, attr: str) -> Any:
    """Resolve and convert one table-driven setting."""
    setting = _BY_ATTR[attr]
    val = src.get(attr, setting.flag, setting.key, setting.env)
    return setting.default if val is None else setting.conv(val)


def _cluster_ids(src: _Sources) -> tuple[str, ...]:
    """Read the cluster IDs (a string or a list); the first is current, none may be empty."""
    val = src.get("cluster_ids", "--cluster-id", "clusterID", CLUSTER_ID_ENV)
    ids = tuple(s.strip() for s in _strs(val))
    if not ids or not all(ids):
        raise ConfigError("cluster ID cannot be empty")
    return tuple(dict.fromkeys(ids))


def _raw_backend_modes(src: _Sources) -> list[str]:
    """The backend list as given: flags comma-separated, the file a list or a string."""
    val = src.get("backend_mode", "--backend-mode", "server.backendMode", None)
    if val is None:
        return ["MountedFile"]
    return list(_strings_split(val))


def _scrubbed(file: FileConfig | None, warnings: list[str]) -> tuple[str, ...]:
    """Read `server.scrubbedAccounts` (config file only, as upstream)."""
    if file is None:
        return ()
    return tuple(_account(v, warnings) for v in _items(file.server.get("scrubbedAccounts")))


def _feature_gates(src: _Sources, file: FileConfig | None, warnings: list[str]) -> FeatureGates:
    """Read `--feature-gates`; the config key is recognised but, as upstream, not applied."""
    if file is not None and "feature-gates" in file.top:
        warnings.append(
            f"{file.top['feature-gates'].where}: feature gates in the config file are not "
            "applied (as upstream); pass --feature-gates instead"
        )
    given = src.flags.get("feature_gates")
    if given is None:
        return FeatureGates()
    if isinstance(given, FeatureGates):
        return given
    try:
        if isinstance(given, Mapping):
            return FeatureGates.from_mapping(given)
        return FeatureGates.parse(str(given))
    except ConfigError as exc:
        raise ConfigError(f"--feature-gates: {exc}") from exc


def _check_extras(values: dict[str, Any], warnings: list[str]) -> None:
    """authd's checks of settings upstream reads without validating."""
    level = values["log_verbosity"]
    if level == "warn":
        values["log_verbosity"] = "warning"
    elif level not in LOG_LEVELS:
        raise ConfigError(
            f"Invalid log level {go_quote(level)}. Valid values are: " + ", ".join(LOG_LEVELS)
        )
    if values["log_format"] not in ("json", "text"):
        warnings.append(
            f"Unknown log format specified ({values['log_format']}), will use default text "
            "formatter instead."
        )
        values["log_format"] = "text"
    role_arn = values["ec2_describe_instances_role_arn"]
    if role_arn:
        try:
            canonicalize(role_arn)
        except ArnError as exc:
            raise ConfigError(f"describeinstancesrole {role_arn} is not a valid arn") from exc
    if not values["hostname"]:
        # The hostname is the webhook kubeconfig's server URL host and the certificate's SAN.
        raise ConfigError("hostname must not be empty")
