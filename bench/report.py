"""Write one benchmark's section of docs/BENCHMARKS.md, leaving every other section alone."""

from __future__ import annotations

import os
import platform
import re
import statistics
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"
HEADER = (
    "# Benchmarks\n\n"
    "Written by `python -m bench` (`make bench`); each section is replaced only by its own bench.\n"
)


def markers(section: str) -> tuple[str, str]:
    """The HTML comments that delimit `section` in the file."""
    return f"<!-- bench:{section}:start -->", f"<!-- bench:{section}:end -->"


def write_section(section: str, body: str, *, path: Path = BENCHMARKS) -> None:
    """Replace `section` (or append it) in `path`, atomically; other sections are kept as is."""
    start, end = markers(section)
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".BENCHMARKS-")
    with os.fdopen(fd, "w") as stream:
        stream.write(text)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


def machine() -> str:
    """One line naming the machine the figures come from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def now() -> str:
    """The run's date, UTC."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def median(samples: Sequence[float]) -> float:
    """The median of `samples`."""
    return statistics.median(samples)


def p90(samples: Sequence[float]) -> float:
    """The 90th percentile of `samples`, nearest-rank."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * 9 // 10))
    return ordered[rank - 1]
