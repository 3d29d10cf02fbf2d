"""`python -m bench fuzz`: the fuzzing properties of `make test`, 100,000 cases in all.

The same strategies and checks as tests/test_fuzz_*.py (tests/fuzzing.py and
tests/fuzzing_files.py; invariants in docs/RELIABILITY.md), with many more cases: tokens and
TokenReview bodies through the real App, raw request bytes through the real HTTP server, the
config file, the DynamicFile, aws-auth ConfigMaps, IAMIdentityMapping objects and reloads.
Prints, per target, the cases run, the failure found (hypothesis stops a target at its first,
shrunk), the time taken, and for the token targets what the signing STS stand-in and the canary
saw. Settings are the tests' own (derandomized, no example database), so a run is reproducible.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from bench import report
from tests import fuzzing, fuzzing_files
from tests.fuzzing import Tally, TokenHarness

SECTION = "fuzz"
DESCRIPTION = "the fuzzing properties of `make test` with 100,000 cases in all"
# Cases per target; they add up to 100,000.
CASES: dict[str, int] = {
    "tokens": 25_000,
    "review bodies": 15_000,
    "request bytes": 12_000,
    "config file": 10_000,
    "DynamicFile": 12_000,
    "aws-auth ConfigMap": 8_000,
    "IAMIdentityMapping": 8_000,
    "reload": 10_000,
}

Target = tuple[st.SearchStrategy[Any], Callable[[Any], None]]


def _token_targets(harness: TokenHarness) -> dict[str, Target]:
    return {
        "tokens": (fuzzing.tokens(harness), lambda case: fuzzing.check_token(harness, case)),
        "review bodies": (
            fuzzing.review_bodies(harness),
            lambda case: fuzzing.check_review_body(harness, case),
        ),
        "request bytes": (
            fuzzing.http_requests(harness),
            lambda case: fuzzing.check_http(harness, case),
        ),
    }


def _file_targets() -> dict[str, Target]:
    return {
        "config file": (fuzzing_files.config_files(), fuzzing_files.check_config),
        "DynamicFile": (fuzzing_files.dynamic_files(), fuzzing_files.check_dynamic_file),
        "aws-auth ConfigMap": (fuzzing_files.configmap_data(), fuzzing_files.check_configmap),
        "IAMIdentityMapping": (fuzzing_files.crd_objects(), fuzzing_files.check_crd),
    }


def _run(name: str, target: Target) -> Tally:
    print(f"   {name}: {CASES[name]:,} cases", file=sys.stderr, flush=True)
    return fuzzing.timed(target[0], target[1], CASES[name])


def measure() -> tuple[dict[str, Tally], dict[str, int]]:
    """Run every target; (tallies by target, what the stand-in and the canary saw)."""
    tallies: dict[str, Tally] = {}
    with fuzzing.token_harness() as harness:
        for name, target in _token_targets(harness).items():
            tallies[name] = _run(name, target)
        seen = {
            "accepted": harness.sts.accepted_count(),
            "refused by STS": harness.sts.rejected,
            "canary hits": harness.canary.hits,
        }
    for name, target in _file_targets().items():
        tallies[name] = _run(name, target)
    with fuzzing_files.reload_harness() as reloads:
        tallies["reload"] = _run("reload", (fuzzing_files.reload_versions(), reloads.check))
    return tallies, seen


def run(*, runs: int) -> str:
    """The fuzzing run as the section's Markdown (`runs` does not apply)."""
    del runs
    load = os.getloadavg()[0]
    started = time.perf_counter()
    tallies, seen = measure()
    elapsed = time.perf_counter() - started
    total = sum(tally.cases for tally in tallies.values())
    failures = [(name, tally.failure) for name, tally in tallies.items() if tally.failure]
    rows = [
        f"| {name} | {tally.cases:,} | {'1' if tally.failure else '0'} | {tally.seconds:.1f} "
        f"| {tally.cases / tally.seconds:,.0f} |"
        for name, tally in tallies.items()
    ]
    lines = [
        "## Fuzzing: the properties of `make test`, 100,000 cases",
        "",
        f"{report.machine()}; {report.now()}; load average before: {load:.2f}.",
        "",
        "| target | cases | failures | seconds | cases/s |",
        "|---|---:|---:|---:|---:|",
        *rows,
        f"| **all** | **{total:,}** | **{len(failures)}** | **{elapsed:.1f}** "
        f"| {total / elapsed:,.0f} |",
        "",
        f"Signing STS stand-in: {seen['accepted']:,} distinct signed queries answered with an "
        f"identity, {seen['refused by STS']:,} requests refused (a signature it did not make); "
        f"canary hits: **{seen['canary hits']}**. The invariants are in docs/RELIABILITY.md.",
    ]
    lines += [f"- failure in {name}: `{failure}`" for name, failure in failures]
    return "\n".join(lines)
