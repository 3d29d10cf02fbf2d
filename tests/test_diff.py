"""`authd diff`: two mapping sources compared as the backends apply them, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from authd.cli import main

ACCOUNT = "111122223333"
ROLE = f"arn:aws:iam::{ACCOUNT}:role"
USER = f"arn:aws:iam::{ACCOUNT}:user"

CONFIG = f"""\
clusterID: test
server:
  mapRoles:
  - rolearn: {ROLE}/Admin
    username: admin
    groups: [system:masters]
  - rolearn: {ROLE}/Dev
    username: old-dev
  - rolearn: {ROLE}/Dev
    username: dev
    groups: [devs, readers]
  mapUsers:
  - userarn: {USER}/Alice
    username: alice
  mapAccounts: ["{ACCOUNT}"]
"""

# The same mappings: other order, ARN case, key spelling and group order; no duplicate.
AWS_AUTH = f"""\
apiVersion: v1
kind: ConfigMap
metadata:
  name: aws-auth
  namespace: kube-system
data:
  mapUsers: |
    - userARN: {USER}/alice
      username: alice
  mapRoles: |
    - roleARN: {ROLE}/dev
      username: dev
      groups: [readers, devs]
    - rolearn: {ROLE}/Admin
      username: admin
      groups:
      - system:masters
  mapAccounts: |
    - "{ACCOUNT}"
"""


def diff(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `authd diff ARGS` in-process: exit code, stdout, stderr."""
    code = main(["diff", *args], {})
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, name: str, text: str) -> str:
    """Write a file in the test's directory and return its path."""
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def diff_json(capsys: pytest.CaptureFixture[str], old: str, new: str) -> tuple[int, Any]:
    """`authd diff OLD NEW -o json`: exit code and the one JSON document on stdout."""
    code, out, _ = diff(capsys, old, new, "-o", "json")
    return code, json.loads(out)


def test_a_config_file_and_an_aws_auth_with_the_same_mappings_have_no_changes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Order, ARN case, key spelling, group order and an overridden duplicate change nothing."""
    old, new = write(tmp_path, "config.yaml", CONFIG), write(tmp_path, "aws-auth.yaml", AWS_AUTH)
    assert diff_json(capsys, old, new) == (
        0,
        {"changes": [], "losesMasters": [], "gainsMasters": []},
    )
    assert diff(capsys, new, old) == (0, "no changes\n", "")


def test_added_removed_changed_and_masters_moves(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Each key that differs is listed once; masters losses and gains are named."""
    old = write(tmp_path, "old.yaml", CONFIG)
    changed = (
        CONFIG.replace("username: admin\n    groups: [system:masters]", "username: admin")
        .replace("groups: [devs, readers]", "groups: [devs, system:masters]")
        .replace(
            f"  - userarn: {USER}/Alice\n    username: alice\n",
            f"  - userarn: {USER}/bob\n    username: bob\n",
        )
    )
    new = write(tmp_path, "new.yaml", changed)
    code, doc = diff_json(capsys, old, new)
    assert code == 1
    assert doc["changes"] == [
        {
            "key": f"{ROLE}/admin".lower(),
            "kind": "role",
            "change": "changed",
            "before": {"username": "admin", "groups": ["system:masters"]},
            "after": {"username": "admin", "groups": []},
        },
        {
            "key": f"{ROLE}/dev".lower(),
            "kind": "role",
            "change": "changed",
            "before": {"username": "dev", "groups": ["devs", "readers"]},
            "after": {"username": "dev", "groups": ["devs", "system:masters"]},
        },
        {
            "key": f"{USER}/alice".lower(),
            "kind": "user",
            "change": "removed",
            "before": {"username": "alice", "groups": []},
            "after": None,
        },
        {
            "key": f"{USER}/bob".lower(),
            "kind": "user",
            "change": "added",
            "before": None,
            "after": {"username": "bob", "groups": []},
        },
    ]
    assert doc["losesMasters"] == [f"{ROLE}/admin".lower()]
    assert doc["gainsMasters"] == [f"{ROLE}/dev".lower()]
    code, out, _ = diff(capsys, old, new)
    assert code == 1
    assert out.splitlines()[-2:] == [
        f"loses system:masters: {ROLE}/admin".lower(),
        f"gains system:masters: {ROLE}/dev".lower(),
    ]
    assert f"- {USER}/alice (user): username='alice' groups=[]".lower() in out.lower()


def test_a_dynamicfile_against_identity_mappings(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A DynamicFile and IAMIdentityMapping objects compare by canonical ARN; a lost
    `mapAccounts` entry is a removed `account` key."""
    dynamic = {
        "mapRoles": [{"rolearn": f"{ROLE}/Ops", "username": "ops", "groups": ["system:masters"]}],
        "mapAccounts": [ACCOUNT],
    }
    crds = f"""\
kind: IAMIdentityMapping
metadata: {{name: ops}}
spec:
  arn: arn:aws:sts::{ACCOUNT}:assumed-role/Ops/any
  username: ops
  groups: [system:masters]
---
kind: IAMIdentityMapping
metadata: {{name: carol}}
spec: {{arn: "{USER}/Carol", username: carol}}
"""
    old = write(tmp_path, "dynamic.json", json.dumps(dynamic))
    new = write(tmp_path, "crds.yaml", crds)
    code, doc = diff_json(capsys, old, new)
    assert code == 1
    assert [(c["key"], c["kind"], c["change"]) for c in doc["changes"]] == [
        (ACCOUNT, "account", "removed"),
        (f"{USER}/carol".lower(), "user", "added"),
    ]
    assert doc["losesMasters"] == [] and doc["gainsMasters"] == []


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read"),
        ("server:\n  mapRoles:\n  - rolearn: nope\n", "server.mapRoles[0].rolearn"),
        ("hello: world\n", "not a mapping source"),
    ],
    ids=["missing", "refused-by-backend", "unknown-kind"],
)
def test_trouble_exits_2_with_one_line_naming_the_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str | None, problem: str
) -> None:
    """A source that cannot be read, is refused whole, or is no mapping: exit 2, stdout empty."""
    good = write(tmp_path, "good.yaml", CONFIG)
    bad = str(tmp_path / "bad.yaml") if content is None else write(tmp_path, "bad.yaml", content)
    code, out, err = diff(capsys, good, bad, "-o", "json")
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and bad in err and problem in err
