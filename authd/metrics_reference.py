"""Generate docs/metrics.md from the `Metrics` object, so the reference cannot drift from the code.

Run `python -m authd.metrics_reference > docs/metrics.md`; a test fails when the file is stale.
"""

from __future__ import annotations

from prometheus_client.metrics import MetricWrapperBase

from authd.metrics import Metrics

HEADER = """\
# Metrics reference

Generated from the code by `python -m authd.metrics_reference > docs/metrics.md`; do not edit.
Served at `GET /metrics` on the webhook's HTTPS port. `aws_iam_authenticator_*` series keep
upstream's names, types, labels and buckets, so existing dashboards keep working; `authd_*`
series are authd's own (label `backend` per mapping backend, `reason` per review outcome).

| metric | type | labels | help |
|---|---|---|---|
"""


def collectors(metrics: Metrics) -> list[MetricWrapperBase]:
    """Every metric the object owns, in name order."""
    found = [value for value in vars(metrics).values() if isinstance(value, MetricWrapperBase)]
    return sorted(found, key=_name)


def render() -> str:
    """The whole reference page as Markdown."""
    metrics = Metrics(process_collector=False)
    found = [
        (_name(metric), metric._type, metric._labelnames, metric._documentation)
        for metric in collectors(metrics)
    ]
    found += metrics.review_series.FAMILIES
    found += metrics.informers.reference()
    found += metrics.log_drops.FAMILIES
    rows = []
    for name, kind, label_names, help_text in sorted(found):
        labels = ", ".join(f"`{label}`" for label in label_names) or "-"
        rows.append(f"| `{name}` | {kind} | {labels} | {help_text} |")
    return HEADER + "\n".join(rows) + "\n"


def _name(metric: MetricWrapperBase) -> str:
    suffix = "_total" if metric._type == "counter" else ""
    return f"{metric._name}{suffix}"


if __name__ == "__main__":
    print(render(), end="")
