"""Kubernetes API faults, through the real daemon following IAMIdentityMappings (CRD backend).

The fake API server (tests/fakes/apiserver.py) is the cluster and the STS stand-in is STS, so
no kubectl or moto is needed. Each test starts a daemon mapping Alice through one
IAMIdentityMapping, reviews Alice's token in a background thread for the whole test, injects
one fault, and checks:

- every review during the fault is allowed (the last good snapshot serves);
- `/readyz` and the metrics (`authd_backend_errors_total`, `authd_kube_relists_total`,
  `authd_kube_watch_restarts_total`, `authd_backend_rejected_entries`) say what happened;
- a change made during the fault is served once the server is back, within the informer's
  backoff bound (authd/server/kube/informer.py: at most `cap * (1 + jitter)` = 36 s between
  two tries) plus slack; nothing here asserts a tighter time.

A stalled watch is invisible to the daemon until its read timeout (timeoutSeconds 300 + 30 s);
that the informer drops and re-opens a stalled watch is shown with short timeouts in
tests/test_kube_integration.py (test_stalled_watch_is_dropped_and_reestablished).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from authd.server.kubebackends import DEFAULT_BACKOFF
from tests.daemon import Daemon, base_env
from tests.fakes.apiserver import ADMIN_TOKEN, FakeApiServer, User
from tests.fakes.sts_standin import ALICE, StsStandIn

AUTHD_TOKEN = "authd-service-account-token"
AUTHD_USER = User(name="system:serviceaccount:kube-system:authd")
ADMIN = User(name="kubernetes-admin", groups=("system:masters",))
SLACK = 15.0
CATCH_UP = DEFAULT_BACKOFF.cap * (1 + DEFAULT_BACKOFF.jitter) + SLACK
"""Seconds a recovery may take: the longest backoff the daemon's informer waits, plus slack."""
PLURAL = "iamidentitymappings"


def mapping(name: str, arn: str, username: str) -> dict[str, object]:
    """An IAMIdentityMapping whose status authd already wrote (so it serves at once)."""
    return {
        "apiVersion": "iamauthenticator.k8s.aws/v1alpha1",
        "kind": "IAMIdentityMapping",
        "metadata": {"name": name},
        "spec": {"arn": arn, "username": username, "groups": ["devs"]},
        "status": {"canonicalARN": arn.lower()},
    }


def eventually(check: Callable[[], object], *, seconds: float = CATCH_UP) -> None:
    """Poll `check()` until it is truthy, for at most `seconds`."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"condition not met within {seconds:g}s"
        time.sleep(0.05)


@dataclass
class Reviewer:
    """Reviews one token over and over in a thread; keeps every (status, username) seen."""

    daemon: Daemon
    token: str
    seen: list[tuple[int, object]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview"}
        with self.daemon.client() as client:
            while not self._stop.is_set():
                response = client.post(
                    "/authenticate", json={**body, "spec": {"token": self.token}}
                )
                user = response.json()["status"].get("user", {})
                self.seen.append((response.status_code, user.get("username")))
                self._stop.wait(0.05)

    def stop(self) -> list[tuple[int, object]]:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=15)
        return list(self.seen)


@dataclass
class Cluster:
    """The fake API server, STS, the daemon, a client for it and the background reviewer."""

    api: FakeApiServer
    standin: StsStandIn
    daemon: Daemon
    client: httpx.Client
    reviewer: Reviewer
    tokens: int = 0

    def username(self) -> object:
        """Who a review of a fresh token of Alice's says she is (None: denied)."""
        self.tokens += 1
        token = self.standin.token(signature=f"{self.tokens:064x}")
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview"}
        response = self.client.post("/authenticate", json={**body, "spec": {"token": token}})
        assert response.status_code == 200, response.text
        return response.json()["status"].get("user", {}).get("username")

    def ready(self) -> tuple[int, str]:
        """/readyz: status and text."""
        response = self.client.get("/readyz")
        return response.status_code, response.text

    def metric(self, name: str) -> float:
        """The CRD backend's sample of `name` (0 when absent)."""
        series = f'{name}{{backend="CRD"}} '
        for line in self.client.get("/metrics").text.splitlines():
            if line.startswith(series):
                return float(line.split()[-1])
        return 0.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A daemon following the fake's IAMIdentityMappings, Alice mapped to `alice`, ready."""
    standin = StsStandIn().start()
    api = FakeApiServer(tokens={ADMIN_TOKEN: ADMIN, AUTHD_TOKEN: AUTHD_USER})
    api.start()
    api.put_object(mapping("alice", ALICE["Arn"], "alice"))
    kubeconfig = api.write_kubeconfig(tmp_path / "authd-kubeconfig.json", token=AUTHD_TOKEN)
    daemon = Daemon(
        [
            f"--kubeconfig={kubeconfig}",
            f"--extra-sts-endpoint={standin.url}",
            "--cluster-id=kube-faults",
            "--backend-mode=CRD",
        ],
        state=tmp_path,
        env=base_env(),
    )
    reviewer = Reviewer(daemon, standin.token())
    try:
        daemon.wait_for("listening")
        with daemon.client() as client:
            found = Cluster(api, standin, daemon, client, reviewer)
            assert found.ready() == (200, "CRD: ok\n")
            assert found.username() == "alice"
            assert api.wait_for_watches(1)
            reviewer.start()
            yield found
            seen = reviewer.stop()
    finally:
        code = daemon.stop()
        api.stop()
        standin.stop()
    assert code == 0
    assert seen, "the background reviewer got no answer"
    refused = [
        answer for answer in seen if answer[0] != 200 or answer[1] not in ("alice", "alice-2")
    ]
    assert not refused, f"{len(refused)} of {len(seen)} reviews not allowed: {refused[:3]}"


def change_alice(api: FakeApiServer) -> None:
    """Another client renames Alice's user (what the daemon must catch up with)."""
    api.put_object(mapping("alice", ALICE["Arn"], "alice-2"))


def caught_up(cluster: Cluster) -> None:
    """Wait (within the backoff bound) until the change is served and the backend is ready."""
    eventually(lambda: cluster.username() == "alice-2" and cluster.ready()[0] == 200)
    assert cluster.ready() == (200, "CRD: ok\n")


def test_api_server_restart_mid_watch_resumes_from_the_last_version(cluster: Cluster) -> None:
    """Killed mid-watch: not ready, reviews served; restarted on the same port with the same
    store, the watch resumes from its resourceVersion (no relist) and the change arrives."""
    api = cluster.api
    errors = cluster.metric("authd_backend_errors_total")
    restarts = cluster.metric("authd_kube_watch_restarts_total")
    api.crash()
    # First the cut watch, then every try to watch again finds nothing listening.
    eventually(lambda: "ConnectError" in cluster.ready()[1])
    status, text = cluster.ready()
    assert status == 503
    assert text.startswith("CRD: degraded, serving the last good mapping: watch failing: ")
    assert cluster.username() == "alice"  # the last good snapshot
    change_alice(api)
    api.start()
    caught_up(cluster)
    assert cluster.metric("authd_kube_relists_total") == 0
    assert cluster.metric("authd_kube_watch_restarts_total") > restarts
    assert cluster.metric("authd_backend_errors_total") > errors


def test_api_server_restart_after_compaction_relists(cluster: Cluster) -> None:
    """Down while its history is compacted: the resumed watch gets 410 Gone, the informer
    lists again (one relist) and the list is the new truth."""
    api = cluster.api
    api.crash()
    eventually(lambda: cluster.ready()[0] == 503)
    change_alice(api)
    api.compact()
    api.start()
    caught_up(cluster)
    assert cluster.metric("authd_kube_relists_total") == 1


def test_stalled_watch_serves_the_snapshot_then_catches_up(cluster: Cluster) -> None:
    """A watch that goes silent: the daemon cannot tell yet (ready, no error), reviews go on
    with the snapshot; once events flow again the queued change is applied."""
    api = cluster.api
    errors = cluster.metric("authd_backend_errors_total")
    api.stall_watches()
    change_alice(api)
    for _ in range(5):
        assert cluster.username() == "alice"
        assert cluster.ready()[0] == 200
        time.sleep(0.1)
    api.release_watches()
    caught_up(cluster)
    assert cluster.metric("authd_backend_errors_total") == errors
    assert cluster.metric("authd_kube_relists_total") == 0


@pytest.mark.parametrize(
    ("fault", "shown"),
    [
        ("401", "401 Unauthorized"),
        ("403", "403 Forbidden"),
        ("500", "500 Internal Server Error: Internal error occurred"),
    ],
)
def test_refusals_and_errors_keep_the_snapshot(cluster: Cluster, fault: str, shown: str) -> None:
    """The API server refuses authd (token gone, RBAC taken away) or fails (500 on every
    request): not ready with the reason, reviews served; fixed, the change arrives."""
    api = cluster.api
    errors = cluster.metric("authd_backend_errors_total")
    if fault == "401":
        api.set_tokens({ADMIN_TOKEN: ADMIN})
    elif fault == "403":
        api.forbid(AUTHD_TOKEN, "list", "watch", resource=PLURAL)
    else:
        api.fail_next(500, count=1_000_000, resource=PLURAL)
    api.drop_watches()  # the open watch was allowed; the next one meets the fault
    eventually(lambda: shown in cluster.ready()[1])
    assert cluster.ready()[0] == 503
    assert cluster.username() == "alice"
    change_alice(api)
    assert cluster.username() == "alice"
    if fault == "500":
        api.clear_failures()
    else:
        api.add_token(AUTHD_TOKEN, AUTHD_USER)  # a fresh user: the grant is back too
    caught_up(cluster)
    assert cluster.metric("authd_backend_errors_total") > errors
    assert cluster.metric("authd_kube_relists_total") == 0


def test_watch_event_that_is_not_json_restarts_the_watch(cluster: Cluster) -> None:
    """A corrupt line on the watch: the watch fails and is opened again from the last version
    the daemon applied (no relist); later changes arrive."""
    api = cluster.api
    errors = cluster.metric("authd_backend_errors_total")
    restarts = cluster.metric("authd_kube_watch_restarts_total")
    api.garble_watches()
    eventually(lambda: cluster.metric("authd_backend_errors_total") > errors)
    assert cluster.username() == "alice"
    change_alice(api)
    caught_up(cluster)
    assert cluster.metric("authd_kube_watch_restarts_total") > restarts
    assert cluster.metric("authd_kube_relists_total") == 0


def test_object_that_does_not_parse_is_refused_alone(cluster: Cluster) -> None:
    """An IAMIdentityMapping whose spec is not a mapping's is left out (counted, logged); the
    others serve; fixed, it is taken in."""
    api = cluster.api
    broken = mapping("bob", "arn:aws:iam::123456789012:user/Bob", "bob")
    broken["spec"] = {"arn": 42, "username": ["not", "a", "string"]}
    api.put_object(broken)
    eventually(lambda: cluster.metric("authd_backend_rejected_entries") == 1)
    assert cluster.username() == "alice"
    [refused] = cluster.daemon.events("IAMIdentityMapping refused")
    assert str(refused["error"]).startswith("iamidentitymappings/bob: "), refused
    assert cluster.ready() == (200, "CRD: ok\n")  # one bad object does not degrade the rest
    change_alice(api)
    caught_up(cluster)
    api.put_object(mapping("bob", "arn:aws:iam::123456789012:user/Bob", "bob"))
    eventually(lambda: cluster.metric("authd_backend_rejected_entries") == 0)
    assert cluster.metric("authd_backend_mappings") == 2
