"""Tests for authd.metrics: upstream's exact series, authd's own, and the exposition."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from authd.metrics import Metrics

P = "aws_iam_authenticator_"
GO_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]

# Upstream's series (metrics in docs/upstream-compat.md): name, type, labels, help.
UPSTREAM = [
    (f"{P}authenticate_latency_seconds", "histogram", ["result"], "Authenticate call latency"),
    (
        f"{P}sts_responses_total",
        "counter",
        ["ResponseCode", "StsRegion"],
        "Sts responses with error code label",
    ),
    (
        f"{P}sts_connection_failures_total",
        "counter",
        ["StsRegion"],
        "Sts call could not succeed or timedout",
    ),
    (f"{P}sts_throttling_total", "counter", ["StsRegion"], "Sts call got throttled"),
    (
        f"{P}ec2_describe_instances_calls_total",
        "counter",
        [],
        "Number of EC2 describe instances calls.",
    ),
    (f"{P}configmap_watch_failures_total", "counter", [], "EKS Configmap watch failures"),
    (f"{P}dynamicfile_failures_total", "counter", [], "Dynamic file failures"),
    (
        f"{P}dynamic_e2e_latency_seconds",
        "histogram",
        ["type"],
        "End to end latency in seconds partitioned by type.",
    ),
    (f"{P}dynamic_file_enabled", "gauge", [], "Dynamic file in backend mode is enabled"),
    (f"{P}dynamic_file_only", "gauge", [], "Only dynamic file in backend mode is enabled"),
]


def _families(metrics: Metrics) -> dict[str, tuple[str, str, list[tuple[str, dict[str, str]]]]]:
    """Parse the real exposition: family name (as exposed) -> (type, help, samples)."""
    body, _ = metrics.render()
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        name = family.name + ("_total" if family.type == "counter" else "")
        out[name] = (
            family.type,
            family.documentation,
            [(s.name, s.labels) for s in family.samples],
        )
    return out


def test_upstream_series_have_exact_names_types_and_help() -> None:
    """Every upstream metric is exposed with its name, type and help string."""
    families = _families(Metrics())
    for name, kind, _labels, help_text in UPSTREAM:
        assert name in families, name
        assert families[name][:2] == (kind, help_text), name


def test_labels_of_upstream_series() -> None:
    """Each labelled upstream series carries exactly upstream's label names."""
    metrics = Metrics(process_collector=False)
    metrics.observe_review(reason="ok", seconds=0.2)
    metrics.sts_response(200, "global")
    metrics.sts_connection_failure("us-west-2")
    metrics.sts_throttled("us-west-2")
    metrics.dynamic_reload_latency("dynamic_file", 4)
    families = _families(metrics)
    for name, _kind, labels, _help in UPSTREAM:
        for sample_name, sample_labels in families[name][2]:
            assert set(sample_labels) - {"le"} == set(labels), sample_name


def test_histogram_buckets_match_go_defaults_and_e2e() -> None:
    """Latency uses Go's default buckets, the e2e histogram upstream's 1-60 s buckets."""
    metrics = Metrics(process_collector=False)
    metrics.observe_review(reason="ok", seconds=0.2)
    metrics.dynamic_reload_latency("dynamic_backend_mode", 4)
    families = _families(metrics)

    def bounds(name: str) -> list[float]:
        return [
            float(labels["le"])
            for sample, labels in families[name][2]
            if sample.endswith("_bucket") and labels["le"] != "+Inf"
        ]

    assert bounds(f"{P}authenticate_latency_seconds") == GO_BUCKETS
    assert bounds(f"{P}dynamic_e2e_latency_seconds") == [1, 3, 5, 10, 15, 20, 30, 60]


def test_unlabelled_series_exist_at_zero_and_labelled_ones_appear_on_use() -> None:
    """Unlabelled counters and gauges read 0 from the start; labelled ones only after use."""
    metrics = Metrics(process_collector=False)
    get = metrics.registry.get_sample_value
    for name in (
        f"{P}ec2_describe_instances_calls_total",
        f"{P}configmap_watch_failures_total",
        f"{P}dynamicfile_failures_total",
        f"{P}dynamic_file_enabled",
        f"{P}dynamic_file_only",
    ):
        assert get(name) == 0.0, name
    assert get(f"{P}sts_responses_total", {"ResponseCode": "200", "StsRegion": "global"}) is None
    assert get(f"{P}authenticate_latency_seconds_count", {"result": "success"}) is None


def test_authd_review_series_are_precreated_at_zero() -> None:
    """Every decision/reason pair of authd 4 in docs/upstream-compat.md exists at 0, as does each
    backend.
    """
    metrics = Metrics(process_collector=False)
    get = metrics.registry.get_sample_value
    pairs = {
        ("allow", "ok"),
        ("deny", "bad_request"),
        ("deny", "bad_token"),
        ("deny", "sts_rejected"),
        ("deny", "not_mapped"),
        ("deny", "reserved_prefix"),
        ("deny", "template_error"),
        ("retry", "throttled"),
        ("retry", "sts_unavailable"),
        ("retry", "internal_error"),
    }
    for decision, reason in pairs:
        assert get("authd_reviews_total", {"decision": decision, "reason": reason}) == 0.0
    for backend in ("MountedFile", "DynamicFile", "EKSConfigMap", "CRD"):
        assert get("authd_backend_errors_total", {"backend": backend}) == 0.0


@pytest.mark.parametrize(
    ("reason", "result", "decision"),
    [
        ("ok", "success", "allow"),
        ("bad_request", "malformed_request", "deny"),
        ("bad_token", "invalid_token", "deny"),
        ("sts_rejected", "sts_error", "deny"),
        ("sts_unavailable", "sts_error", "retry"),
        ("throttled", "sts_throttling", "retry"),
        ("not_mapped", "uknown_user", "deny"),
        ("reserved_prefix", "uknown_user", "deny"),
        ("template_error", "uknown_user", "deny"),
        ("internal_error", "sts_error", "retry"),
    ],
)
def test_observe_review_counts_in_upstream_and_authd_series(
    reason: str, result: str, decision: str
) -> None:
    """One review moves upstream's latency by `result` and authd's counter and histogram."""
    metrics = Metrics(process_collector=False)
    get = metrics.registry.get_sample_value
    metrics.observe_review(reason=reason, seconds=0.03, backend="MountedFile")
    metrics.observe_review(reason=reason, seconds=0.3)
    assert get(f"{P}authenticate_latency_seconds_count", {"result": result}) == 2.0
    assert get(f"{P}authenticate_latency_seconds_sum", {"result": result}) == pytest.approx(0.33)
    assert get(f"{P}authenticate_latency_seconds_bucket", {"result": result, "le": "0.05"}) == 1.0
    assert get("authd_reviews_total", {"decision": decision, "reason": reason}) == 2.0
    by_backend = {"backend": "MountedFile", "decision": decision}
    assert get("authd_review_latency_seconds_count", by_backend) == 1.0
    assert get("authd_review_latency_seconds_count", {"backend": "none", "decision": decision})


def test_unknown_reason_without_labels_is_an_error() -> None:
    """A reason code outside the outcome table cannot be counted silently."""
    with pytest.raises(KeyError):
        Metrics(process_collector=False).observe_review(reason="mystery", seconds=1)


def test_sts_and_backend_events() -> None:
    """STS, EC2, watch, reload and backend methods move their own series by one."""
    metrics = Metrics(process_collector=False)
    get = metrics.registry.get_sample_value
    metrics.sts_response(403, "us-west-2")
    metrics.sts_response(403, "us-west-2")
    metrics.sts_connection_failure("global")
    metrics.sts_throttled("cn-north-1")
    metrics.ec2_describe_instances_call()
    metrics.dynamicfile_failure()
    metrics.backend_error("CRD")
    metrics.reload("config", ok=False)
    sts = {"ResponseCode": "403", "StsRegion": "us-west-2"}
    assert get(f"{P}sts_responses_total", sts) == 2.0
    assert get(f"{P}sts_connection_failures_total", {"StsRegion": "global"}) == 1.0
    assert get(f"{P}sts_throttling_total", {"StsRegion": "cn-north-1"}) == 1.0
    assert get(f"{P}ec2_describe_instances_calls_total") == 1.0
    assert get(f"{P}dynamicfile_failures_total") == 1.0
    assert get("authd_backend_errors_total", {"backend": "CRD"}) == 1.0
    assert get("authd_reloads_total", {"source": "config", "result": "error"}) == 1.0


def test_render_is_text_format_without_created_samples() -> None:
    """The exposition is Prometheus text 0.0.4 with process metrics and no `_created` series."""
    metrics = Metrics()
    metrics.observe_review(reason="ok", seconds=0.1)
    metrics.sts_response(200, "global")
    body, content_type = metrics.render()
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    text = body.decode()
    assert "_created" not in text
    assert "\nprocess_cpu_seconds_total " in text or text.startswith("process_cpu")
    assert f'{P}sts_responses_total{{ResponseCode="200",StsRegion="global"}} 1.0' in text


def test_instances_do_not_share_state() -> None:
    """Two Metrics objects own separate registries (no module-global collisions)."""
    first, second = Metrics(), Metrics()
    first.ec2_describe_instances_call()
    assert first.registry.get_sample_value(f"{P}ec2_describe_instances_calls_total") == 1.0
    assert second.registry.get_sample_value(f"{P}ec2_describe_instances_calls_total") == 0.0


def test_loose_state_files_and_dropped_log_lines_are_exported() -> None:
    """The loose-state gauge exists at zero for each state file and follows `state_files`; the
    dropped-log-lines counter reads its source at each scrape."""
    from authd.metrics import STATE_FILES
    from authd.server.tls import LOOSE_FILES

    assert STATE_FILES == LOOSE_FILES
    metrics = Metrics(process_collector=False)
    reg = metrics.registry
    for name in STATE_FILES:
        assert reg.get_sample_value("authd_state_files_loose", {"file": name}) == 0
    metrics.state_files(["key"])
    assert reg.get_sample_value("authd_state_files_loose", {"file": "key"}) == 1
    assert reg.get_sample_value("authd_state_files_loose", {"file": "state_dir"}) == 0
    assert reg.get_sample_value("authd_log_lines_dropped_total") == 0
    dropped = [7]
    metrics.watch_log_drops(lambda: dropped[0])
    assert reg.get_sample_value("authd_log_lines_dropped_total") == 7
    dropped[0] = 9
    assert b"authd_log_lines_dropped_total 9.0" in metrics.render()[0]
