"""docs/metrics.md is generated from the code and kept up to date."""

from __future__ import annotations

from pathlib import Path

from authd.metrics_reference import render

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"


def test_metrics_reference_is_up_to_date() -> None:
    """The committed reference equals what the Metrics object generates now."""
    assert DOC.read_text() == render(), (
        "docs/metrics.md is stale: run `python -m authd.metrics_reference > docs/metrics.md`"
    )


def test_reference_lists_upstream_names() -> None:
    """Upstream's series are in the reference with their labels, so dashboards can be checked."""
    text = render()
    assert "| `aws_iam_authenticator_authenticate_latency_seconds` | histogram | `result` |" in text
    assert (
        "`aws_iam_authenticator_sts_responses_total` | counter | `ResponseCode`, `StsRegion`"
        in (text)
    )
