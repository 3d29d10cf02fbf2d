"""`authd explain`, `verify --config` over the whole chain, and the RolePathMatch gate."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from authd.cli import main
from authd.cli.explain import render_text
from authd.config import FeatureGates, FileConfig, MappingConfig
from authd.errors import ConfigError
from authd.identity import Identity
from authd.mapping.explain import SourceEntry, hints
from authd.mapping.file import MountedFileTable
from tests.daemon import base_env
from tests.fakes.sts_standin import StsStandIn

DOCS = Path(__file__).resolve().parent.parent / "docs" / "troubleshooting.md"
ACCOUNT = "111122223333"
CONFIG = f"""\
clusterID: demo
server:
  mapRoles:
  - rolearn: arn:aws:iam::{ACCOUNT}:role/Admin
    username: "admin:{{{{SessionName}}}}"
    groups: [system:masters, "acct-{{{{AccountID}}}}"]
  - rolearn: arn:aws:iam::{ACCOUNT}:role/teams/Deploy
    username: deploy
  mapUsers:
  - userarn: arn:aws:iam::{ACCOUNT}:user/Alice
    username: alice
  mapAccounts:
  - "999988887777"
"""


def _explain(
    capsys: pytest.CaptureFixture[str], *argv: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run `authd explain ARGV` in-process; (exit code, stdout, stderr)."""
    code = main(["explain", *argv], env or {})
    out = capsys.readouterr()
    return code, out.out, out.err


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = _explain(capsys, "-o", "json", *argv)
    return code, json.loads(out)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """The config file above, written to a temporary directory."""
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return path


def test_allowed_role_session_names_entry_line_and_renders_username(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    """An assumed-role ARN is allowed by its role entry: file:line, rendered username and groups."""
    arn = f"arn:aws:sts::{ACCOUNT}:assumed-role/Admin/alice@example.com"
    code, report = _json(capsys, "--config", str(config), arn)
    assert code == 0
    assert report == {
        "arn": arn,
        "canonicalArn": f"arn:aws:iam::{ACCOUNT}:role/Admin",
        "allowed": True,
        "backend": "MountedFile",
        "entry": {"source": f"{config}:4", "kind": "mapRoles"},
        "username": "admin:alice-example.com",
        "groups": ["system:masters", f"acct-{ACCOUNT}"],
        "reason": "ok",
        "error": None,
        "hints": [],
        "skipped": [],
    }


def test_user_and_account_entries_are_located(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    """A user ARN (matched ignoring case) points at its userarn line; mapAccounts at its line."""
    code, report = _json(capsys, "--config", str(config), f"arn:aws:iam::{ACCOUNT}:user/alice")
    assert (code, report["entry"], report["username"]) == (
        0,
        {"source": f"{config}:10", "kind": "mapUsers"},
        "alice",
    )
    arn = "arn:aws:iam::999988887777:user/bob"
    code, report = _json(capsys, "--config", str(config), arn)
    assert (code, report["entry"], report["username"], report["groups"]) == (
        0,
        {"source": f"{config}:13", "kind": "mapAccounts"},
        arn,
        [],
    )


def test_human_output_names_file_line_and_username(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    """The text form shows the entry as file:line and the rendered username."""
    arn = f"arn:aws:sts::{ACCOUNT}:assumed-role/Admin/bob"
    code, out, _ = _explain(capsys, "--config", str(config), arn)
    assert code == 0
    assert f"entry:     {config}:4 (mapRoles)" in out.splitlines()
    assert "username:  admin:bob" in out.splitlines()


def test_role_path_hint_and_the_gate_that_makes_it_match(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    """A role entry with a path denies with a role_path hint; RolePathMatch=true then allows."""
    arn = f"arn:aws:sts::{ACCOUNT}:assumed-role/Deploy/ci"
    code, report = _json(capsys, "--config", str(config), arn)
    assert (code, report["allowed"], report["reason"]) == (1, False, "not_mapped")
    assert [(h["code"], h["source"]) for h in report["hints"]] == [("role_path", f"{config}:7")]
    code, report = _json(capsys, "--config", str(config), "--feature-gates=RolePathMatch=true", arn)
    assert (code, report["username"], report["entry"], report["hints"]) == (
        0,
        "deploy",
        {"source": f"{config}:7", "kind": "mapRoles"},
        [],
    )


def test_bad_input_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    """An ARN that does not parse or a missing file: exit 2, one stderr line naming it, no JSON."""
    code, out, err = _explain(capsys, "-o", "json", "--config", str(config), "arn:aws:nope")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "'arn:aws:nope'" in err
    missing = str(config.parent / "missing.yaml")
    code, out, err = _explain(capsys, "--config", missing, f"arn:aws:iam::{ACCOUNT}:user/Alice")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and missing in err and "Traceback" not in err
    code, out, err = _explain(capsys, "--config", str(config))
    assert code == 2 and "ARN" in err


def test_dynamicfile_in_the_chain_and_kubernetes_backends_skipped(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    """`--backend-mode` runs the chain in order: a DynamicFile entry is found with its line, the
    MountedFile one wins when it comes first, and EKSConfigMap is listed as skipped."""
    dynamic = tmp_path / "dynamic.json"
    dynamic.write_text(
        json.dumps(
            {
                "mapRoles": [
                    {"rolearn": f"arn:aws:iam::{ACCOUNT}:role/Admin", "username": "dyn-admin"},
                    {"rolearn": f"arn:aws:iam::{ACCOUNT}:role/Builder", "username": "builder"},
                ]
            },
            indent=2,
        )
    )
    arn = f"arn:aws:sts::{ACCOUNT}:assumed-role/Builder/b"
    flags = ["--config", str(config), "--dynamicfile-path", str(dynamic)]
    code, report = _json(
        capsys, *flags, "--backend-mode", "MountedFile,EKSConfigMap,DynamicFile", arn
    )
    assert (code, report["backend"], report["username"], report["skipped"]) == (
        0,
        "DynamicFile",
        "builder",
        ["EKSConfigMap"],
    )
    assert report["entry"] == {"source": f"{dynamic}:8", "kind": "mapRoles"}
    admin = f"arn:aws:sts::{ACCOUNT}:assumed-role/Admin/a"
    _, first = _json(capsys, *flags, "--backend-mode", "DynamicFile MountedFile", admin)
    _, second = _json(capsys, *flags, "--backend-mode", "MountedFile,DynamicFile", admin)
    assert (first["username"], first["entry"]["source"]) == ("dyn-admin", f"{dynamic}:4")
    assert (second["username"], second["entry"]["source"]) == ("admin:a", f"{config}:4")


def test_reserved_prefix_is_the_review_reason(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A matched entry whose username is reserved is denied with reason reserved_prefix."""
    path = tmp_path / "c.yaml"
    path.write_text(
        "clusterID: demo\nserver:\n  reservedPrefixConfig:\n  - backendMode: MountedFile\n"
        "    usernamePrefixReserveList: ['aws:']\n  mapUsers:\n"
        f"  - userarn: arn:aws:iam::{ACCOUNT}:user/Mallory\n    username: aws:admin\n"
    )
    code, report = _json(capsys, "--config", str(path), f"arn:aws:iam::{ACCOUNT}:user/Mallory")
    assert (code, report["allowed"], report["reason"]) == (1, False, "reserved_prefix")
    assert "aws:admin" in report["error"]


def _entry(arn: str, line: int) -> SourceEntry:
    return SourceEntry(backend="MountedFile", kind="mapRoles", arn=arn, source=f"c.yaml:{line}")


def _codes(caller: str, *arns: str) -> list[tuple[str, str]]:
    entries = [_entry(a, i) for i, a in enumerate(arns, 1)]
    return [(h.code, h.source) for h in hints(caller, entries)]


def test_hints_are_near_misses_only() -> None:
    """Each hint kind fires on its exact near miss, and unrelated names give none."""
    me = f"arn:aws:iam::{ACCOUNT}:role/Platform-Admins"
    assert _codes(me, "arn:aws:iam::444455556666:role/Platform-Admins") == [
        ("other_account", "c.yaml:1")
    ]
    assert _codes(me, f"arn:aws:iam::{ACCOUNT}:role/a/b/Platform-Admins") == [
        ("role_path", "c.yaml:1")
    ]
    assert _codes(me, f"arn:aws:iam::{ACCOUNT}:role/Platform-Admin") == [
        ("similar_name", "c.yaml:1")
    ]
    assert _codes(me, f"arn:aws:iam::{ACCOUNT}:role/Platfrom-Admins") == [
        ("similar_name", "c.yaml:1")
    ]
    unrelated = (
        f"arn:aws:iam::{ACCOUNT}:role/Platform-Readers",
        f"arn:aws:iam::{ACCOUNT}:user/Platform-Admins",
        "arn:aws:iam::444455556666:role/Platform-Admin",
        f"arn:aws:iam::{ACCOUNT}:role/ops/Platform-Admin",
        "arn:aws-cn:iam::111122223333:role/Platform-Admins",
    )
    assert _codes(me, *unrelated) == []
    assert _codes(f"arn:aws:iam::{ACCOUNT}:role/Dev", f"arn:aws:iam::{ACCOUNT}:role/Ops") == []


def test_sso_suffix_hint_only_for_the_same_permission_set() -> None:
    """A new Identity Center suffix hints sso_suffix; another permission set gives nothing."""
    me = f"arn:aws:iam::{ACCOUNT}:role/AWSReservedSSO_Dev_fedcba9876543210"
    same_set = f"arn:aws:iam::{ACCOUNT}:role/AWSReservedSSO_Dev_0123456789abcdef"
    other_set = f"arn:aws:iam::{ACCOUNT}:role/AWSReservedSSO_Ops_0123456789abcdef"
    assert _codes(me, same_set, other_set) == [("sso_suffix", "c.yaml:1")]
    [hint] = hints(me, [_entry(same_set, 1)])
    assert "permission set Dev with suffix 0123456789abcdef" in hint.message
    assert "fedcba9876543210" in hint.message


def test_role_path_hint_is_silent_with_the_gate_on() -> None:
    """With RolePathMatch on, an entry with a path is a match, not a near miss."""
    me = f"arn:aws:iam::{ACCOUNT}:role/Deploy"
    entries = [_entry(f"arn:aws:iam::{ACCOUNT}:role/teams/Deploy", 3)]
    assert hints(me, entries, role_path_match=True) == ()


def _table(text: str, **gates: bool) -> MountedFileTable:
    mapping = MappingConfig.from_file_config(FileConfig.from_text(text, path="c.yaml"))
    return MountedFileTable.from_config(mapping, **gates)


def _role_identity(role: str, account: str = ACCOUNT) -> Identity:
    return Identity(
        arn=f"arn:aws:sts::{account}:assumed-role/{role}/s",
        canonical_arn=f"arn:aws:iam::{account}:role/{role}",
        account_id=account,
        user_id="AROA",
        session_name="s",
        access_key_id="AKIA",
    )


def test_role_path_match_gate_in_the_table() -> None:
    """Off: a role entry with a path never matches a session; on: it does, the later of two
    entries for one role wins, only that account's role matches, and len() is unchanged."""
    text = (
        "server:\n  mapRoles:\n"
        f"  - rolearn: arn:aws:iam::{ACCOUNT}:role/teams/Deploy\n    username: first\n"
        f"  - rolearn: arn:aws:iam::{ACCOUNT}:role/Deploy\n    username: second\n"
        f"  - rolearn: arn:aws:iam::{ACCOUNT}:role/x/Build\n    username: build\n"
    )
    off, on = _table(text), _table(text, role_path_match=True)
    assert off.lookup(_role_identity("Build")) is None
    build = on.lookup(_role_identity("Build"))
    assert build is not None and build.username == "build"
    deploy = on.lookup(_role_identity("Deploy"))
    assert deploy is not None and deploy.username == "second"
    assert on.lookup(_role_identity("Build", "444455556666")) is None
    assert len(on) == len(off) == 3


def test_gate_is_named_role_path_match_and_off_by_default() -> None:
    """`RolePathMatch` parses, is off by default, and `enabled()` reads gates by name."""
    assert not FeatureGates().role_path_match
    gates = FeatureGates.parse("RolePathMatch=true")
    assert gates.role_path_match and gates.enabled("RolePathMatch")
    assert not gates.enabled("SSORoleMatch")
    with pytest.raises(ConfigError, match="unrecognized feature gate: Nope"):
        gates.enabled("Nope")


def test_token_is_verified_through_sts_then_explained(tmp_path: Path, config: Path) -> None:
    """`--token` goes to STS through `--extra-sts-endpoint` and explains the identity it returns;
    a token STS refuses is a denial with reason sts_rejected (exit 1)."""
    standin = StsStandIn(
        identity={"Arn": f"arn:aws:iam::{ACCOUNT}:user/Alice", "Account": ACCOUNT, "UserId": "AIDA"}
    ).start()
    try:
        argv = ["--config", str(config), f"--extra-sts-endpoint={standin.url}", "-o", "json"]
        out = _run(["explain", "--token", standin.token(), *argv])
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert (report["arn"], report["username"], report["entry"]["source"]) == (
            f"arn:aws:iam::{ACCOUNT}:user/Alice",
            "alice",
            f"{config}:10",
        )
        assert standin.calls() == 1
        standin.accept_cluster_ids = {"another-cluster"}
        out = _run(["explain", "--token", standin.token(), *argv])
        assert out.returncode == 1, out.stderr
        assert json.loads(out.stdout)["reason"] == "sts_rejected"
    finally:
        standin.stop()


def test_verify_config_runs_the_whole_chain(tmp_path: Path, config: Path) -> None:
    """`verify --config` maps through DynamicFile when --backend-mode names it (it used to run
    MountedFile alone) and lists a skipped Kubernetes backend."""
    dynamic = tmp_path / "dynamic.json"
    dynamic.write_text(
        json.dumps(
            {"mapUsers": [{"userarn": f"arn:aws:iam::{ACCOUNT}:user/Carol", "username": "c"}]}
        )
    )
    standin = StsStandIn(
        identity={"Arn": f"arn:aws:iam::{ACCOUNT}:user/Carol", "Account": ACCOUNT, "UserId": "AIDC"}
    ).start()
    try:
        argv = [
            "verify",
            "-t",
            standin.token(),
            "-o",
            "json",
            f"--config={config}",
            f"--extra-sts-endpoint={standin.url}",
            f"--dynamicfile-path={dynamic}",
            "--backend-mode=MountedFile,CRD,DynamicFile",
        ]
        out = _run(argv)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["Mapping"] == {
            "Allowed": True,
            "Backend": "DynamicFile",
            "Username": "c",
            "Groups": [],
            "Skipped": ["CRD"],
        }
    finally:
        standin.stop()


def _run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authd", *argv],
        env=base_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _doc_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOCS.read_text(), flags=re.S)


def test_every_command_in_troubleshooting_md_runs_as_documented(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each `authd explain` line of docs/troubleshooting.md, run on its config file, exits as
    its comment says and prints what the comment names (hint code and line, username)."""
    [config] = _doc_blocks("yaml")
    (tmp_path / "config.yaml").write_text(config)
    monkeypatch.chdir(tmp_path)
    [block] = _doc_blocks("sh")
    lines = [line for line in block.splitlines() if line.strip()]
    assert len(lines) >= 8
    for line in lines:
        command, _, comment = line.partition("  # ")
        argv = shlex.split(command)
        assert argv[0] == "authd"
        expected = re.match(r"exit (\d)(?:: (.*))?", comment)
        assert expected is not None, line
        code, out, err = _explain(capsys, *argv[2:])
        assert code == int(expected.group(1)), (line, out, err)
        if "-o" in argv and code != 2:
            out = render_text(json.loads(out))
        for claim in (expected.group(2) or "").split(", "):
            if claim:
                assert claim.removeprefix("entry ") in out, (line, claim, out)
