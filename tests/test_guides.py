"""The admin and user guides do what they say (docs/admin-guide.md, docs/user-guide.md).

Every shell block is marked: "from a checkout" blocks run here, line by line; the user guide's
kubeconfigs are each used by the real kubectl, through the fake API server's webhook call, to
the real daemon with moto as STS; the figures and settings the admin guide quotes are the ones
the benchmark wrote and the manifests ship.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import BIN
from tests.daemon import Daemon, base_env
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.moto import IamUser
from tests.fakes.sts_front import StsFront

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GUIDES = ("admin-guide.md", "user-guide.md")
FROM_CHECKOUT = "# from a checkout (tests/test_guides.py runs this block"
CLUSTER = "my-cluster"  # the cluster ID the user guide's kubeconfigs name
# Credentials that presign fine and reach nothing: the guide's token commands are local.
OFFLINE_AWS = {
    "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def blocks(doc: str, language: str) -> list[str]:
    """The bodies of every fenced block of `language` in docs/`doc`."""
    text = (DOCS / doc).read_text()
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


# --- shell blocks ---------------------------------------------------------------------------


@pytest.mark.parametrize("doc", GUIDES)
def test_every_shell_block_runs_in_this_test(doc: str) -> None:
    """A guide's commands are all ones this file runs: none is only for a real node."""
    shell = blocks(doc, "sh")
    assert shell, f"{doc} has no shell block"
    assert [block.splitlines()[0].startswith(FROM_CHECKOUT) for block in shell] == [True] * len(
        shell
    )


@pytest.mark.parametrize("doc", GUIDES)
def test_shell_blocks_succeed_from_a_checkout(doc: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        **OFFLINE_AWS,
    }
    ran = []
    for block in blocks(doc, "sh"):
        for line in block.splitlines()[1:]:
            out = subprocess.run(
                shlex.split(line),
                cwd=ROOT,
                env=env,
                capture_output=True,
                stdin=subprocess.DEVNULL,
                text=True,
                timeout=60,
                check=False,
            )
            assert out.returncode == 0, (line, out.stdout, out.stderr)
            ran.append((line, out.stdout))
    assert len(ran) >= 2
    for line, stdout in ran:
        if " token " in f" {line} ":
            assert "k8s-aws-v1." in stdout, line


# --- the user guide's kubeconfigs -----------------------------------------------------------


def kubeconfigs() -> list[dict[str, Any]]:
    """Each whole kubeconfig in the user guide."""
    configs = [yaml.safe_load(block) for block in blocks("user-guide.md", "yaml")]
    return [config for config in configs if config.get("kind") == "Config"]


def test_the_user_guide_has_a_kubeconfig_per_client() -> None:
    commands = [config["users"][0]["user"]["exec"]["command"] for config in kubeconfigs()]
    assert commands == ["authd", "aws-iam-authenticator", "aws"]


@pytest.fixture
def daemon(tmp_path: Path, sts_front: StsFront, iam_user: IamUser) -> Iterator[Daemon]:
    """authd for the guide's cluster ID, with the IAM user mapped to `guide-user`."""
    config = tmp_path / "config.yaml"
    config.write_text(
        f"clusterID: {CLUSTER}\n"
        "server:\n"
        "  mapUsers:\n"
        f"  - userarn: {iam_user.arn}\n"
        "    username: guide-user\n"
        "    groups: [guide-readers]\n"
    )
    proc = Daemon(
        [f"--config={config}", f"--extra-sts-endpoint={sts_front.url}"],
        state=tmp_path,
        env=base_env(),
    )
    proc.wait_for("listening")
    yield proc
    assert proc.stop() == 0


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("index", range(3), ids=["authd", "aws-iam-authenticator", "awscli"])
def test_kubectl_logs_in_with_the_guides_kubeconfig(
    index: int,
    tmp_path: Path,
    daemon: Daemon,
    client_env: dict[str, str],
    iam_user: IamUser,
) -> None:
    """The kubeconfig as printed, with only the cluster's address and CA filled in."""
    config = kubeconfigs()[index]
    api = FakeApiServer(daemon.kubeconfig)
    api.start()
    try:
        config["clusters"][0]["cluster"] = {
            "server": api.url,
            "certificate-authority": str(api.ca_file),
        }
        kubeconfig = tmp_path / "kubeconfig.yaml"
        kubeconfig.write_text(yaml.safe_dump(config))
        env = client_env | iam_user.env()
        env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
        out = subprocess.run(
            ["kubectl", f"--kubeconfig={kubeconfig}", "auth", "whoami", "-o", "json"],
            env=env,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        api.stop()
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)["status"]["userInfo"]
    assert (info["username"], info["groups"]) == ("guide-user", ["guide-readers"])


# --- what the admin guide quotes ------------------------------------------------------------


def admin_guide() -> str:
    return (DOCS / "admin-guide.md").read_text()


def test_memory_figures_are_the_benchmarks() -> None:
    """Each RSS in the admin guide's table is in the memory bench's section of BENCHMARKS.md."""
    text = (DOCS / "BENCHMARKS.md").read_text()
    section = text.split("<!-- bench:memory:start -->")[1].split("<!-- bench:memory:end -->")[0]
    table = admin_guide().split("## 4.")[1].split("**kops'")[0]
    figures = re.findall(r"\| ([\d.]+) MiB \|", table)
    assert len(figures) == 5, table
    for figure in figures:
        assert f"{figure} MiB" in section, figure
    (reviews,) = re.findall(r"after ([\d,]+) reviews", table)
    assert f"after {reviews} reviews" in section


def test_memory_settings_match_the_daemonset() -> None:
    """The request and limit the guide tells kops and tarmak users to set are the shipped ones."""
    daemonset = yaml.safe_load((ROOT / "config" / "daemonset.yaml").read_text())
    resources = daemonset["spec"]["template"]["spec"]["containers"][0]["resources"]
    request, limit = resources["requests"]["memory"], resources["limits"]["memory"]
    text = admin_guide()
    assert f"memoryRequest: {request}" in text and f"memoryLimit: {limit}" in text
    assert f"requests: {{memory: {request}}}, limits: {{memory: {limit}}}" in text
    kubernetes = (DOCS / "deploy-kubernetes.md").read_text()
    assert f"memoryRequest: {request}" in kubernetes and f"memoryLimit: {limit}" in kubernetes


def test_apiserver_flag_names_the_kubeconfig_authd_writes() -> None:
    """The webhook file in the flag is the example config's `generateKubeconfig`."""
    example = yaml.safe_load((ROOT / "config" / "example.yaml").read_text())
    path = example["server"]["generateKubeconfig"]
    flags = blocks("admin-guide.md", "text")[0]
    assert f"--authentication-token-webhook-config-file={path}" in flags
