"""Start-up of `authd token` (fresh and cache hit) against `aws eks get-token`, side by side.

kubectl runs the credential plugin on every command, so its start-up is user-visible. All three
commands run with the same static credentials in the environment, a region set and instance
metadata disabled, so none of them touches the network; they are interleaved round-robin so
machine noise hits each alike. Warm-up runs also write the `.pyc` files a normal install has.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench import report

SECTION = "token-startup"
DESCRIPTION = "authd token vs aws eks get-token start-up (wall time)"
WARMUP = 3
TARGET_FRESH = 0.35
TARGET_HIT = 0.15
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
# A console script's body (pip writes the same for `authd = authd.cli:main`).
CONSOLE_SCRIPT = "import re, sys; from authd.cli import main; sys.exit(main())"


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    """One command line being timed, for the interpreter `python`."""

    label: str
    args: tuple[str, ...]

    def argv(self, python: Path) -> list[str]:
        return [str(python), *self.args]


CASES = (
    Case(label="`authd token -i X`", args=("-c", CONSOLE_SCRIPT, "token", "-i", "X")),
    Case(
        label="`authd token -i X --cache` (hit)",
        args=("-c", CONSOLE_SCRIPT, "token", "-i", "X", "--cache"),
    ),
    Case(
        label="`aws eks get-token --cluster-name X`",
        args=(str(BIN / "aws"), "eks", "get-token", "--cluster-name", "X"),
    ),
)
# Floors, for reading the figures: the interpreter alone, and the botocore modules a fresh
# token cannot do without (the signer and the credential provider).
REFERENCES = (
    Case(label="reference: `python -c pass`", args=("-c", "pass")),
    Case(
        label="reference: `python -c 'import botocore.auth, botocore.credentials'`",
        args=("-c", "import botocore.auth, botocore.credentials"),
    ),
)


@contextlib.contextmanager
def installed() -> Iterator[Path]:
    """A Python where authd is installed as users install it, and its interpreter.

    The development venv installs authd in editable mode, whose import hook loads at every
    start of that venv's Python (about 10 ms here) and which no user install has. This venv
    holds the `authd` package itself, as a wheel install lays it out (authd reads no package
    metadata), and finds its dependencies, awscli among them, in the development venv's
    site-packages through a .pth line (the editable hook there is never loaded: .pth files
    are read in site directories only). Every command, awscli's and the references included,
    runs on this interpreter; the warm-up runs write the .pyc files.
    """
    with tempfile.TemporaryDirectory(prefix="bench-token-venv-") as tmp:
        venv = Path(tmp)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        site = next((venv / "lib").glob("python3*")) / "site-packages"
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(ROOT / "authd", site / "authd", ignore=ignore)
        (site / "zz-dev-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        yield venv / "bin" / "python"


def environment(home: Path) -> dict[str, str]:
    """Same static credentials for every command, and nothing that could reach the network."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "AWS_REGION": "us-west-2",
        "AWS_DEFAULT_REGION": "us-west-2",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def time_once(argv: list[str], env: dict[str, str]) -> tuple[float, bytes]:
    """Wall time of one run, from fork to exit; the run must succeed."""
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.decode().strip()}")
    return elapsed, done.stdout


def run(*, runs: int) -> str:
    """Time every case `runs` times after a warm-up and return the Markdown section."""
    with installed() as python, tempfile.TemporaryDirectory(prefix="bench-token-") as home:
        env = environment(Path(home))
        first: dict[str, bytes] = {}
        for case in CASES + REFERENCES:
            for _ in range(WARMUP):
                _, out = time_once(case.argv(python), env)
                first.setdefault(case.label, out)
        samples: dict[str, list[float]] = {case.label: [] for case in CASES + REFERENCES}
        for _ in range(runs):
            for case in CASES + REFERENCES:
                elapsed, out = time_once(case.argv(python), env)
                samples[case.label].append(elapsed)
                if "--cache" in case.args and out != first[case.label]:
                    # Another token means the run signed instead of hitting the cache.
                    raise RuntimeError("the --cache run missed the cache; figures would lie")
    return render(samples, runs=runs)


def render(samples: dict[str, list[float]], *, runs: int) -> str:
    """The Markdown table, the ratios to awscli and a plain verdict on each target."""
    fresh, hit, awscli = (samples[case.label] for case in CASES)
    base = report.median(awscli)
    lines = [
        "## `authd token` start-up",
        "",
        f"- Date: {report.now()}",
        f"- Machine: {report.machine()}",
        f"- Command: `python -m bench token --runs {runs}` ({runs} timed runs per command "
        f"after {WARMUP} warm-up runs, interleaved; static env credentials, no network). "
        "authd is installed from its wheel, not in editable mode, and every command runs on "
        "that one interpreter (bench/token_startup.py says why)",
        "",
        "| Command | median (ms) | p90 (ms) | median / awscli |",
        "|---|---:|---:|---:|",
    ]
    for case in CASES + REFERENCES:
        values = samples[case.label]
        ratio = report.median(values) / base
        lines.append(
            f"| {case.label} | {report.median(values) * 1000:.1f} | "
            f"{report.p90(values) * 1000:.1f} | {ratio:.2f}x |"
        )
    lines.append("")
    for name, values, target in (
        ("fresh token", fresh, TARGET_FRESH),
        ("cache hit", hit, TARGET_HIT),
    ):
        ratio = report.median(values) / base
        verdict = "met" if ratio <= target else "MISSED"
        lines.append(f"- Target for the {name}: <= {target:.2f}x awscli: {verdict} ({ratio:.2f}x).")
    floor = report.median(samples[REFERENCES[1].label])
    lines.append(
        f"- A fresh token takes {(report.median(fresh) - floor) * 1000:+.1f} ms beside importing "
        "botocore's signer and credential modules alone (last row): nearly all of its time is "
        "that import. A cache hit imports no botocore."
    )
    return "\n".join(lines) + "\n"
