"""`make demo` keeps working: the demo runs end to end and every decision is the expected one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_end_to_end() -> None:
    """`python -m demo` exits 0, shows allowed and denied reviews, and stops its server cleanly."""
    out = subprocess.run(
        [sys.executable, "-m", "demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "username=admin:alice-example.com" in out.stdout
    assert "sts_rejected: STS said SignatureDoesNotMatch" in out.stdout
    assert "authd server stopped (exit 0)" in out.stdout
    assert "every decision as expected" in out.stdout
