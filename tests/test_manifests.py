"""The Kubernetes manifests in config/: the properties the deployment relies on
(docs/deploy-kubernetes.md), that the real daemon started with the DaemonSet's arguments and
volumes answers its probes, and that `kubectl apply --dry-run=client` accepts every file.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import pytest
import yaml

from tests.daemon import Daemon, base_env, free_port
from tests.deploy_helpers import CONFIG, DOCKERFILE, flag_name, server_flags, shell_blocks
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.kube.resources import ResourceType

Doc = dict[str, Any]
PORT = 21362
METRICS_PORT = 21363
# Files in config/ that are authd's own config files, not Kubernetes objects.
AUTHD_CONFIGS = {"example.yaml", "demo.yaml"}


def manifest_files() -> list[Path]:
    """The Kubernetes manifests in config/ (top level; config/monitoring holds no objects)."""
    return sorted(p for p in CONFIG.glob("*.yaml") if p.name not in AUTHD_CONFIGS)


def objects() -> list[Doc]:
    """Every object of every manifest file."""
    docs: list[Doc] = []
    for path in manifest_files():
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def the(kind: str, name: str | None = None) -> Doc:
    """The one object of `kind` (and `name`)."""
    found = [
        d
        for d in objects()
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{kind} {name}: {len(found)} objects"
    return found[0]


def container() -> Doc:
    """The DaemonSet's authd container."""
    (only,) = the("DaemonSet")["spec"]["template"]["spec"]["containers"]
    return dict(only)


def test_every_yaml_in_config_is_classified() -> None:
    """Each top-level YAML is either a manifest (every document has apiVersion, kind and a
    name) or one of authd's sample config files, so the list above cannot go stale."""
    for path in CONFIG.glob("*.yaml"):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        is_manifest = [("apiVersion" in d and "kind" in d) for d in docs]
        if path.name in AUTHD_CONFIGS:
            assert not any(is_manifest), path
            assert "clusterID" in docs[0], path
        else:
            assert docs and all(is_manifest), path
            assert all(d["metadata"]["name"] for d in docs), path
    kinds = {d["kind"] for d in objects()}
    assert {"DaemonSet", "ConfigMap", "CustomResourceDefinition", "ServiceAccount", "Service",
            "ServiceMonitor"} <= kinds  # fmt: skip


def test_daemonset_runs_on_control_plane_nodes_on_the_host_network() -> None:
    """Host network; the control-plane node selector; tolerations for both the current and the
    legacy control-plane taint; the service account the RBAC manifest grants."""
    spec = the("DaemonSet")["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    assert spec["nodeSelector"] == {"node-role.kubernetes.io/control-plane": ""}
    tolerated = {(t.get("key"), t.get("effect")) for t in spec["tolerations"]}
    assert ("node-role.kubernetes.io/control-plane", "NoSchedule") in tolerated
    assert ("node-role.kubernetes.io/master", "NoSchedule") in tolerated
    assert spec["serviceAccountName"] == the("ServiceAccount")["metadata"]["name"]
    assert the("ServiceAccount")["metadata"]["namespace"] == "kube-system"
    assert spec["priorityClassName"] == "system-node-critical"


def test_probes_are_https_on_the_webhook_port() -> None:
    """Start-up and liveness on /healthz, readiness on /readyz, all HTTPS on 127.0.0.1:21362:
    the probes go through the webhook's own TLS listener, the one kube-apiserver calls. The
    start-up probe allows 5 minutes before liveness may kill a daemon still loading."""
    c = container()
    probes = (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    )
    for probe, path in probes:
        get = c[probe]["httpGet"]
        assert get == {"host": "127.0.0.1", "path": path, "port": PORT, "scheme": "HTTPS"}
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] == 300
    assert c["ports"] == [
        {"name": "https", "containerPort": PORT, "protocol": "TCP"},
        {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
    ]


def test_security_context_is_kops_and_more() -> None:
    """UID/GID 10000 (kops' nodeup owns the host files by it), non-root, read-only root file
    system, no privilege escalation, no capabilities; the pod's matches the container's."""
    sc = container()["securityContext"]
    assert sc["runAsUser"] == 10000 and sc["runAsGroup"] == 10000
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    pod = the("DaemonSet")["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsUser"] == 10000 and pod["runAsNonRoot"] is True
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}


def test_writable_paths_are_volumes() -> None:
    """With a read-only root, what authd writes (state dir, kubeconfig dir, /tmp) is mounted;
    the state and kubeconfig mounts are the image's declared VOLUMEs; /tmp is in memory."""
    c = container()
    args = dict(a.split("=", 1) for a in c["args"][1:])
    mounts = {m["mountPath"].rstrip("/"): m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in the("DaemonSet")["spec"]["template"]["spec"]["volumes"]}
    writes = {
        args["--state-dir"],
        str(PurePosixPath(args["--generate-kubeconfig"]).parent),
        "/tmp",
    }
    for path in writes:
        assert path in mounts and not mounts[path].get("readOnly"), path
    assert volumes[mounts["/tmp"]["name"]]["emptyDir"]["medium"] == "Memory"
    image_volumes = next(
        line for line in DOCKERFILE.read_text().splitlines() if line.startswith("VOLUME ")
    )
    assert set(json.loads(image_volumes.removeprefix("VOLUME "))) == writes - {"/tmp"}
    assert mounts["/etc/aws-iam-authenticator"]["readOnly"] is True


def test_args_are_flags_the_real_cli_lists() -> None:
    """`server` and then only flags that `authd server --help` prints (from the real CLI)."""
    args = container()["args"]
    assert args[0] == "server"
    unknown = {flag_name(a) for a in args[1:]} - server_flags()
    assert not unknown
    assert all(a.startswith("--") and "=" in a for a in args[1:])


def test_resources_are_set() -> None:
    """Requests and limits for memory and CPU; the limit is at least the request."""
    res = container()["resources"]
    assert set(res["requests"]) == {"memory", "cpu"}
    assert set(res["limits"]) == {"memory", "cpu"}
    mib = {"Mi": 1, "Gi": 1024}
    request, limit = (int(v[:-2]) * mib[v[-2:]] for v in (res["requests"]["memory"],
                                                          res["limits"]["memory"]))  # fmt: skip
    assert 0 < request <= limit


def test_prometheus_annotations_point_at_metrics() -> None:
    """The pod template tells annotation-based discovery where /metrics is: the plain-HTTP
    listener on every address, so a scraper on another node reaches it, while the webhook keeps
    upstream's default address, 127.0.0.1."""
    annotations = the("DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/scheme": "http",
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/path": "/metrics",
    }
    args = container()["args"]
    assert f"--health-address=0.0.0.0:{METRICS_PORT}" in args
    assert "--address" not in {flag_name(a) for a in args}


def test_service_monitor_selects_the_service() -> None:
    """ServiceMonitor -> Service by labels, namespace and port name; Service -> the pods by
    the DaemonSet's labels and the container's port name; not-ready pods stay scraped."""
    service = the("Service")
    monitor = the("ServiceMonitor")
    labels = service["metadata"]["labels"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    port_names = {p["name"] for p in service["spec"]["ports"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in port_names
    assert (endpoint["scheme"], endpoint["path"]) == ("http", "/metrics")
    pod_labels = the("DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (METRICS_PORT, "metrics")
    assert "metrics" in {p["name"] for p in container()["ports"]}
    assert service["spec"]["publishNotReadyAddresses"] is True


def test_configmap_is_what_the_daemonset_mounts_and_lints_clean(tmp_path: Path) -> None:
    """The ConfigMap's name and key are what the DaemonSet mounts at --config, and its
    config.yaml passes `authd validate --strict` (the real CLI)."""
    configmap = the("ConfigMap", "aws-iam-authenticator")
    c = container()
    args = dict(a.split("=", 1) for a in c["args"][1:])
    config = PurePosixPath(args["--config"])
    mount = next(m for m in c["volumeMounts"] if m["mountPath"].rstrip("/") == str(config.parent))
    volume = next(
        v for v in the("DaemonSet")["spec"]["template"]["spec"]["volumes"]
        if v["name"] == mount["name"]
    )  # fmt: skip
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert configmap["metadata"]["namespace"] == the("DaemonSet")["metadata"]["namespace"]
    file = tmp_path / config.name
    file.write_text(configmap["data"][config.name])
    out = subprocess.run(
        [str(Path(sys.executable).parent / "authd"), "validate", "--strict", str(file)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 errors, 0 warnings" in out.stdout + out.stderr


def kubelet_paths(root: Path) -> dict[str, Path]:
    """Each container mount path -> where it lives on a simulated node under `root`: hostPath
    volumes at root/<host path>, ConfigMap volumes filled with the ConfigMap's keys, emptyDirs
    in fresh directories."""
    spec = the("DaemonSet")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    where: dict[str, Path] = {}
    for mount in container()["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "hostPath" in volume:
            path = root / volume["hostPath"]["path"].strip("/")
        elif "configMap" in volume:
            path = root / "configmaps" / volume["configMap"]["name"]
            configmap = the("ConfigMap", volume["configMap"]["name"])
            path.mkdir(parents=True, exist_ok=True)
            for key, value in configmap["data"].items():
                (path / key).write_text(value)
        else:
            path = root / "emptydir" / mount["name"]
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        where[mount["mountPath"].rstrip("/")] = path
    return where


def test_the_daemon_serves_the_probes_with_the_daemonsets_args(tmp_path: Path) -> None:
    """The real `authd server`, given the DaemonSet's args with each path mapped through its
    volume to a simulated node (both hostPaths are one directory, as kops has it), starts, writes
    cert, key and kubeconfig to the host directory, answers the probes over HTTPS (trusting the
    certificate in the host directory) and /metrics over plain HTTP where Prometheus is told to
    scrape. Only the listen addresses and ports are changed: tests bind 127.0.0.1, free ports."""
    where = kubelet_paths(tmp_path / "node")
    metrics_port = free_port()

    def on_node(path: str) -> str:
        parent = str(PurePosixPath(path).parent)
        return str(where[path] if path in where else where[parent] / PurePosixPath(path).name)

    args = []
    for arg in container()["args"][1:]:
        flag, _, value = arg.partition("=")
        if flag == "--health-address":
            value = f"127.0.0.1:{metrics_port}"
        elif value.startswith("/"):
            value = on_node(value)
        args.append(f"{flag}={value}")
    daemon = Daemon(args, state=tmp_path, env=base_env(TMPDIR=str(where["/tmp"])))
    try:
        daemon.wait_for("listening")
        host = tmp_path / "node" / "srv/kubernetes/aws-iam-authenticator"
        assert {"cert.pem", "key.pem", "kubeconfig.yaml"} <= {p.name for p in host.iterdir()}
        trust = ssl.create_default_context(cafile=str(host / "cert.pem"))
        with httpx.Client(base_url=daemon.url, verify=trust, timeout=10) as client:
            assert client.get(container()["livenessProbe"]["httpGet"]["path"]).status_code == 200
            deadline = time.monotonic() + 15
            path = container()["readinessProbe"]["httpGet"]["path"]
            while (ready := client.get(path)).status_code != 200:
                assert time.monotonic() < deadline, ready.text
                time.sleep(0.05)
            assert ready.text == "MountedFile: ok\n"
        scrape = the("ServiceMonitor")["spec"]["endpoints"][0]
        metrics_url = f"{scrape['scheme']}://127.0.0.1:{metrics_port}{scrape['path']}"
        metrics = httpx.get(metrics_url, timeout=10)
        assert metrics.status_code == 200
        assert "authd_reviews_total" in metrics.text
    finally:
        assert daemon.stop() == 0


def rtype(group: str, version: str, kind: str, *, namespaced: bool, custom: bool = False,
          plural: str | None = None) -> ResourceType:  # fmt: skip
    """A served type for discovery, named as the real API server names it."""
    return ResourceType(
        group=group,
        version=version,
        kind=kind,
        plural=plural or f"{kind.lower()}s",
        singular=kind.lower(),
        namespaced=namespaced,
        custom=custom,
    )


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    """The fake API server, also serving every type the manifests hold, as a cluster with the
    Prometheus Operator's CRDs installed does."""
    rbac = "rbac.authorization.k8s.io"
    with FakeApiServer() as server:
        server.resources += [
            rtype("", "v1", "ServiceAccount", namespaced=True),
            rtype("", "v1", "Service", namespaced=True),
            rtype("apps", "v1", "DaemonSet", namespaced=True),
            rtype("apiextensions.k8s.io", "v1", "CustomResourceDefinition", namespaced=False),
            rtype("monitoring.coreos.com", "v1", "ServiceMonitor", namespaced=True, custom=True),
            rtype(rbac, "v1", "ClusterRole", namespaced=False),
            rtype(rbac, "v1", "ClusterRoleBinding", namespaced=False),
            rtype(rbac, "v1", "Role", namespaced=True),
            rtype(rbac, "v1", "RoleBinding", namespaced=True),
        ]
        yield server


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_client_dry_run_accepts_every_manifest(api: FakeApiServer, tmp_path: Path) -> None:
    """`kubectl apply --dry-run=client` maps every object of every manifest (discovery answered
    by the fake) and reports each as created; nothing is written."""
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    files = [arg for path in manifest_files() for arg in ("-f", str(path))]
    out = subprocess.run(
        ["kubectl", f"--kubeconfig={kubeconfig}", f"--cache-dir={tmp_path}/cache",
         "apply", "--dry-run=client", *files],
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    created = [line for line in out.stdout.splitlines() if line.endswith(" created (dry run)")]
    assert len(created) == len(objects())
    for expected in (
        "daemonset.apps/aws-iam-authenticator created (dry run)",
        "configmap/aws-iam-authenticator created (dry run)",
        "service/aws-iam-authenticator-metrics created (dry run)",
        "servicemonitor.monitoring.coreos.com/aws-iam-authenticator created (dry run)",
        "customresourcedefinition.apiextensions.k8s.io/"
        "iamidentitymappings.iamauthenticator.k8s.aws created (dry run)",
    ):
        assert expected in created
    assert not [r for r in api.requests if r.method != "GET" and r.status < 300]


DOC = Path(__file__).resolve().parents[1] / "docs" / "deploy-kubernetes.md"
FROM_CHECKOUT = "# from a checkout (tests/test_manifests.py runs this block"
ELSEWHERE = ("# on a machine with a container engine", "# as root on each control-plane node")


def doc_blocks() -> list[list[str]]:
    """The lines of every ```sh block of docs/deploy-kubernetes.md."""
    return shell_blocks(DOC)


def test_every_doc_command_says_where_it_runs() -> None:
    """Each shell block is run here or says why it cannot be (no container engine, a node)."""
    for block in doc_blocks():
        assert block[0].startswith((FROM_CHECKOUT, *ELSEWHERE)), block[0]
    assert any(block[0].startswith(FROM_CHECKOUT) for block in doc_blocks())


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_doc_install_commands_run(api: FakeApiServer, tmp_path: Path) -> None:
    """The install order's `kubectl apply` lines, as printed, each accepted by kubectl
    (`--dry-run=client`, against the fake API server, from the checkout)."""
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    ran = 0
    for block in doc_blocks():
        if not block[0].startswith(FROM_CHECKOUT):
            continue
        for line in block[1:]:
            command = shlex.split(line, comments=True)
            assert command[:2] == ["kubectl", "apply"], line
            out = subprocess.run(
                [*command, f"--kubeconfig={kubeconfig}", f"--cache-dir={tmp_path}/cache",
                 "--dry-run=client"],
                cwd=DOC.parents[1], env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert out.returncode == 0, (line, out.stderr)
            assert "created (dry run)" in out.stdout, line
            ran += 1
    assert ran == 5
