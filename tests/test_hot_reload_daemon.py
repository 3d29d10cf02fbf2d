"""The real daemon process hot-reloads a ConfigMap-mounted config and a late DynamicFile.

Tokens come from `authd token` for identities made in moto; the daemon asks moto (behind the
signature-checking front) as its STS, so every review below is a real one.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunAuthd
from tests.daemon import Daemon, base_env
from tests.fakes.moto import IamRole, IamUser
from tests.fakes.sts_front import StsFront

CLUSTER = "reload-cluster"


def config_text(user: IamUser, version: int) -> str:
    """Version `version` of the config: the user maps to `u<version>` in group `g<version>`."""
    return (
        f"clusterID: {CLUSTER}\n"
        "server:\n"
        "  mapUsers:\n"
        f"  - userarn: {user.arn}\n"
        f"    username: u{version}\n"
        f"    groups: [g{version}]\n"
    )


BROKEN = f"clusterID: {CLUSTER}\nserver:\n  mapUsers:\n  - userarn: [not, a, string]\n"


class Volume:
    """A ConfigMap volume updated exactly as the kubelet's AtomicWriter does."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self.updates = 0

    @property
    def config(self) -> Path:
        """The user-visible file: a symlink to `..data/config.yaml`."""
        return self.root / "config.yaml"

    def write(self, text: str) -> None:
        """New timestamped dir, `..data_tmp` symlink to it renamed over `..data`, old dir gone."""
        self.updates += 1
        stamp = f"..2026_01_01_00_00_{self.updates:02d}.{self.updates:09d}"
        new_dir = self.root / stamp
        new_dir.mkdir()
        (new_dir / "config.yaml").write_text(text)
        data = self.root / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        os.symlink(stamp, self.root / "..data_tmp")
        os.rename(self.root / "..data_tmp", data)
        if not self.config.is_symlink():
            os.symlink("..data/config.yaml", self.config)
        if old is not None:
            shutil.rmtree(self.root / old)


def authd_token(run_authd: RunAuthd, env: dict[str, str], *args: str) -> str:
    """A token from `authd token --token-only`."""
    out = run_authd(["token", "-i", CLUSTER, "--token-only", *args], env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def review(client: httpx.Client, token: str) -> tuple[int, dict[str, object]]:
    """POST a TokenReview; (status, the answer's status section)."""
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token},
    }
    response = client.post("/authenticate", json=body)
    return response.status_code, response.json()["status"]


@pytest.fixture
def setup(
    tmp_path: Path, sts_front: StsFront, iam_user: IamUser
) -> Iterator[tuple[Daemon, Volume, Path]]:
    """The daemon on a ConfigMap volume, with a DynamicFile whose directory does not exist yet."""
    volume = Volume(tmp_path / "volume")
    volume.write(config_text(iam_user, 1))
    dynamic = tmp_path / "dynamic" / "mappings.json"
    proc = Daemon(
        [
            f"--config={volume.config}",
            f"--extra-sts-endpoint={sts_front.url}",
            "--backend-mode=MountedFile,DynamicFile",
            f"--dynamicfile-path={dynamic}",
        ],
        state=tmp_path,
        env=base_env(),
    )
    proc.wait_for("listening")
    yield proc, volume, dynamic
    assert proc.stop() == 0


def test_configmap_swap_and_late_dynamic_file(
    setup: tuple[Daemon, Volume, Path],
    run_authd: RunAuthd,
    client_env: dict[str, str],
    iam_user: IamUser,
    iam_role: IamRole,
) -> None:
    """The `..data` swap, a DynamicFile that appears later, and a broken edit, all live."""
    daemon, volume, dynamic = setup
    user_token = authd_token(run_authd, client_env | iam_user.env())
    role_token = authd_token(run_authd, client_env | iam_user.env(), "-r", iam_role.arn)
    with daemon.client() as client:
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503
        assert f"DynamicFile: {dynamic}: file does not exist yet" in not_ready.text
        assert review(client, user_token)[1]["user"]["username"] == "u1"  # type: ignore[index]

        volume.write(config_text(iam_user, 2))
        daemon.wait_for("configuration reloaded")
        status, answer = review(client, user_token)
        assert (status, answer["user"]["username"]) == (200, "u2")  # type: ignore[index]

        dynamic.parent.mkdir()
        doc = {"mapRoles": [{"rolearn": iam_role.arn, "username": "dyn", "groups": ["ops"]}]}
        dynamic.write_text(json.dumps(doc))
        daemon.wait_for("dynamic file reloaded")
        assert client.get("/readyz").status_code == 200
        status, answer = review(client, role_token)
        assert (status, answer["user"]["username"]) == (200, "dyn")  # type: ignore[index]

        volume.write(BROKEN)
        [failure] = daemon.wait_for("reload failed; keeping the last good mapping")
        assert (failure["line"], failure["key"]) == (4, "server.mapUsers[0].userarn")
        degraded = client.get("/readyz")
        assert degraded.status_code == 503
        assert "MountedFile: degraded, serving the last good mapping" in degraded.text
        assert "DynamicFile: ok" in degraded.text
        assert review(client, user_token)[1]["user"]["username"] == "u2"  # type: ignore[index]

        volume.write(config_text(iam_user, 3))
        daemon.wait_for("configuration reloaded", count=2)
        assert client.get("/readyz").status_code == 200
        assert review(client, user_token)[1]["user"]["username"] == "u3"  # type: ignore[index]
        metrics = client.get("/metrics").text
    assert 'authd_backend_reloads_total{backend="MountedFile"} 3.0' in metrics
    assert 'authd_backend_reload_errors_total{backend="MountedFile"} 1.0' in metrics
    assert 'authd_backend_mappings{backend="DynamicFile"} 1.0' in metrics
    assert 'authd_backend_reload_latency_seconds_count{backend="MountedFile"} 2.0' in metrics


def test_reviews_in_flight_during_reloads_never_fail(
    setup: tuple[Daemon, Volume, Path],
    run_authd: RunAuthd,
    client_env: dict[str, str],
    iam_user: IamUser,
) -> None:
    """Reviews sent without pause while the config is swapped 30 times (every fifth broken)
    are all allowed, each with the username and group of one single version."""
    daemon, volume, _ = setup
    token = authd_token(run_authd, client_env | iam_user.env())
    stop = threading.Event()
    answers: list[tuple[int, object]] = []
    errors: list[str] = []

    def reviewer() -> None:
        with daemon.client() as client:
            while not stop.is_set():
                try:
                    status, answer = review(client, token)
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                    continue
                answers.append((status, answer.get("user")))

    threads = [threading.Thread(target=reviewer) for _ in range(3)]
    for thread in threads:
        thread.start()
    good = bad = 0
    try:
        for version in range(2, 32):
            if version % 5 == 0:
                volume.write(BROKEN)
                bad += 1
                daemon.wait_for("reload failed; keeping the last good mapping", count=bad)
            else:
                volume.write(config_text(iam_user, version))
                good += 1
                daemon.wait_for("configuration reloaded", count=good)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert errors == []
    assert len(answers) > 30
    versions = set()
    for status, user in answers:
        assert status == 200
        assert isinstance(user, dict)
        number = user["username"].removeprefix("u")
        assert user["groups"] == [f"g{number}"]
        versions.add(int(number))
    assert len(versions) > 5
