"""`authd validate`: every rule, on real files of every kind, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from authd.cli import main
from authd.mapping.lint import lint_text

ACCOUNT = "111122223333"
ROLE = f"arn:aws:iam::{ACCOUNT}:role"

CONFIG = f"""\
clusterID: test
server:
  mapRoles:
  - rolearn: {ROLE}/team/Admin
    username: admin:{{{{SessionNme}}}}
    groups:
    - system:masters
  - roleARN: arn:aws:sts::{ACCOUNT}:assumed-role/Dev/sess
    username: dev
    group: [x]
  - rolearn: arn:aws:iam::{ACCOUNT}:user/alice
    username: alice
  - rolearn: not-an-arn
  - rolearn: arn:aws:iam::1111:role/Short
  - rolearn: {ROLE}/dev
    username: dev-again
  mapUsers:
  - userarn: {ROLE}/Ops
    username: ops
  mapAccounts:
  - "{ACCOUNT}"
"""

AWS_AUTH = f"""\
apiVersion: v1
kind: ConfigMap
metadata:
  name: aws-auth
  namespace: kube-system
data:
  mapRoles: |
    - rolearn: {ROLE}/node
      username: system:node:{{{{EC2PrivateDNSName}}}}
      groups: [system:bootstrappers, system:nodes]
    - rolearn: arn:aws:sts::{ACCOUNT}:assumed-role/Dev/s
      username: dev
    - rolearn: {ROLE}/NODE
      username: node-again
  mapusers: |
    - userarn: arn:aws:iam::{ACCOUNT}:user/bob
"""

CRDS = f"""\
apiVersion: iamauthenticator.k8s.aws/v1alpha1
kind: IAMIdentityMapping
metadata:
  name: admin
spec:
  arn: arn:aws:sts::{ACCOUNT}:assumed-role/Admin/x
  username: admin
  groups:
  - system:masters
---
apiVersion: iamauthenticator.k8s.aws/v1alpha1
kind: IAMIdentityMapping
metadata:
  name: broken
spec:
  arn: arn:aws:iam::{ACCOUNT}:nothing/x
  username: "{{{{Account}}}}"
"""

DYNAMIC = json.dumps(
    {
        "Version": "1",
        "mapRoles": [
            {"rolearn": f"{ROLE}/a/b", "username": "x"},
            {"roleARN": f"{ROLE}/Dyn", "username": "dyn"},
            {"rolearn": f"{ROLE}/dyn", "username": "dyn2", "groups": ["system:masters"]},
        ],
        "mapUsers": [{"userarn": f"arn:aws:iam::{ACCOUNT}:user/carol", "usrname": "c"}],
    },
    indent=2,
)


def validate(
    capsys: pytest.CaptureFixture[str], *args: str, json_out: bool = True
) -> tuple[int, Any, str]:
    """Run `authd validate ARGS` in-process: exit code, parsed (or raw) stdout, stderr."""
    code = main(["validate", *args, *(["-o", "json"] if json_out else [])], {})
    out, err = capsys.readouterr()
    return code, (json.loads(out) if json_out and out else out), err


def rows(document: dict[str, Any]) -> list[tuple[str, int, str, str, str]]:
    """(file name, line, key, rule, severity) of every finding, in printed order."""
    return [
        (Path(f["file"]).name, f["line"], f["key"], f["rule"], f["severity"])
        for f in document["findings"]
    ]


def write(tmp_path: Path, name: str, text: str) -> str:
    """Write a file in the test's directory and return its path."""
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_config_file_every_rule_with_exact_lines_and_key_paths(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A config file reports each problem once, at the line and full key path it concerns."""
    code, doc, err = validate(capsys, write(tmp_path, "config.yaml", CONFIG))
    assert code == 1 and err == ""
    assert rows(doc) == [
        ("config.yaml", 4, "server.mapRoles[0].rolearn", "role_path", "error"),
        ("config.yaml", 5, "server.mapRoles[0].username", "unknown_placeholder", "error"),
        ("config.yaml", 6, "server.mapRoles[0].groups", "system_masters", "warning"),
        ("config.yaml", 8, "server.mapRoles[1].roleARN", "assumed_role_arn", "warning"),
        ("config.yaml", 10, "server.mapRoles[1].group", "unknown_key", "warning"),
        ("config.yaml", 11, "server.mapRoles[2].rolearn", "wrong_arn_kind", "warning"),
        ("config.yaml", 13, "server.mapRoles[3].rolearn", "invalid_arn", "error"),
        ("config.yaml", 14, "server.mapRoles[4].rolearn", "invalid_arn", "error"),
        ("config.yaml", 15, "server.mapRoles[5].rolearn", "duplicate_arn", "warning"),
        ("config.yaml", 18, "server.mapUsers[0].userarn", "wrong_arn_kind", "warning"),
        ("config.yaml", 20, "server.mapAccounts", "map_accounts", "warning"),
    ]
    assert (doc["errors"], doc["warnings"]) == (4, 7)
    duplicate = doc["findings"][8]["message"]
    assert "line 8" in duplicate and f"{ROLE}/dev".lower() in duplicate


def test_aws_auth_lines_include_the_block_scalar_offset(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Inside aws-auth, lines are the file's own and an assumed-role ARN is an error."""
    code, doc, _ = validate(capsys, write(tmp_path, "aws-auth.yaml", AWS_AUTH))
    assert code == 1
    assert rows(doc) == [
        ("aws-auth.yaml", 11, "data.mapRoles[1].rolearn", "assumed_role_arn", "error"),
        ("aws-auth.yaml", 13, "data.mapRoles[2].rolearn", "duplicate_arn", "warning"),
        ("aws-auth.yaml", 15, "data.mapusers", "unknown_key", "warning"),
    ]
    lines = AWS_AUTH.splitlines()
    assert "assumed-role/Dev/s" in lines[10] and "role/NODE" in lines[12]


def test_identity_mappings_several_documents_in_one_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """IAMIdentityMapping documents are linted each, with `spec.` key paths."""
    code, doc, _ = validate(capsys, write(tmp_path, "crds.yaml", CRDS))
    assert code == 1
    assert rows(doc) == [
        ("crds.yaml", 6, "spec.arn", "assumed_role_arn", "warning"),
        ("crds.yaml", 8, "spec.groups", "system_masters", "warning"),
        ("crds.yaml", 16, "spec.arn", "invalid_arn", "error"),
        ("crds.yaml", 17, "spec.username", "unknown_placeholder", "error"),
    ]


def test_dynamicfile_json_and_files_sorted_by_name_then_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A DynamicFile is told from its keys; findings of two files come sorted by file."""
    dynamic = write(tmp_path, "b-dynamic.json", DYNAMIC)
    crds = write(tmp_path, "a-crds.yaml", CRDS)
    _, doc, _ = validate(capsys, dynamic, crds)
    names = [r[0] for r in rows(doc)]
    assert names == sorted(names) and set(names) == {"a-crds.yaml", "b-dynamic.json"}
    dyn = [r[1:] for r in rows(doc) if r[0] == "b-dynamic.json"]
    assert dyn == [
        (5, "mapRoles[0].rolearn", "role_path", "error"),
        (13, "mapRoles[2].rolearn", "duplicate_arn", "warning"),
        (15, "mapRoles[2].groups", "system_masters", "warning"),
        (23, "mapUsers[0].usrname", "unknown_key", "warning"),
    ]


def test_a_clean_file_exits_0_and_warnings_exit_1_only_with_strict(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Exit codes: 0 clean, 0 warnings, 1 warnings with --strict; human output has a summary."""
    clean = write(tmp_path, "clean.yaml", f"server:\n  mapRoles:\n  - rolearn: {ROLE}/ok\n")
    warned = write(tmp_path, "warn.yaml", f"server:\n  mapAccounts: ['{ACCOUNT}']\n")
    assert validate(capsys, clean) == (0, {"findings": [], "errors": 0, "warnings": 0}, "")
    assert validate(capsys, warned)[0] == 0
    assert validate(capsys, warned, "--strict")[0] == 1
    code, out, _ = validate(capsys, warned, clean, json_out=False)
    assert code == 0
    assert out.splitlines() == [
        f"{warned}:2: warning: map_accounts: server.mapAccounts: mapAccounts admits every "
        "identity of the listed accounts",
        "2 files: 0 errors, 1 warning",
    ]


def test_syntax_error_is_one_finding_at_the_line_where_the_parser_stopped(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A file that does not parse is one `syntax` error with its line and an empty key."""
    broken = write(tmp_path, "broken.yaml", "server:\n  mapRoles:\n  - rolearn: a\n   x: : y\n")
    code, doc, _ = validate(capsys, broken)
    assert code == 1
    assert rows(doc) == [("broken.yaml", 4, "", "syntax", "error")]


def test_syntax_error_inside_an_aws_auth_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """YAML broken inside `data.mapRoles` is reported at the file's line, key `data.mapRoles`."""
    text = AWS_AUTH.replace("  username: dev\n", "  username: [dev\n")
    code, doc, _ = validate(capsys, write(tmp_path, "aws-auth.yaml", text))
    assert code == 1
    assert ("aws-auth.yaml", 13, "data.mapRoles", "syntax", "error") in rows(doc)


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "cannot read"), ("just: text\n", "not a mapping source"), ("kind: Pod\n", "Pod")],
    ids=["missing", "unknown-kind", "other-manifest"],
)
def test_unreadable_or_unknown_files_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str | None, problem: str
) -> None:
    """A missing file or content of no known kind: exit 2, nothing on stdout, one stderr line."""
    path = str(tmp_path / "x.yaml") if content is None else write(tmp_path, "x.yaml", content)
    code, out, err = validate(capsys, path, json_out=False)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and path in err and problem in err


def test_role_path_is_not_reported_when_role_path_match_is_on() -> None:
    """With the RolePathMatch gate on, a role ARN with a path is no finding in the config file,
    aws-auth or an IAMIdentityMapping; the DynamicFile, which the gate does not reach, keeps it."""
    text = f"server:\n  mapRoles:\n  - rolearn: {ROLE}/team/Admin\n"
    assert [f.rule for f in lint_text(text, src="c.yaml")] == ["role_path"]
    assert lint_text(text, src="c.yaml", role_path_match=True) == []
    aws_auth = f"kind: ConfigMap\ndata:\n  mapRoles: |\n    - rolearn: {ROLE}/team/Admin\n"
    off = lint_text(aws_auth, src="a.yaml")
    assert [(f.line, f.rule) for f in off] == [(4, "role_path")]
    assert "RolePathMatch" in off[0].message
    assert lint_text(aws_auth, src="a.yaml", role_path_match=True) == []
    crd = f"kind: IAMIdentityMapping\nspec:\n  arn: {ROLE}/team/Admin\n"
    assert [f.rule for f in lint_text(crd, src="m.yaml")] == ["role_path"]
    assert lint_text(crd, src="m.yaml", role_path_match=True) == []
    dynamic = f'{{"mapRoles": [{{"rolearn": "{ROLE}/team/Admin", "username": "a"}}]}}'
    on = lint_text(dynamic, src="d.json", role_path_match=True)
    assert [f.rule for f in on] == ["role_path"]
    assert "RolePathMatch" not in on[0].message


def test_feature_gates_flag_turns_role_path_off_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`authd validate --feature-gates RolePathMatch=true` drops the config file's role_path."""
    path = write(tmp_path, "config.yaml", f"server:\n  mapRoles:\n  - rolearn: {ROLE}/team/Admin\n")
    code, document, _ = validate(capsys, path)
    assert (code, [f["rule"] for f in document["findings"]]) == (1, ["role_path"])
    code, document, _ = validate(capsys, path, "--feature-gates", "RolePathMatch=true")
    assert (code, document["findings"]) == (0, [])


def test_feature_gates_flag_turns_role_path_off_for_an_aws_auth_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On an aws-auth manifest, `--feature-gates RolePathMatch=true` drops role_path (at the
    file's own line) and leaves every other finding in place."""
    manifest = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: aws-auth\n  namespace: kube-system\n"
        "data:\n  mapRoles: |\n"
        f"    - rolearn: {ROLE}/teams/Deploy\n      username: deploy\n"
        f"    - rolearn: {ROLE}/Ops\n      username: ops\n      groups: [system:masters]\n"
    )
    path = write(tmp_path, "aws-auth.yaml", manifest)
    code, document, _ = validate(capsys, path)
    assert code == 1
    assert [(f["line"], f["rule"]) for f in document["findings"]] == [
        (8, "role_path"),
        (12, "system_masters"),
    ]
    code, document, _ = validate(capsys, path, "--feature-gates", "RolePathMatch=true")
    assert code == 0
    assert [(f["line"], f["rule"]) for f in document["findings"]] == [(12, "system_masters")]
