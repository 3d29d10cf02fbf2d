"""`authd diff OLD NEW`: who gains, loses or changes access between two mapping sources.

OLD and NEW are files, or the live cluster: `cluster:aws-auth` (the `kube-system/aws-auth`
ConfigMap) and `cluster:iamidentitymappings` (every IAMIdentityMapping), read through the API
server that `--kubeconfig` (`--kubeconfig-context`) or `--master` name, else in-cluster, as
the server connects. Exit codes (docs/validate.md): 0 the same, 1 they differ, 2 a source that
cannot be read (the API server included), does not parse, or would be refused whole by its
backend.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from authd.cli.validate import read_text
from authd.errors import ConfigError

if TYPE_CHECKING:
    from authd.mapping import Entry
    from authd.mapping.diff import Effective


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    """Register `diff` and its flags."""
    p = sub.add_parser("diff", parents=parents, help="compare the mappings of two sources")
    p.add_argument("old", metavar="OLD", help="the mapping source before")
    p.add_argument("new", metavar="NEW", help="the mapping source after")
    p.add_argument("-o", "--output", default=None, help="json for one JSON document")
    p.add_argument(
        "--kubeconfig", default="", help="kubeconfig for cluster:... sources (else in-cluster)"
    )
    p.add_argument("--kubeconfig-context", default="", help="kubeconfig context (else current)")
    p.add_argument("--master", "--master-url", dest="master", default="", help="API server URL")
    p.set_defaults(run=run, error_prefix="authd diff: ")


CLUSTER = "cluster:"
CLUSTER_SOURCES = ("cluster:aws-auth", "cluster:iamidentitymappings")


def _read(path: str, args: argparse.Namespace, env: Mapping[str, str]) -> Effective:
    """One source as its backend applies it; its parser's warnings go to stderr.

    Raises:
        ConfigError: the file (or the API server) cannot be read, is no mapping source, or is
            refused whole.
    """
    from authd.mapping.diff import effective  # the parser stays light for `authd token`
    from authd.mapping.lint import KindError

    if path.startswith(CLUSTER):
        source = _read_cluster(path, args, env)
    else:
        try:
            source = effective(read_text(path), src=path)
        except KindError as exc:
            raise ConfigError(f"{path}: {exc}", path=path) from exc
    for warning in source.warnings:
        print(f"authd diff: warning: {warning}", file=sys.stderr)
    return source


def _read_cluster(name: str, args: argparse.Namespace, env: Mapping[str, str]) -> Effective:
    """`cluster:aws-auth` or `cluster:iamidentitymappings`, read from the API server now.

    A missing aws-auth maps nobody (as the backend), with a warning.

    Raises:
        ConfigError: an unknown `cluster:` name, or the API server cannot be read.
    """
    import trio

    from authd.mapping.configmap import NAMESPACE, OBJECT, SOURCE
    from authd.mapping.crd import PATH
    from authd.mapping.diff import Effective, configmap_effective, identity_mappings_effective
    from authd.server.kube import KubeError, NotFound
    from authd.server.kube.connection import connection_from, open_client

    if name not in CLUSTER_SOURCES:
        raise ConfigError(f"{name}: unknown cluster source; use {' or '.join(CLUSTER_SOURCES)}")

    async def fetch() -> Effective:
        connection = connection_from(
            kubeconfig=args.kubeconfig,
            master=args.master,
            env=env,
            context=args.kubeconfig_context,
        )
        async with open_client(connection) as client:
            if name == "cluster:iamidentitymappings":
                return identity_mappings_effective((await client.list(PATH)).items)
            try:
                obj = await client.get(f"/api/v1/namespaces/{NAMESPACE}/configmaps/{OBJECT}")
            except NotFound:
                return Effective(mappings={}, kind="empty", warnings=(f"{SOURCE} does not exist",))
        data = obj.get("data") or {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{SOURCE}: data: expected a mapping", path=SOURCE, key="data")
        return configmap_effective(data, src=SOURCE)

    try:
        return trio.run(fetch)
    except KubeError as exc:
        raise ConfigError(f"{name}: {exc}", path=name) from exc


def _show(entry: Entry | None) -> str:
    """`username [groups]` for human output."""
    if entry is None:
        return "(none)"
    return f"username={entry.username!r} groups=[{', '.join(entry.groups)}]"


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Compare OLD and NEW; print the changes; exit 0 when the same, 1 when they differ."""
    from authd.mapping.diff import compare

    try:
        old, new = _read(args.old, args, env), _read(args.new, args, env)
    except ConfigError as exc:
        print(f"authd diff: {exc}", file=sys.stderr)
        return 2
    result = compare(old, new)
    if args.output == "json":
        print(json.dumps(result.as_json(), indent=2))
    elif not result.changes:
        print("no changes")
    else:
        marks = {"added": "+", "removed": "-", "changed": "~"}
        for change in result.changes:
            line = f"{marks[change.change]} {change.key} ({change.kind})"
            if change.change == "changed":
                line += f": {_show(change.before)} -> {_show(change.after)}"
            else:
                line += f": {_show(change.after or change.before)}"
            print(line)
        for key in result.loses_masters:
            print(f"loses system:masters: {key}")
        for key in result.gains_masters:
            print(f"gains system:masters: {key}")
    return 1 if result.changes else 0
