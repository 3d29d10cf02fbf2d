"""Located config values: one raw value with the file, line and key path it came from.

A `Located` is what the YAML/JSON reader (`authd.config.yamlevents`) builds for every value of
a file, and what a flag or environment value is wrapped in. The readers below (`as_str`,
`as_int`, `as_bool`, ...) turn one into a typed value or raise a `ConfigError` whose message
starts `file:line: key.path:` and whose `path`, `line` and `key` attributes say the same.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import NoReturn

from authd.errors import ConfigError
from authd.gotext import go_quote, parse_bool

ACCOUNT_ID = re.compile(r"[0-9]{12}\Z")
DECIMAL = re.compile(r"[-+]?[0-9][0-9_]*\Z")
_KEY_STEP = re.compile(r"\[(\d+)\]|\.?([^.\[\]]+)")


class Located:
    """A raw value (scalar, list of `Located`, or dict of lower-cased key to `Located`) and its
    origin.

    From a file: `src` is the file's path, `line` the 1-based line and `key` the key path
    (`server.mapRoles[0].rolearn`, "" for the document itself). From a flag or the
    environment: `src` is the flag or variable (`--port`, `--extra-sts-endpoint[1]`) and `line`
    is None. `where` is what error messages start with.
    """

    __slots__ = ("key", "line", "src", "text", "unquoted_number", "value")

    def __init__(
        self,
        value: object,
        src: str,
        line: int | None = None,
        key: str = "",
        *,
        text: str | None = None,
        unquoted_number: bool = False,
    ) -> None:
        self.value = value
        self.src = src
        self.line = line
        self.key = key
        self.text = text
        self.unquoted_number = unquoted_number

    @property
    def where(self) -> str:
        """`file:line: key.path` (or `file:line`) for a file value, the flag or variable else."""
        if self.line is None:
            return self.src
        if self.key:
            return f"{self.src}:{self.line}: {self.key}"
        return f"{self.src}:{self.line}"

    def error(self, message: str) -> ConfigError:
        """A ConfigError about this value: the message prefixed and the location attached."""
        if self.line is None:
            return ConfigError(f"{self.src}: {message}")
        return ConfigError(
            f"{self.where}: {message}", path=self.src, line=self.line, key=self.key or None
        )

    def fail(self, message: str) -> NoReturn:
        """Raise `error(message)`."""
        raise self.error(message)


def kind(value: object) -> str:
    """Name a raw value's shape for 'expected X, got Y' messages."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if value is None:
        return "nothing"
    return go_quote(str(value))


def wrap(value: object, src: str) -> Located:
    """Wrap a plain Python value (from a flag, the environment or a test) as a `Located`."""
    if isinstance(value, Located):
        return value
    if isinstance(value, list | tuple):
        return Located([wrap(v, f"{src}[{i}]") for i, v in enumerate(value)], src)
    if isinstance(value, Mapping):
        return Located({str(k).lower(): wrap(v, f"{src}.{k}") for k, v in value.items()}, src)
    return Located(value, src)


def find(root: Located | None, key: str) -> Located | None:
    """The value at a key path such as `mapRoles[0].rolearn` (keys ignore case), or None."""
    node = root
    for index, name in _KEY_STEP.findall(key):
        if node is None:
            return None
        if name:
            node = node.value.get(name.lower()) if isinstance(node.value, dict) else None
        elif isinstance(node.value, list) and int(index) < len(node.value):
            node = node.value[int(index)]
        else:
            return None
    return node


def section(val: Located | None, known: Iterable[str], warnings: list[str]) -> dict[str, Located]:
    """Read a mapping, keyed by the canonical spelling in `known`; unknown keys warn."""
    if val is None or val.value is None:
        return {}
    if not isinstance(val.value, dict):
        val.fail(f"expected a mapping of keys, got {kind(val.value)}")
    by_lower = {name.lower(): name for name in known}
    result: dict[str, Located] = {}
    for lower, child in val.value.items():
        name = by_lower.get(lower)
        if name is None:
            warnings.append(f"{child.where}: unknown key, ignored")
        else:
            result[name] = child
    return result


def items(val: Located | None) -> list[Located]:
    """Read a list; nothing is an empty list and a single scalar a one-element list."""
    if val is None or val.value is None:
        return []
    if isinstance(val.value, list):
        return val.value
    if isinstance(val.value, dict):
        val.fail("expected a list, got a mapping")
    # Upstream decodes weakly: `groups: system:masters` is a one-element list.
    return [val]


def as_str(val: Located | None) -> str:
    """Read a string; numbers become their decimal text, nothing is the empty string."""
    if val is None or val.value is None:
        return ""
    value = val.value
    if isinstance(value, list | dict):
        val.fail(f"expected a string, got {kind(value)}")
    if isinstance(value, int) and not isinstance(value, bool) and val.unquoted_number:
        return str(value)
    if val.text is not None:
        return val.text
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def as_strs(val: Located | None, *, split: str | None = None) -> tuple[str, ...]:
    """Read a list of strings; with `split`, plain strings are split on those characters."""
    out: list[str] = []
    for item in items(val):
        text = as_str(item)
        if split is not None and isinstance(item.value, str):
            out.extend(p for p in re.split(f"[{re.escape(split)}]+", text) if p)
        else:
            out.append(text)
    return tuple(out)


def as_cluster_ids(val: Located | None) -> tuple[str, ...]:
    """Read `clusterID`: one string or a list (the current ID first), each stripped."""
    return tuple(s.strip() for s in as_strs(val))


def as_int(val: Located) -> int:
    """Read an integer (a number, or a string of digits from a flag or the environment)."""
    value = val.value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and DECIMAL.match(value.strip()):
        return int(value.strip().replace("_", ""), 10)
    val.fail(f"expected an integer, got {kind(value)}")


def as_number(val: Located) -> float:
    """Read a number (integer or decimal)."""
    value = val.value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    val.fail(f"expected a number, got {kind(value)}")


def as_bool(val: Located) -> bool:
    """Read a boolean; strings follow Go's `strconv.ParseBool`, as viper does."""
    value = val.value
    if isinstance(value, bool):
        return value
    if isinstance(value, str | int):
        try:
            return parse_bool(as_str(val).strip())
        except ValueError:
            pass
    val.fail(f"expected true or false, got {kind(value)}")


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


def as_duration(val: Located) -> float:
    """Read a duration: a Go-style string, or the number 0."""
    value = val.value
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
        return 0.0
    if not isinstance(value, str):
        val.fail(f"expected a duration such as 10s, got {kind(value)}")
    try:
        return parse_duration(value)
    except ConfigError as exc:
        val.fail(str(exc))


def as_account(val: Located, warnings: list[str]) -> str:
    """Read an AWS account ID; warn when it cannot match (unquoted, lost leading zeros)."""
    text = as_str(val)
    if not ACCOUNT_ID.match(text):
        hint = " (quote account IDs so leading zeros are kept)" if val.unquoted_number else ""
        warnings.append(
            f"{val.where}: account ID {go_quote(text)} is not 12 digits and never matches{hint}"
        )
    return text


def plain(val: Located) -> object:
    """A located value as plain Python data (lists, dicts, scalars)."""
    if isinstance(val.value, list):
        return [plain(v) for v in val.value]
    if isinstance(val.value, dict):
        return {k: plain(v) for k, v in val.value.items()}
    return val.value
