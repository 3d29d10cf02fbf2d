"""Fuzzing of what authd reads from files and from Kubernetes objects (docs/RELIABILITY.md).

The config file, the DynamicFile, the aws-auth ConfigMap's `data`, IAMIdentityMapping objects,
and the reloader's handling of a version that does not parse. Strategies start from documents
of the right shape, with values of any type and known keys in any case, then render them as
YAML or JSON and sometimes damage the bytes; plain random text and bytes are mixed in.
Shared by tests/test_fuzz_files.py and bench/fuzz.py through tests/fuzzing.py's `run`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st
from structlog.testing import capture_logs

from authd.config import FileConfig, MappingConfig, ServerSettings
from authd.config.file import _SERVER_KEYS, _TOP_KEYS
from authd.errors import ConfigError
from authd.identity import Identity
from authd.mapping import MappingTable
from authd.mapping.chain import Backend
from authd.mapping.configmap import parse_configmap
from authd.mapping.crd import parse_mappings
from authd.mapping.dynamicfile import DynamicFileTable
from authd.mapping.lint import KindError, lint_text
from authd.metrics import Metrics
from authd.server.reload import load_now
from authd.server.targets import ConfigTarget, DynamicTarget
from tests.fuzzing import write_atomically

ARNS = [
    "arn:aws:iam::123456789012:role/Admin",
    "arn:aws:iam::123456789012:role/path/to/Admin",
    "arn:aws:iam::123456789012:user/Alice",
    "arn:aws:sts::123456789012:assumed-role/Admin/session",
    "arn:aws-cn:iam::123456789012:role/X",
    "arn:aws:iam::123456789012:role/aws-reserved/sso.amazonaws.com/AWSReservedSSO_A_0123",
    "arn:aws:iam::12345678901:role/short",
    "arn:aws:iam:::role/none",
    "arn:aws:iam::123456789012:",
    "arn:",
    "ARN:AWS:IAM::123456789012:ROLE/UPPER",
]
WORDS = [
    "",
    "~",
    "null",
    "system:masters",
    "system:node:{{EC2PrivateDNSName}}",
    "{{SessionName}}",
    "{{SessionNameRaw}}",
    "{{AccountID}}",
    "{{AccessKeyID}}",
    "{{Unknown}}",
    "{{",
    "123456789012",
    "MountedFile",
    "DynamicFile",
    "EKSConfigMap",
    "CRD",
    "10s",
    "-1",
    "1e309",
    "0x10",
    "https://sts.example.com",
    "http://127.0.0.1:1",
    "SSORoleMatch=true",
    "\u00e9\u212a",
]
ENTRY_KEYS = ["rolearn", "userarn", "username", "groups", "userid", "sso", "SSO", "RoleArn"]
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.sampled_from(WORDS + ARNS),
    st.text(max_size=20),
)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = st.sampled_from(ENTRY_KEYS) | st.text(max_size=8)
    return st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4)


VALUES = st.recursive(_SCALARS, _containers, max_leaves=10)
ENTRY = st.dictionaries(
    st.sampled_from(ENTRY_KEYS), st.one_of(st.sampled_from(ARNS + WORDS), VALUES), max_size=5
)
ENTRIES = st.one_of(st.lists(ENTRY, max_size=4), VALUES)
_YAML_TRICKS = [
    "a: &x [1, 2]\nb: [*x, *x, *x]\n",
    "a: *nowhere\n",
    "!!python/object:os.system {}\n",
    "? [a, b]\n: c\n",
    "a: 1\na: 2\n",
    "--- 1\n--- 2\n",
    "\t- tab\n",
    "[" * 200 + "]" * 200,
    "<<: {a: 1}\n",
    "server: !!binary aGVsbG8=\n",
    "clusterID: [a, b]\nserver: ~\n",
]
IDENTITIES = [
    Identity(
        arn="arn:aws:iam::123456789012:user/Alice",
        canonical_arn="arn:aws:iam::123456789012:user/Alice",
        account_id="123456789012",
        user_id="AIDAALICE",
        session_name="",
        access_key_id="AKIAALICE",
    ),
    Identity(
        arn="arn:aws:sts::123456789012:assumed-role/Admin/session",
        canonical_arn="arn:aws:iam::123456789012:role/Admin",
        account_id="123456789012",
        user_id="AROAADMIN:session",
        session_name="session",
        access_key_id="ASIAADMIN",
    ),
]


def _keyed(draw: st.DrawFn, keys: list[str] | tuple[str, ...], value: Any) -> dict[str, Any]:
    """A mapping of some of `keys` (each maybe in another case) to drawn values."""
    chosen = draw(st.lists(st.sampled_from(list(keys)), max_size=6, unique=True))
    spell: st.SearchStrategy[Callable[[str], str]] = st.sampled_from([str, str.lower, str.upper])
    return {draw(spell)(key): draw(value) for key in chosen}


def _render(draw: st.DrawFn, doc: Any) -> bytes:
    """`doc` as YAML or JSON text, sometimes with bytes changed, cut or inserted."""
    if draw(st.booleans()):
        text = json.dumps(doc)
    else:
        text = yaml.safe_dump(doc, allow_unicode=draw(st.booleans()))
    data = text.encode()
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        index = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "replace", "cut"]))
        piece = draw(
            st.sampled_from([b"\x00", b"\xff", b":", b"-", b"\n", b"\t", b"{", b"'", b"&a"])
        )
        data = data[:index] + (b"" if op == "cut" else piece) + data[index + (op != "insert") :]
    return data


@st.composite
def config_files(draw: st.DrawFn) -> bytes:
    """`--config` file versions: known keys with values of any type, then damaged."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=300))
    if kind == 1:
        return draw(st.sampled_from(_YAML_TRICKS)).encode()
    top = _keyed(draw, _TOP_KEYS, VALUES)
    server = _keyed(draw, _SERVER_KEYS, VALUES)
    for key in ("mapRoles", "mapUsers", "mapAccounts", "reservedPrefixConfig"):
        if draw(st.booleans()):
            server[key] = draw(ENTRIES)
    top["server"] = server
    top.setdefault("clusterID", draw(st.sampled_from(["c", "", ["a", "b"], None])))
    return _render(draw, top)


def check_config(data: bytes) -> None:
    """Config bytes parse, resolve and lint, or fail with ConfigError (KindError for lint)."""
    for path in ("config.yaml", "config.json"):
        try:
            file = FileConfig.from_bytes(data, path=path)
            MappingConfig.from_file_config(file)
            settings = ServerSettings.resolve(flags={}, env={}, file=file)
        except ConfigError as exc:
            assert str(exc), "a ConfigError without a message"
            continue
        assert settings.cluster_ids and all(settings.cluster_ids)
    with suppress(KindError):
        lint_text(data.decode("utf-8", "replace"), src="config.yaml")


@st.composite
def dynamic_files(draw: st.DrawFn) -> bytes:
    """DynamicFile versions: JSON of the right shape, keys in any case, values of any type."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    doc = _keyed(draw, ["mapRoles", "mapUsers", "mapAccounts"], ENTRIES)
    doc.update(_keyed(draw, ["Version", "LastUpdatedDateTime"], VALUES))
    data = json.dumps(doc).encode()
    if draw(st.integers(0, 4)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return data


def check_dynamic_file(data: bytes) -> None:
    """A DynamicFile parses into a table that answers lookups, or fails with ConfigError."""
    for strict in (False, True):
        try:
            table = DynamicFileTable.from_bytes(
                data, path="dynamic.json", userid_strict=strict, refuse_bad_arns=strict
            )
        except ConfigError as exc:
            assert str(exc).startswith("dynamic.json"), str(exc)
            continue
        _lookups(table)


def _lookups(table: MappingTable) -> None:
    """A parsed table answers len() and lookups without raising."""
    assert len(table) >= 0
    for identity in IDENTITIES:
        table.lookup(identity)
        table.is_account_allowed(identity.account_id)


@st.composite
def configmap_data(draw: st.DrawFn) -> dict[str, object]:
    """aws-auth `data`: each key a YAML string of entries, damaged text, or not a string."""
    data: dict[str, object] = {}
    for key in draw(st.lists(st.sampled_from(["mapRoles", "mapUsers", "mapAccounts", "x"]))):
        data[key] = draw(
            st.one_of(
                ENTRIES.map(yaml.safe_dump),
                st.lists(st.sampled_from(ARNS + WORDS)).map(yaml.safe_dump),
                st.sampled_from([*_YAML_TRICKS, "", "``", '""', "''"]),
                st.text(max_size=80),
                VALUES,
            )
        )
    return data


def check_configmap(data: dict[str, object]) -> None:
    """The ConfigMap parses (bad entries left out and reported) or fails with ConfigError."""
    for sso in (False, True):
        try:
            version = parse_configmap(data, sso_role_match=sso, role_path_match=sso)
        except ConfigError as exc:
            assert (exc.key or "").startswith("data."), (exc.key, str(exc))
            continue
        assert all(isinstance(problem, ConfigError) for problem in version.rejected)
        _lookups(version.table)


@st.composite
def crd_objects(draw: st.DrawFn) -> dict[str, dict[str, Any]]:
    """IAMIdentityMapping objects by name: spec, status and metadata of any shape."""
    names = draw(st.lists(st.text(min_size=1, max_size=8), max_size=4, unique=True))
    objects: dict[str, dict[str, Any]] = {}
    for name in names:
        spec = _keyed(draw, ["arn", "username", "groups"], st.sampled_from(ARNS + WORDS) | VALUES)
        obj: dict[str, Any] = {"spec": draw(st.one_of(st.just(spec), VALUES))}
        if draw(st.booleans()):
            obj["status"] = draw(st.one_of(st.just({"canonicalARN": spec.get("arn")}), VALUES))
        if draw(st.booleans()):
            obj["metadata"] = draw(VALUES)
        objects[name] = obj
    return objects


def check_crd(objects: dict[str, dict[str, Any]]) -> None:
    """Any objects make a table: a malformed one is refused alone, nothing raises."""
    for role_path_match in (False, True):
        version = parse_mappings(objects, role_path_match=role_path_match)
        assert len(version.rejected) + len(version.writes) <= len(objects)
        _lookups(version.table)


# ---------------------------------------------------------------------------------------------
# The reloader keeps the last good snapshot

GOOD_CONFIG = b"""\
clusterID: fuzz-cluster
server:
  mapUsers:
  - userarn: arn:aws:iam::123456789012:user/Alice
    username: alice
"""
GOOD_DYNAMIC = (
    b'{"mapUsers": [{"userarn": "arn:aws:iam::123456789012:user/Alice", "username": "a"}]}'
)


class ReloadHarness:
    """The real ConfigTarget and DynamicTarget over real files, judged with `load_now`."""

    def __init__(self, directory: Path) -> None:
        self.config_path = directory / "config.yaml"
        self.dynamic_path = directory / "dynamic.json"
        write_atomically(self.config_path, GOOD_CONFIG)
        write_atomically(self.dynamic_path, GOOD_DYNAMIC)
        settings = ServerSettings(
            cluster_ids=("fuzz-cluster",),
            config_path=str(self.config_path),
            dynamicfile_path=str(self.dynamic_path),
        )
        metrics = Metrics(process_collector=False)
        self.mounted = Backend("MountedFile")
        self.dynamic = Backend("DynamicFile")
        self.targets = {
            "config": (
                self.config_path,
                ConfigTarget(
                    settings=settings, backends={"MountedFile": self.mounted}, metrics=metrics
                ),
                self.mounted,
            ),
            "dynamic": (
                self.dynamic_path,
                DynamicTarget(settings=settings, backend=self.dynamic, metrics=metrics),
                self.dynamic,
            ),
        }
        with capture_logs():
            self.targets["config"][1].load_start()  # type: ignore[attr-defined]
            for path, target, _ in self.targets.values():
                load_now(str(path), target)  # type: ignore[arg-type]
        assert self.mounted.table is not None and self.dynamic.table is not None

    def check(self, case: tuple[str, bytes]) -> None:
        """Write one version and judge it: a version that does not parse changes nothing."""
        name, data = case
        path, target, backend = self.targets[name]
        before = backend.table
        with capture_logs():
            try:
                parses = bool(data) and target.parse(data) is not None  # type: ignore[attr-defined]
            except ConfigError:
                parses = False
            write_atomically(path, data)
            load_now(str(path), target)  # type: ignore[arg-type]
        if parses:
            assert backend.table is not before and backend.ready, backend.problem
        else:
            assert backend.table is before, "a version that failed to parse was applied"
            assert not backend.ready and backend.problem, "the refusal was not reported"


def reload_versions() -> st.SearchStrategy[tuple[str, bytes]]:
    """Versions for either file: mostly broken, sometimes good."""
    return st.one_of(
        st.tuples(st.just("config"), config_files() | st.just(GOOD_CONFIG) | st.just(b"")),
        st.tuples(st.just("dynamic"), dynamic_files() | st.just(GOOD_DYNAMIC) | st.just(b"")),
    )


@contextmanager
def reload_harness() -> Iterator[ReloadHarness]:
    """A ReloadHarness in a temporary directory removed after the block."""
    with tempfile.TemporaryDirectory(prefix="authd-fuzz-") as directory:
        yield ReloadHarness(Path(directory))
