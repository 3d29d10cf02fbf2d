"""Upstream's credential cache, shared with the Go tool file for file.

See B11 in docs/upstream-compat.md.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from authd.client.credcache import CredentialCache, default_path
from authd.client.presign import AwsCredentials
from tests.conftest import RunAuthd
from tests.fakes.moto import IamUser, caller_identity

CLUSTER = "credcache-cluster"


def cache_file(env: dict[str, str]) -> Path:
    """The default credential cache path under the client's HOME."""
    return Path(env["HOME"]) / ".kube" / "cache" / "aws-iam-authenticator" / "credentials.yaml"


def go_written_cache(user: IamUser, *, expires: str, cluster: str = CLUSTER) -> str:
    """A cache file as the Go tool writes it (yaml.v2 of aws.Credentials, lower-cased keys)."""
    return (
        "clusters:\n"
        f"  {cluster}:\n"
        "    default:\n"
        '      "":\n'
        f"        accesskeyid: {user.access_key_id}\n"
        f"        secretaccesskey: {user.secret_access_key}\n"
        '        sessiontoken: ""\n'
        "        source: SSOProvider\n"
        "        canexpire: true\n"
        f"        expires: {expires}\n"
        '        accountid: "123456789012"\n'
        "  some-other-cluster:\n"
        "    dev:\n"
        "      arn:aws:iam::123456789012:role/x:\n"
        "        accesskeyid: ASIAOTHER\n"
        "        secretaccesskey: other\n"
        "        sessiontoken: tok\n"
        "        source: AssumeRoleProvider\n"
        "        canexpire: true\n"
        "        expires: 2030-01-02T03:04:05.123456789Z\n"
        '        accountid: ""\n'
    )


def write_private(path: Path, text: str) -> None:
    """Create `path` (and 0700 parents) with mode 0600, as the Go tool does."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)


def test_reads_a_cache_written_by_the_go_tool(
    run_authd: RunAuthd, client_env: dict[str, str], iam_user: IamUser
) -> None:
    """With no other credentials, an unexpired Go-written entry signs the token."""
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.123456789Z")
    write_private(cache_file(client_env), go_written_cache(iam_user, expires=future))
    done = run_authd(["token", "-i", CLUSTER, "--cache", "--token-only"], client_env)
    assert done.returncode == 0, done.stderr
    assert caller_identity(done.stdout.strip(), CLUSTER).arn == iam_user.arn


def test_expired_entry_is_not_used(
    run_authd: RunAuthd, client_env: dict[str, str], iam_user: IamUser
) -> None:
    """An expired entry is ignored; with nothing else configured there are no credentials."""
    write_private(
        cache_file(client_env), go_written_cache(iam_user, expires="2020-01-01T00:00:00Z")
    )
    done = run_authd(["token", "-i", CLUSTER, "--cache"], client_env)
    assert done.returncode == 1
    assert "no AWS credentials found" in done.stderr


def test_cache_file_env_override(
    run_authd: RunAuthd, client_env: dict[str, str], iam_user: IamUser, tmp_path: Path
) -> None:
    """AWS_IAM_AUTHENTICATOR_CACHE_FILE points at another file."""
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    elsewhere = tmp_path / "elsewhere" / "creds.yaml"
    write_private(elsewhere, go_written_cache(iam_user, expires=future))
    env = client_env | {"AWS_IAM_AUTHENTICATOR_CACHE_FILE": str(elsewhere)}
    done = run_authd(["token", "-i", CLUSTER, "--cache", "--token-only"], env)
    assert done.returncode == 0, done.stderr
    assert caller_identity(done.stdout.strip(), CLUSTER).arn == iam_user.arn
    assert default_path(env) == elsewhere


def test_not_private_file_is_refused_with_upstreams_message(
    run_authd: RunAuthd, client_env: dict[str, str], iam_user: IamUser
) -> None:
    """A group-readable cache: `unable to use cache: ... is not private`, token still made."""
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    other = IamUser(name="x", arn="x", access_key_id="AKIANOTUSED", secret_access_key="nope")
    path = cache_file(client_env)
    write_private(path, go_written_cache(other, expires=future))
    path.chmod(0o640)
    done = run_authd(
        ["token", "-i", CLUSTER, "--cache", "--token-only"], client_env | iam_user.env()
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == f"unable to use cache: cache file {path} is not private\n"
    assert caller_identity(done.stdout.strip(), CLUSTER).arn == iam_user.arn


def test_unparseable_file_is_refused(
    run_authd: RunAuthd, client_env: dict[str, str], iam_user: IamUser
) -> None:
    """A cache that is not YAML: `unable to use cache: unable to parse file ...`."""
    path = cache_file(client_env)
    write_private(path, "clusters: [unclosed\n")
    done = run_authd(["token", "-i", CLUSTER, "--cache"], client_env | iam_user.env())
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith(f"unable to use cache: unable to parse file {path}: ")
    assert done.stderr.count("\n") == 1


def test_held_lock_times_out_after_a_second(
    run_authd: RunAuthd, client_env: dict[str, str], iam_user: IamUser
) -> None:
    """While another process holds the write lock, reading gives up after about 1 s."""
    path = cache_file(client_env)
    write_private(path, "clusters: {}\n")
    with open(path) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        started = time.monotonic()
        done = run_authd(["token", "-i", CLUSTER, "--cache"], client_env | iam_user.env())
        waited = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert done.stderr == f"unable to use cache: unable to read lock file {path}: timed out\n"
    assert waited >= 0.75


def test_expiring_credentials_are_written_back_and_reused(
    run_authd: RunAuthd, client_env: dict[str, str], iam_user: IamUser
) -> None:
    """credential_process credentials that expire are cached; the next run does not run it."""
    home = Path(client_env["HOME"])
    counter = home / "calls"
    expiry = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    answer = {
        "Version": 1,
        "AccessKeyId": iam_user.access_key_id,
        "SecretAccessKey": iam_user.secret_access_key,
        "Expiration": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    script = home / "creds.sh"
    script.write_text(f"#!/bin/sh\necho x >> {counter}\ncat <<'EOF'\n{json.dumps(answer)}\nEOF\n")
    script.chmod(0o700)
    (home / ".aws").mkdir()
    (home / ".aws" / "config").write_text(f"[default]\ncredential_process = {script}\n")

    first = run_authd(["token", "-i", CLUSTER, "--cache", "--token-only"], client_env)
    assert first.returncode == 0, first.stderr
    assert counter.read_text().count("x") == 1
    path = cache_file(client_env)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    text = path.read_text()
    assert f"expires: {expiry.strftime('%Y-%m-%dT%H:%M:%SZ')}\n" in text  # unquoted, as Go reads
    entry = yaml.safe_load(text)["clusters"][CLUSTER]["default"][""]
    assert set(entry) == {
        "accesskeyid",
        "secretaccesskey",
        "sessiontoken",
        "source",
        "canexpire",
        "expires",
        "accountid",
    }
    assert entry["accesskeyid"] == iam_user.access_key_id
    assert entry["canexpire"] is True

    # Drop authd's own token cache so the next run has to sign again.
    shutil.rmtree(Path(client_env["HOME"]) / ".kube" / "cache" / "aws-iam-authenticator" / "tokens")
    second = run_authd(["token", "-i", CLUSTER, "--cache", "--token-only"], client_env)
    assert second.returncode == 0, second.stderr
    assert counter.read_text().count("x") == 1  # the process was not run again
    assert caller_identity(second.stdout.strip(), CLUSTER).arn == iam_user.arn


def test_static_credentials_are_not_written(
    run_authd: RunAuthd, client_env: dict[str, str], iam_user: IamUser
) -> None:
    """Credentials that cannot expire (static keys from ~/.aws/credentials) are never written
    to the cache, though the run reads it, misses, and resolves credentials through the chain."""
    home = Path(client_env["HOME"])
    write_private(
        home / ".aws" / "credentials",
        f"[default]\naws_access_key_id = {iam_user.access_key_id}\n"
        f"aws_secret_access_key = {iam_user.secret_access_key}\n",
    )
    path = cache_file(client_env)
    other = IamUser(name="x", arn="x", access_key_id="AKIAOTHER", secret_access_key="other")
    before = go_written_cache(other, expires="2030-01-01T00:00:00Z", cluster="another-cluster")
    write_private(path, before)
    done = run_authd(["token", "-i", CLUSTER, "--cache", "--token-only"], client_env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # the cache was usable: nothing kept the run from writing to it
    assert caller_identity(done.stdout.strip(), CLUSTER).arn == iam_user.arn
    assert path.read_text() == before


def test_put_keeps_other_entries_readable_by_go(tmp_path: Path) -> None:
    """Writing one entry keeps the Go tool's other entries, timestamps still unquoted."""
    path = tmp_path / "credentials.yaml"
    user = IamUser(name="u", arn="a", access_key_id="AKIAFIRST", secret_access_key="s1")
    write_private(path, go_written_cache(user, expires="2030-01-01T00:00:00Z"))
    cache = CredentialCache.open(path, cluster_id="new-cluster", profile="dev", role_arn="r")
    assert cache.get(now=datetime.now(UTC)) is None
    expires = datetime(2031, 2, 3, 4, 5, 6, tzinfo=UTC)
    cache.put(
        AwsCredentials(
            access_key_id="ASIANEW",
            secret_access_key="s2",
            session_token="t2",
            source="sso",
            expires=expires,
            account_id="123456789012",
        )
    )
    text = path.read_text()
    assert "expires: 2030-01-01T00:00:00Z" in text
    assert "expires: 2031-02-03T04:05:06Z" in text
    assert "expires: 2030-01-02T03:04:05.123456Z" in text  # Go's nanoseconds, to microseconds
    reread = CredentialCache.open(path, cluster_id="new-cluster", profile="dev", role_arn="r")
    got = reread.get(now=datetime(2031, 2, 3, 4, 5, 5, tzinfo=UTC))
    assert got is not None
    assert (got.access_key_id, got.session_token, got.expires) == ("ASIANEW", "t2", expires)
    assert reread.get(now=expires) is None  # Go's Expired(): not after `expires`
    first = CredentialCache.open(path, cluster_id=CLUSTER, profile="default", role_arn="")
    assert first.get(now=datetime(2029, 1, 1, tzinfo=UTC)) is not None
    assert os.stat(path).st_mode & 0o777 == 0o600
