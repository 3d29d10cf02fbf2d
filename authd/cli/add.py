"""`authd add user|role`: append one mapping to aws-auth, safe against concurrent edits.

upstream's `aws-iam-authenticator add user --userarn --username --groups` and `add role --rolearn
(or --sso) --username --groups`, with its `--kubeconfig`, `--kubeconfig-context`, `--master-url`
and `--prompt` flags (docs/kubernetes.md, "Adding users and roles"). The update reads
`kube-system/aws-auth`, appends the entry and writes it back with the resourceVersion it read;
when another client wrote in between (409 Conflict) it reads again and retries, up to
`TRIES` times, as client-go's `retry.RetryOnConflict` does for upstream.

Where authd differs from upstream, on purpose:

- the new entry's YAML is appended to the data key's string, so every other entry keeps its
  formatting and comments (upstream re-encodes the whole key); only a key whose text cannot be
  appended to (a flow-style list such as `[...]`) is re-encoded, and the command says so;
- an ARN that does not parse, or that is not canonical (an `assumed-role` ARN, which the
  EKSConfigMap backend never matches), is refused before anything is read;
- a missing aws-auth is created (upstream fails with "not found"), and a data key that does not
  parse is left alone: the command refuses to edit it rather than drop its entries;
- without `--kubeconfig` or `--master-url` the in-cluster configuration is used, as the server
  does (upstream's command requires `--kubeconfig`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from authd.errors import ArnError, ConfigError, Conflict, NotFound
from authd.gotext import parse_bool

if TYPE_CHECKING:
    from authd.server.kube.client import KubeClient

# Every CLI start builds this parser, `authd token` included: yaml, the config package and the
# kube client are imported inside the functions that use them, so a token stays light.
NAMESPACE = "kube-system"  # authd.mapping.configmap's, not imported here for the reason above
OBJECT = "aws-auth"
TRIES = 5
RETRY_PAUSE = 0.01  # seconds between tries, client-go's DefaultRetry step
COLLECTION = f"/api/v1/namespaces/{NAMESPACE}/configmaps"
PATH = f"{COLLECTION}/{OBJECT}"
_EMPTY = frozenset({"", "``", '""', "''"})
_SSO_KEYS = ("permissionSetName", "accountID", "partition")


class UsageError(ValueError):
    """A flag value the command refuses before talking to the API server (exit 2)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NewMapping:
    """The entry to add: `kind` is "user" or "role"; `arn` is empty for an SSO role."""

    kind: str
    arn: str
    username: str
    groups: tuple[str, ...]
    sso: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The aws-auth data key the entry goes under."""
        return "mapUsers" if self.kind == "user" else "mapRoles"

    def entry(self) -> dict[str, Any]:
        """The entry as upstream spells it (`userarn`/`rolearn` or `sso`, `username`, `groups`)."""
        head: dict[str, Any]
        if self.sso:
            head = {"sso": dict(self.sso)}
        else:
            head = {"userarn" if self.kind == "user" else "rolearn": self.arn}
        return {**head, "username": self.username, "groups": list(self.groups)}

    def describe(self) -> str:
        """`userarn <arn>, username <name>, groups [a b]`, as upstream's prompt words it."""
        what = f"sso {dict(self.sso)}" if self.sso else f"{self.key[3:].lower()}arn {self.arn}"
        return f"{what}, username {self.username}, groups [{' '.join(self.groups)}]"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What `add_mapping` did: the ConfigMap as stored, how many tries, and any notes."""

    configmap: dict[str, Any]
    tries: int
    notes: tuple[str, ...] = ()


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    """Register `add user` and `add role` and their flags (upstream's names)."""
    p = sub.add_parser("add", help="add an IAM user or role to the aws-auth ConfigMap")
    _connection_flags(p, default="")
    kinds = p.add_subparsers(dest="kind", metavar="KIND")
    kinds.required = True
    for kind in ("user", "role"):
        leaf = kinds.add_parser(
            kind,
            parents=parents,
            help=f"add a {kind} entity to the aws-auth ConfigMap (not the CRD or file backends)",
        )
        _connection_flags(leaf, default=argparse.SUPPRESS)
        leaf.add_argument(
            f"--{kind}arn", dest="arn", default="", help=f"the {kind} ARN to map (canonical)"
        )
        if kind == "role":
            leaf.add_argument(
                "--sso",
                default="",
                help="an SSO permission set instead of --rolearn: "
                "permissionSetName=NAME,accountID=ID[,partition=aws]",
            )
        leaf.add_argument("--username", default="", help="the Kubernetes user name")
        leaf.add_argument(
            "--groups",
            action="append",
            default=[],
            help="Kubernetes groups, comma-separated (may be repeated)",
        )
        leaf.set_defaults(run=run, error_prefix=f"could not add the {kind}: ")


def _connection_flags(p: argparse.ArgumentParser, *, default: Any) -> None:
    """Flags accepted after `add` and after `user`/`role` alike, as cobra's persistent flags."""
    p.add_argument("--kubeconfig", default=default, help="kubeconfig file (else in-cluster)")
    p.add_argument(
        "--kubeconfig-context", default=default, help="kubeconfig context (else its current one)"
    )
    p.add_argument(
        "--master-url", "--master", dest="master", default=default, help="API server URL"
    )
    p.add_argument(
        "--prompt",
        nargs="?",
        const=True,
        default=True if default == "" else default,
        type=_flag_bool,
        help="ask before writing when stdin is a terminal; --prompt=false never asks",
    )


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Check the flags, ask when asked to, then update aws-auth and print it as upstream does."""
    import trio
    import yaml

    from authd.server.kube.connection import connection_from, open_client

    try:
        mapping = mapping_from(args)
    except UsageError as exc:
        print(f"{args.error_prefix}{exc}", file=sys.stderr)
        return 2
    if args.prompt and sys.stdin.isatty() and not _confirm(mapping):
        print(f'cancelled "add {mapping.describe()}"')
        return 0
    connection = connection_from(
        kubeconfig=args.kubeconfig, master=args.master, env=env, context=args.kubeconfig_context
    )

    async def update() -> Outcome:
        async with open_client(connection) as client:
            return await add_mapping(client, mapping)

    outcome = trio.run(update)
    for note in outcome.notes:
        print(f"note: {note}", file=sys.stderr)
    shown = yaml.safe_dump(outcome.configmap, sort_keys=False, default_flow_style=False)
    print(f"updated configmap:\n\n{shown}")
    return 0


def mapping_from(args: argparse.Namespace) -> NewMapping:
    """The entry the flags describe, checked as the EKSConfigMap backend would read it.

    Raises:
        UsageError: a missing value, an ARN that does not parse or is not canonical, a bad
            `--sso`, or an entry the backend would reject.
    """
    from authd.arn import canonicalize
    from authd.mapping.configmap import parse_configmap

    kind: str = args.kind
    arn: str = args.arn.strip()
    groups = tuple(g.strip() for value in args.groups for g in value.split(",") if g.strip())
    sso = _sso(getattr(args, "sso", ""))
    if arn and sso:
        raise UsageError("only one of --rolearn or --sso can be supplied")
    if not (arn or sso) or not args.username or not groups:
        raise UsageError(
            f"invalid empty value in {kind}arn {arn!r}, username {args.username!r}, "
            f"groups {list(groups)!r}"
        )
    if arn:
        try:
            _, canonical = canonicalize(arn)
        except ArnError as exc:
            raise UsageError(f"--{kind}arn: {exc}") from exc
        if canonical.lower() != arn.lower():
            raise UsageError(
                f"--{kind}arn {arn} is not a canonical ARN and would never match; use {canonical}"
            )
    mapping = NewMapping(kind=kind, arn=arn, username=args.username, groups=groups, sso=sso)
    block = _dump([mapping.entry()])
    try:
        version = parse_configmap({mapping.key: block})
    except ConfigError as exc:  # not expected: the block is generated
        raise UsageError(str(exc)) from exc
    if version.rejected:
        raise UsageError(_without_location(version.rejected[0]))
    return mapping


async def add_mapping(client: KubeClient, mapping: NewMapping, *, tries: int = TRIES) -> Outcome:
    """Append `mapping` to aws-auth: GET, append, PUT at the read resourceVersion; retry on 409.

    A missing aws-auth is created with just this entry (a 409 there means another client
    created it first: read it and go on).

    Raises:
        ConfigError: the ARN (or SSO permission set) is already mapped under the same key, or
            that key's YAML does not parse (it is left as it is).
        Conflict: aws-auth changed under every one of the `tries` attempts.
        KubeError: any other API failure (401, 403, ...).
    """
    import trio

    last: Conflict | None = None
    for attempt in range(1, tries + 1):
        if attempt > 1:
            await trio.sleep(RETRY_PAUSE)
        try:
            current = await client.get(PATH)
        except NotFound:
            created = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": OBJECT, "namespace": NAMESPACE},
                "data": {mapping.key: _dump([mapping.entry()])},
            }
            try:
                stored = await client.create(COLLECTION, created)
            except Conflict as exc:
                last = exc
                continue
            return Outcome(stored, attempt, (f"{NAMESPACE}/{OBJECT} did not exist: created it",))
        data = current.get("data")
        data = dict(data) if isinstance(data, Mapping) else {}
        text, notes = appended(data, mapping)
        current["data"] = {**data, mapping.key: text}
        try:
            stored = await client.replace(PATH, current)
        except Conflict as exc:
            last = exc
            continue
        return Outcome(stored, attempt, notes)
    assert last is not None
    raise Conflict(
        f"{NAMESPACE}/{OBJECT} kept changing: gave up after {tries} conflicting updates "
        f"({last.detail})",
        verb="replace",
        path=PATH,
        status=409,
    )


def appended(data: Mapping[str, Any], mapping: NewMapping) -> tuple[str, tuple[str, ...]]:
    """The new text of `mapping.key`: the old text with the entry's YAML appended.

    Returns:
        The text, and notes (a key re-encoded because it could not be appended to).

    Raises:
        ConfigError: the key does not parse, or already maps the ARN (compared lower-cased, as
            the EKSConfigMap backend compares) or the same SSO permission set.
    """
    import yaml

    from authd.mapping.configmap import parse_configmap

    source = f"configmap/{NAMESPACE}/{OBJECT}"
    old = data.get(mapping.key)
    parse_configmap({mapping.key: old} if old is not None else {})  # refuses broken YAML
    text = old if isinstance(old, str) else ""
    entries = [] if text.strip() in _EMPTY else (yaml.safe_load(text) or [])
    duplicate = _duplicate(entries, mapping)
    if duplicate is not None:
        what = "SSO permission set" if mapping.sso else f"{mapping.kind} ARN"
        raise ConfigError(
            f"{source}: data.{mapping.key}[{duplicate}] already maps {what} "
            f"{mapping.arn or dict(mapping.sso)}; cannot add a duplicate",
            path=source,
            key=f"data.{mapping.key}[{duplicate}]",
        )
    entry = mapping.entry()
    block = _dump([entry])
    if text.strip() in _EMPTY:
        return block, ()
    wanted = [*entries, entry]
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is None or (isinstance(node, yaml.SequenceNode) and not node.flow_style):
        indent = " " * (node.start_mark.column if node is not None else 0)
        lines = block.splitlines(keepends=True)
        candidate = (text if text.endswith("\n") else text + "\n") + "".join(
            indent + line for line in lines
        )
        if yaml.safe_load(candidate) == wanted:
            return candidate, ()
    note = f"data.{mapping.key} could not be appended to as written; it was re-encoded"
    return _dump(wanted), (note,)


def _duplicate(entries: Sequence[Any], mapping: NewMapping) -> int | None:
    """The index of an entry that already maps the same ARN or SSO permission set, or None."""
    arn_key = "userarn" if mapping.kind == "user" else "rolearn"
    wanted_sso = _folded(mapping.sso)
    for index, raw in enumerate(entries):
        if not isinstance(raw, Mapping):
            continue
        entry = {str(k).lower(): v for k, v in raw.items()}
        if mapping.arn and str(entry.get(arn_key) or "").lower() == mapping.arn.lower():
            return index
        sso = entry.get("sso")
        if mapping.sso and isinstance(sso, Mapping) and _folded(sso) == wanted_sso:
            return index
    return None


def _folded(sso: Mapping[Any, Any]) -> dict[str, str]:
    """An SSO block compared without regard to case, partition defaulting to aws."""
    folded = {str(k).lower(): str(v).lower() for k, v in sso.items()}
    folded.setdefault("partition", "aws")
    return folded


def _sso(text: str) -> dict[str, str]:
    """`--sso permissionSetName=X,accountID=Y[,partition=Z]` as a dict (partition: aws)."""
    if not text:
        return {}
    values: dict[str, str] = {}
    for pair in text.split(","):
        name, sep, value = pair.partition("=")
        if not sep or name.strip() not in _SSO_KEYS:
            raise UsageError(f"--sso: expected {'=..., '.join(_SSO_KEYS)}=..., got {pair!r}")
        values[name.strip()] = value.strip()
    for required in _SSO_KEYS[:2]:
        if not values.get(required):
            raise UsageError(f"required key '{required}' missing from --sso flag")
    values.setdefault("partition", "aws")
    return values


def _dump(entries: list[dict[str, Any]]) -> str:
    import yaml

    return yaml.safe_dump(entries, sort_keys=False, default_flow_style=False, width=1 << 16)


def _without_location(exc: ConfigError) -> str:
    """A rejected entry's message without the `configmap/...:1: data.mapRoles[0]` prefix."""
    text = str(exc)
    return text.split(": ", 2)[-1] if text.startswith("configmap/") else text


def _confirm(mapping: NewMapping) -> bool:
    """Ask on the terminal, as upstream's prompt does; only "y"/"yes" goes on."""
    answer = input(f'Ready to add "{mapping.describe()}", should we continue? [y/N] ')
    return answer.strip().lower() in ("y", "yes")


def _flag_bool(text: str) -> bool:
    """Go's flag syntax for booleans: `--prompt`, `--prompt=true`, `--prompt=false`."""
    try:
        return parse_bool(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid boolean value {text!r}") from exc
