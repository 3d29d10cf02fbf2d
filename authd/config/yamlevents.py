"""Read YAML or JSON text into `Located` values, with file, line and key path on every value.

Plain files are built straight from libyaml's parser events, several times faster than
composing nodes first (a 10,000-entry mapping file loads well under a second). Anchors,
aliases, merge keys, explicit tags, several documents and syntax errors take the composer path,
which gives the same values and the exact error messages. Keys are lower-cased (viper's keys
are case-insensitive); a repeated key warns and the last one wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from authd.config.located import DECIMAL, Located
from authd.errors import ConfigError

YAML_TAG = "tag:yaml.org,2002:"
# libyaml is about ten times faster than the pure-Python scanner; both give the same nodes.
LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _NeedsComposer(Exception):
    """The text uses a YAML feature the event builder leaves to the composer (anchors, tags)."""


def read_tree(text: str, *, src: str, warnings: list[str]) -> Located | None:
    """Parse YAML (or JSON) text into located values; None for an empty document.

    Raises:
        ConfigError: a syntax error (`<path>:<line>: <problem>`, with `path` and `line` set)
            or an unsupported value.
    """
    fast_warnings: list[str] = []
    try:
        root = tree_from_events(text, src=src, warnings=fast_warnings)
    except (_NeedsComposer, yaml.YAMLError):
        pass
    else:
        warnings.extend(fast_warnings)
        return root
    try:
        node = yaml.compose(text, Loader=LOADER)
    except yaml.MarkedYAMLError as exc:
        line = _error_line(text, exc)
        where = f"{src}:{line}" if line is not None else src
        raise ConfigError(f"{where}: {exc.problem or exc.context}", path=src, line=line) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{src}: {exc}", path=src) from exc
    if node is None:
        return None
    return from_node(node, src=src, path="", warnings=warnings)


def _error_line(text: str, exc: yaml.MarkedYAMLError) -> int | None:
    """The line to blame for a syntax error.

    Where the problem is only found at the end of the text (an unclosed `[`, `{` or quote), the
    line where that unfinished construct starts; otherwise the line of the problem.
    """
    problem, context = exc.problem_mark, exc.context_mark
    if problem is None:
        return None if context is None else context.line + 1
    if context is not None:
        tail = "\n".join(text.splitlines()[problem.line :])[problem.column :]
        if not tail.strip():
            return context.line + 1
    return problem.line + 1


def scalar(node: yaml.ScalarNode, src: str, line: int, key: str) -> Located:
    """Turn a YAML scalar into a `Located`; plain digit runs are read as base-10 numbers."""
    tag = node.tag.removeprefix(YAML_TAG)
    text = node.value
    if tag == "int" and not node.style and DECIMAL.match(text):
        # YAML 1.1 reads 0123 as octal; upstream's Go reader gives the decimal number.
        value = int(text.replace("_", ""), 10)
        return Located(value, src, line, key, text=text, unquoted_number=True)
    if tag in ("str", "timestamp", "binary"):
        return Located(text, src, line, key, text=text)
    if tag not in ("null", "bool", "int", "float"):
        Located(None, src, line, key).fail(f"unsupported YAML tag {node.tag!r}")
    try:
        value = yaml.constructor.SafeConstructor().construct_object(node)
    except yaml.YAMLError as exc:
        raise Located(None, src, line, key).error(str(exc)) from exc
    return Located(value, src, line, key, text=text)


def from_node(node: yaml.Node, *, src: str, path: str, warnings: list[str]) -> Located:
    """Convert a composed YAML node tree to `Located`s that remember file, line and key path."""
    line = node.start_mark.line + 1
    if isinstance(node, yaml.ScalarNode):
        return scalar(node, src, line, path)
    if isinstance(node, yaml.SequenceNode):
        items = [
            from_node(child, src=src, path=f"{path}[{i}]", warnings=warnings)
            for i, child in enumerate(node.value)
        ]
        return Located(items, src, line, path)
    here = Located(None, src, line, path)
    if not isinstance(node, yaml.MappingNode):
        here.fail("unsupported YAML node")
    if any(key.tag == "tag:yaml.org,2002:merge" for key, _ in node.value):
        try:
            # Resolves `<<: *anchor` merge keys in place, as every YAML reader does.
            yaml.constructor.SafeConstructor().flatten_mapping(node)
        except yaml.YAMLError as exc:
            raise here.error(str(exc)) from exc
    children: dict[str, Located] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            here.fail("keys must be plain strings")
        key = key_node.value
        child_path = f"{path}.{key}" if path else key
        if key.lower() in children:
            warnings.append(
                f"{src}:{key_node.start_mark.line + 1}: {child_path}: duplicate key "
                "(keys are case-insensitive); the last one wins"
            )
        children[key.lower()] = from_node(value_node, src=src, path=child_path, warnings=warnings)
    return Located(children, src, line, path)


@dataclass(slots=True)
class _Open:
    """A sequence or mapping whose end event has not come yet."""

    items: list[Located] | dict[str, Located]
    line: int
    path: str
    key: str | None = None


def tree_from_events(text: str, *, src: str, warnings: list[str]) -> Located | None:
    """Build the located tree from parser events (iteratively: nesting depth costs no stack)."""
    loader = LOADER(text)
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


def _events_to_tree(loader: Any, *, src: str, warnings: list[str]) -> Located:
    """Consume one node's events and return it as a `Located`, as `from_node` would build it."""
    stack: list[_Open] = []
    while True:
        event = loader.get_event()
        if isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
            done = stack.pop()
            value = Located(done.items, src, done.line, done.path)
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
            if isinstance(event, yaml.SequenceStartEvent):
                stack.append(_Open([], line, path))
                continue
            if isinstance(event, yaml.MappingStartEvent):
                stack.append(_Open({}, line, path))
                continue
            tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
            node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
            value = scalar(node, src, line, path)
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
    """Record a mapping key; warn about a duplicate as `from_node` does."""
    if not isinstance(event, yaml.ScalarEvent):
        raise _NeedsComposer("complex key")
    if loader.resolve(yaml.ScalarNode, event.value, event.implicit) == YAML_TAG + "merge":
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
