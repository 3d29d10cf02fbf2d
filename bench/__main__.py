"""`python -m bench [NAME ...]`: run the named benchmarks (all by default) and record them.

Each benchmark is a module in this package exposing `SECTION` (its marker in
docs/BENCHMARKS.md), `DESCRIPTION` and `run(*, runs: int) -> str` (the Markdown it measured).
Add one by adding its module name to `BENCHES`. A module may write elsewhere or to several
files: `DOCS` maps each file to a heading put before the body there.
`LONG` benchmarks run only when named (never by `make bench` or CI) and take `--minutes`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from bench import report

BENCHES: dict[str, str] = {
    "token": "bench.token_startup",
    "server": "bench.server",
    "sts": "bench.sts_protection",
    "reload": "bench.reload",
    "reload-storm": "bench.reload_storm",
    "edges": "bench.edges",
    "flood": "bench.flood",
    "kube": "bench.kube",
    "watcher": "bench.watcher",
    "memory": "bench.memory",
    "abuse": "bench.abuse",
    "crash": "bench.crash",
    "fuzz": "bench.fuzz",
    "image": "bench.image",
}
LONG: dict[str, str] = {
    "soak": "bench.soak",
}


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks, print each section and write it to docs/BENCHMARKS.md."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    known = [*BENCHES, *LONG]
    parser.add_argument("names", nargs="*", help=f"benchmarks to run: {', '.join(known)}")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per command")
    parser.add_argument("--minutes", type=int, default=30, help="length of a LONG benchmark")
    parser.add_argument("--no-write", action="store_true", help="print only; keep the docs")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in known]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; known: {', '.join(known)}")
    for name in args.names or list(BENCHES):
        module = importlib.import_module(BENCHES.get(name) or LONG[name])
        print(f"== {name}: {module.DESCRIPTION}", file=sys.stderr)
        extra = {"minutes": args.minutes} if name in LONG else {}
        body = module.run(runs=args.runs, **extra)
        print(body)
        if not args.no_write:
            docs: dict[Path, str] = getattr(module, "DOCS", {report.BENCHMARKS: ""})
            for doc, heading in docs.items():
                report.write_section(module.SECTION, heading + body, path=doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
