"""config/monitoring/: the alert rules pass `promtool check rules` and fire as described, the
dashboard is well formed, and every metric either uses is one authd really exports; and the
serving certificate's expiry is exported by the real daemon.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import shutil
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from authd.metrics import Metrics
from tests.daemon import Daemon, base_env

EXPIRY = "authd_serving_certificate_expiry_timestamp_seconds"


def write_short_lived_pair(state: Path, days: int) -> x509.Certificate:
    """A pair like the one kops' nodeup writes before authd starts, valid for `days`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aws-iam-authenticator")])
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    state.mkdir(mode=0o700, parents=True)
    (state / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (state / "key.pem").write_bytes(key_pem)
    (state / "key.pem").chmod(0o600)
    return cert


def scrape_gauge(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not exported"
    return float(match.group(1))


def test_the_daemon_exports_its_certificates_expiry(tmp_path: Path) -> None:
    """With a pre-written 10-day certificate in the state dir the gauge is its notAfter."""
    cert = write_short_lived_pair(tmp_path / "state", days=10)
    daemon = Daemon(["--cluster-id=expiry"], state=tmp_path, env=base_env())
    try:
        daemon.wait_for("listening")
        trust = ssl.create_default_context(cafile=daemon.cert)
        with httpx.Client(base_url=daemon.url, verify=trust, timeout=10) as client:
            text = client.get("/metrics").text
        assert scrape_gauge(text, EXPIRY) == cert.not_valid_after_utc.timestamp()
    finally:
        assert daemon.stop() == 0


# --- the rules and the dashboard -------------------------------------------------------------

MONITORING = Path(__file__).resolve().parents[1] / "config" / "monitoring"
RULES = MONITORING / "alerts.yaml"
DASHBOARD = MONITORING / "dashboard.json"
PROMTOOL = shutil.which("promtool")
# Series the rules read that authd does not export, and who does.
EXTERNAL = {"up": "Prometheus", "kube_pod_status_ready": "kube-state-metrics"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(\s*\()?")


def exported_series() -> set[str]:
    """Every series name a scrape of authd can hold, from rendering the real `Metrics`
    registry: each family's TYPE line gives its sample names (a histogram's _bucket, _count
    and _sum; a counter's _total), so a bare histogram name is not among them."""
    text = Metrics().render()[0].decode()
    names: set[str] = set()
    for line in text.splitlines():
        if not line.startswith("# TYPE "):
            continue
        _, _, name, kind = line.split()
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        elif kind == "summary":
            names |= {name, f"{name}_count", f"{name}_sum"}
        elif kind == "counter":
            names.add(name if name.endswith("_total") else f"{name}_total")
        else:
            names.add(name)
    return names


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects: label matchers, strings, grouping
    clauses, ranges, functions, keywords and numbers are left out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = _GROUPING.sub(" ", expr)
    found = set()
    for match in _IDENT.finditer(expr):
        name, call = match.groups()
        if call or name.lower() in _KEYWORDS:
            continue
        found.add(name)
    return found


def rule_exprs() -> list[tuple[str, str]]:
    """(alert, expr) for every rule."""
    doc = yaml.safe_load(RULES.read_text())
    return [(r["alert"], r["expr"]) for g in doc["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expr) for every query in the dashboard: panel targets, variables, annotations."""
    dash = json.loads(DASHBOARD.read_text())
    found = [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", ())]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", var["query"]["query"])
            assert inner, var["name"]
            found.append((f"${var['name']}", inner.group(1)))
    found += [(a["name"], a["expr"]) for a in dash["annotations"]["list"]]
    return found


def test_metric_names_are_extracted_faithfully() -> None:
    """The extractor finds the selected series and nothing else, and the suffix rules hold:
    a histogram's bare name and a counter without _total are not exported names."""
    expr = (
        "histogram_quantile(0.99, sum by (instance, le) (rate(authd_review_latency_seconds_bucket"
        '{backend="x", le!="+Inf"}[5m]))) > 1 and on (instance) time() - up offset 5m'
    )
    assert metric_names(expr) == {"authd_review_latency_seconds_bucket", "up"}
    exported = exported_series()
    assert "authd_review_latency_seconds_bucket" in exported
    assert "authd_review_latency_seconds" not in exported
    assert "authd_reviews_total" in exported and "authd_reviews" not in exported
    assert EXPIRY in exported and "process_resident_memory_bytes" in exported


def test_every_series_in_the_rules_and_dashboard_is_exported() -> None:
    """Each name the rules and the dashboard query is a series authd's /metrics has, or one
    of the few listed in EXTERNAL with its source."""
    exported = exported_series()
    for where, expr in rule_exprs() + dashboard_exprs():
        names = metric_names(expr)
        assert names, f"{where}: no series in {expr!r}"
        unknown = names - exported - set(EXTERNAL)
        assert not unknown, f"{where}: {sorted(unknown)} not exported"


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: prometheus)")
def test_promtool_accepts_the_rules() -> None:
    out = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(RULES)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in out.stdout


UNIT_TESTS = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
- interval: 1m
  input_series:
  # 20 days from the epoch: under 30 days at the evaluation time, not under 7.
  - series: 'authd_serving_certificate_expiry_timestamp_seconds{{instance="a"}}'
    values: '1728000x200'
  # Expiry unreadable (0): no expiry alert, AuthdCertificateExpiryUnknown instead.
  - series: 'authd_serving_certificate_expiry_timestamp_seconds{{instance="b"}}'
    values: '0x200'
  # MountedFile rejects a version at 1m and loads none; DynamicFile rejects one and recovers.
  - series: 'authd_backend_reload_errors_total{{instance="a", backend="MountedFile"}}'
    values: '0 1x20'
  - series: 'authd_backend_reloads_total{{instance="a", backend="MountedFile"}}'
    values: '1x20'
  - series: 'authd_backend_reload_errors_total{{instance="a", backend="DynamicFile"}}'
    values: '0 1x20'
  - series: 'authd_backend_reloads_total{{instance="a", backend="DynamicFile"}}'
    values: '1 1 2x20'
  - series: 'authd_sts_calls_total{{instance="a", outcome="throttled"}}'
    values: '0+6x20'
  - series: 'authd_sts_calls_total{{instance="a", outcome="ok"}}'
    values: '0+60x20'
  alert_rule_test:
  - alertname: AuthdCertificateExpiresSoon
    eval_time: 2h
    exp_alerts:
    - exp_labels: {{severity: warning, instance: a}}
  - alertname: AuthdCertificateExpiresVerySoon
    eval_time: 2h
    exp_alerts: []
  - alertname: AuthdCertificateExpiryUnknown
    eval_time: 2h
    exp_alerts:
    - exp_labels: {{severity: warning, instance: b}}
  - alertname: AuthdAbsent
    eval_time: 15m
    exp_alerts:
    - exp_labels: {{severity: critical, job: aws-iam-authenticator-metrics}}
  - alertname: AuthdBackendDegraded
    eval_time: 10m
    exp_alerts:
    - exp_labels: {{severity: warning, instance: a, backend: MountedFile}}
  - alertname: AuthdStsThrottled
    eval_time: 12m
    exp_alerts:
    - exp_labels: {{severity: warning, instance: a}}
  - alertname: AuthdStsErrors
    eval_time: 12m
    exp_alerts: []
- interval: 1m
  input_series:
  # A target that is scraped, even if failing: AuthdDown's case, not AuthdAbsent's.
  - series: 'up{{job="aws-iam-authenticator-metrics", instance="a"}}'
    values: '0x30'
  alert_rule_test:
  - alertname: AuthdAbsent
    eval_time: 15m
    exp_alerts: []
  - alertname: AuthdDown
    eval_time: 15m
    exp_alerts:
    - exp_labels: {{severity: critical, job: aws-iam-authenticator-metrics, instance: a}}
"""


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: prometheus)")
def test_alerts_fire_as_docs_monitoring_describes(tmp_path: Path) -> None:
    """`promtool test rules` on series made for it: a certificate 20 days from expiry warns but
    is not critical, one whose expiry could not be read (0) does not but is reported as
    unknown; no target at all is AuthdAbsent, a failing one AuthdDown; a backend that rejected
    a version and loaded none is degraded, one that recovered is not; STS throttling alerts,
    and throttling alone is not counted as STS errors."""
    # The expressions, `for` and labels as they are; annotations dropped (promtool compares
    # them whole, and `check rules` above already parses their templates).
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules = tmp_path / "alerts.yaml"
    rules.write_text(yaml.safe_dump(doc))
    tests = tmp_path / "alerts_test.yaml"
    tests.write_text(UNIT_TESTS.format(rules=json.dumps(str(rules))))
    out = subprocess.run(
        [str(PROMTOOL), "test", "rules", str(tests)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_dashboard_layout() -> None:
    """One repeated row per backend; every panel queries through the data source variable;
    every variable a query uses is defined; panel ids are unique."""
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert variables == {"datasource", "instance", "backend"}
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    rows = [p for p in panels if p["type"] == "row"]
    assert [r["repeat"] for r in rows if "repeat" in r] == ["backend"]
    # The panels after the repeated row, up to the next row, all filter on $backend.
    start = panels.index(next(r for r in rows if "repeat" in r))
    end = panels.index(rows[rows.index(panels[start]) + 1])
    assert all('backend="$backend"' in t["expr"] for p in panels[start + 1 : end]
               for t in p["targets"])  # fmt: skip
    for p in panels:
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
    for _, expr in dashboard_exprs():
        used = set(re.findall(r"\$(\w+)", expr)) - {"__rate_interval", "__interval"}
        assert used <= variables, expr
    titles = {p["title"] for p in panels}
    assert {"Reviews by decision", "Refusals by reason", "STS calls by outcome",
            "Identity cache", "Reload history"} <= titles  # fmt: skip
