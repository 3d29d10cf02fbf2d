"""`python -m bench image`: the size of what the image adds to its base, its build stage replayed.

No container engine runs here, and the base image (`python:3.11-slim-bookworm`) cannot be
pulled, so the image itself is not built. What the Dockerfile's build stage makes, and the
runtime stage copies, is a virtualenv at /opt/authd: this bench replays those steps (a venv,
`pip install ./` of the same files, the removal of pip and setuptools, `compileall`) in a
temporary directory with this machine's Python and reports its size, per package.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import report

SECTION = "image"
DESCRIPTION = "the virtualenv the Dockerfile's build stage makes, replayed here: its size"
ROOT = Path(__file__).resolve().parents[1]
# What the Dockerfile copies into the build stage.
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "authd")
TOP = 8


def du_mib(path: Path) -> float:
    """Bytes on disk under `path`, in MiB (as `du -s`)."""
    total = sum(p.lstat().st_blocks * 512 for p in path.rglob("*") if not p.is_symlink())
    return total / 2**20


def run(*, runs: int) -> str:
    """Replay the build stage and render the sizes (`runs` does not apply)."""
    del runs
    with tempfile.TemporaryDirectory(prefix="bench-image-") as tmp:
        src, venv = Path(tmp) / "src", Path(tmp) / "opt-authd"
        src.mkdir()
        for name in SOURCES:
            copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
            copy(ROOT / name, src / name)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "-q", "--no-cache-dir"]
        subprocess.run([*pip, "install", "./"], cwd=src, check=True)
        with_pip = du_mib(venv)
        subprocess.run([*pip, "uninstall", "-y", "pip", "setuptools"], check=True)
        compileall = [str(venv / "bin" / "python"), "-m", "compileall", "-q", str(venv / "lib")]
        subprocess.run(compileall, check=True)
        size = du_mib(venv)
        site = next((venv / "lib").glob("python3*/site-packages"))
        packages = sorted(
            ((du_mib(p), p.name) for p in site.iterdir() if p.is_dir()), reverse=True
        )[:TOP]
    lines = [
        "## Image: what the Dockerfile adds to its base",
        "",
        f"{report.machine()}; {report.now()}. `python -m bench image` replays the build stage "
        "(venv, `pip install ./`, pip and setuptools removed, `compileall`) with this machine's "
        f"Python {sys.version.split()[0]}; the image's is the base's 3.11. No container engine "
        "here, so the base (`python:3.11-slim-bookworm`) is not measured; add its size as "
        "your registry reports it.",
        "",
        f"- /opt/authd, the only layer of any size the runtime stage adds: **{size:.0f} MiB** "
        f"({with_pip:.0f} MiB before pip and setuptools were removed).",
        "",
        "| Package | MiB |",
        "|---|---:|",
        *(f"| `{name}` | {mib:.1f} |" for mib, name in packages),
    ]
    return "\n".join(lines)
