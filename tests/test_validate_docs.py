"""Every command in docs/validate.md runs, on the doc's own example files, with the output shown."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import BIN

DOC = Path(__file__).resolve().parent.parent / "docs" / "validate.md"
_BLOCK = re.compile(r"```(\w+)([^\n]*)\n(.*?)```", re.DOTALL)


def blocks() -> list[tuple[str, str, str]]:
    """(language, info after it, body) of each fenced block of the page."""
    return [(m[1], m[2].strip(), m[3]) for m in _BLOCK.finditer(DOC.read_text())]


def files() -> dict[str, str]:
    """The page's example files: blocks marked `file=NAME`."""
    return {info.removeprefix("file="): body for _, info, body in blocks() if info}


def sessions() -> list[tuple[str, str]]:
    """(command, expected stdout) of each `$ ` line of the page's console blocks."""
    found: list[tuple[str, str]] = []
    for lang, _, body in blocks():
        if lang != "console":
            continue
        for chunk in body.split("$ ")[1:]:
            command, _, output = chunk.partition("\n")
            found.append((command, output))
    return found


def shell(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a documented command with bash in `cwd`, the installed authd first on PATH."""
    env = {"PATH": f"{BIN}{os.pathsep}/usr/bin{os.pathsep}/bin", "HOME": str(cwd)}
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory holding the page's example files."""
    for name, body in files().items():
        (tmp_path / name).write_text(body)
    return tmp_path


@pytest.mark.parametrize(("command", "expected"), sessions(), ids=lambda v: str(v)[:40])
def test_each_console_command_prints_what_the_page_shows(
    workdir: Path, command: str, expected: str
) -> None:
    """Each `$ command` of the page, run for real, prints exactly the lines shown under it."""
    if "jq" in command and shutil.which("jq") is None:
        pytest.skip("jq is not installed")
    result = shell(command, workdir)
    assert result.stdout == expected, result.stderr


def test_the_pre_commit_hook_runs_on_the_files_it_selects(workdir: Path) -> None:
    """The hook's `entry`, given the files its `files` pattern selects, fails on the example."""
    config = yaml.safe_load((workdir / ".pre-commit-config.yaml").read_text())
    hook = config["repos"][0]["hooks"][0]
    selected = sorted(n for n in files() if re.search(hook["files"], n))
    assert selected == ["aws-auth.yaml", "new-aws-auth.yaml"]
    assert shell(f"{hook['entry']} {' '.join(selected)}", workdir).returncode == 1
    clean = "server:\n  mapRoles:\n  - rolearn: arn:aws:iam::111122223333:role/ok\n"
    (workdir / "config.yaml").write_text(clean)
    assert shell(f"{hook['entry']} config.yaml", workdir).returncode == 0


def test_the_ci_step_fails_the_job_and_keeps_the_findings(workdir: Path) -> None:
    """The CI step's `run` exits 1 on the example and leaves one JSON document behind."""
    step = yaml.safe_load((workdir / "ci-step.yaml").read_text())[0]
    assert shell(step["run"], workdir).returncode == 1
    document = json.loads((workdir / "findings.json").read_text())
    assert [f["rule"] for f in document["findings"]] == [
        "role_path",
        "system_masters",
        "unknown_key",
    ]
    assert (document["errors"], document["warnings"]) == (1, 2)
