"""authd's token cache (`--cache`): reuse, expiry, keys that never cross, bad files ignored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from authd.client.options import TokenOptions
from authd.client.tokencache import TokenCache, TokenKey
from tests.conftest import RunAuthd
from tests.fakes.moto import IamRole, IamUser, MotoAws, caller_identity
from tests.fakes.sts_front import StsFront

CLUSTER = "cache-cluster"


def tokens_dir(env: dict[str, str]) -> Path:
    """Where the client keeps its token cache."""
    return Path(env["HOME"]) / ".kube" / "cache" / "aws-iam-authenticator" / "tokens"


def cached_token(run_authd: RunAuthd, env: dict[str, str], *args: str) -> tuple[str, str]:
    """Run `authd token --cache --token-only ARGS` and return (token, stderr)."""
    done = run_authd(["token", "--cache", "--token-only", *args], env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip(), done.stderr


def assume_calls(front: StsFront, since: int) -> int:
    """How many AssumeRole calls reached STS since `since`."""
    return front.actions()[since:].count("AssumeRole")


def test_hit_reuses_token_without_calling_sts(
    run_authd: RunAuthd,
    client_env: dict[str, str],
    iam_user: IamUser,
    iam_role: IamRole,
    sts_front: StsFront,
) -> None:
    """The second run prints the same token without AssumeRole; apiVersion still follows env."""
    env = client_env | iam_user.env()
    args = ["token", "--cache", "-i", CLUSTER, "-r", iam_role.arn]
    before = len(sts_front.seen)
    first = run_authd(args, env)
    assert first.returncode == 0, first.stderr
    v1 = {"KUBERNETES_EXEC_INFO": '{"apiVersion":"client.authentication.k8s.io/v1"}'}
    second = run_authd(args, env | v1)
    assert second.returncode == 0, second.stderr
    assert assume_calls(sts_front, before) == 1
    one, two = json.loads(first.stdout), json.loads(second.stdout)
    assert one["status"] == two["status"]
    assert two["apiVersion"] == "client.authentication.k8s.io/v1"
    assert caller_identity(one["status"]["token"], CLUSTER).arn.startswith(iam_role.assumed_arn(""))
    files = list(tokens_dir(env).iterdir())
    assert len(files) == 1
    assert files[0].stat().st_mode & 0o777 == 0o600
    assert tokens_dir(env).stat().st_mode & 0o777 == 0o700
    assert len(files[0].name) == 64  # a SHA-256


def test_hit_imports_nothing_heavy(
    client_env: dict[str, str], iam_user: IamUser, run_authd: RunAuthd
) -> None:
    """A cache hit loads neither botocore nor urllib3 nor PyYAML (python -X importtime)."""
    env = client_env | iam_user.env()
    cached_token(run_authd, env, "-i", CLUSTER)
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "authd", "token", "-i", CLUSTER, "--cache"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()]
    assert "authd.client.tokencache" in imported  # the measurement works
    heavy = [m for m in imported if m.split(".")[0] in ("botocore", "urllib3", "yaml", "dateutil")]
    assert heavy == []
    assert "authd.client.presign" not in imported


def test_keys_never_cross(
    run_authd: RunAuthd,
    client_env: dict[str, str],
    iam_user: IamUser,
    iam_role: IamRole,
    moto_aws: MotoAws,
) -> None:
    """Another cluster, role, profile or access key never gets a token cached for the first."""
    env = client_env | iam_user.env()
    other_user = moto_aws.create_user("other")
    base, _ = cached_token(run_authd, env, "-i", CLUSTER)
    other_cluster, _ = cached_token(run_authd, env, "-i", "cluster-two")
    with_role, _ = cached_token(run_authd, env, "-i", CLUSTER, "-r", iam_role.arn)
    profiled, _ = cached_token(run_authd, env | {"AWS_PROFILE": "p2"}, "-i", CLUSTER)
    other_key, _ = cached_token(run_authd, client_env | other_user.env(), "-i", CLUSTER)
    assert caller_identity(base, CLUSTER).arn == iam_user.arn
    assert caller_identity(other_cluster, "cluster-two").arn == iam_user.arn
    assert caller_identity(other_cluster, CLUSTER).status == 403
    assert caller_identity(with_role, CLUSTER).arn.startswith(iam_role.assumed_arn(""))
    assert caller_identity(other_key, CLUSTER).arn == other_user.arn
    assert caller_identity(profiled, CLUSTER).status == 200
    assert len(set(os.listdir(tokens_dir(env)))) == 5


def test_foreign_corrupt_and_public_files_are_ignored(
    run_authd: RunAuthd,
    client_env: dict[str, str],
    iam_user: IamUser,
    iam_role: IamRole,
    sts_front: StsFront,
) -> None:
    """A file of another key, garbage, or a group-readable file: warning, fresh token, exit 0."""
    env = client_env | iam_user.env()
    cached_token(run_authd, env, "-i", CLUSTER)
    mine = next(tokens_dir(env).iterdir())
    role_args = ("-i", CLUSTER, "-r", iam_role.arn)
    cached_token(run_authd, env, *role_args)
    (theirs,) = set(tokens_dir(env).iterdir()) - {mine}
    user_token = mine.read_text()

    theirs.write_text(user_token)  # the user's token planted under the role's key
    before = len(sts_front.seen)
    planted, warning = cached_token(run_authd, env, *role_args)
    assert warning == f"ignoring token cache file {theirs}: written for another key\n"
    assert assume_calls(sts_front, before) == 1
    assert caller_identity(planted, CLUSTER).arn.startswith(iam_role.assumed_arn(""))

    theirs.write_bytes(b"\x00garbage{")
    _, warning = cached_token(run_authd, env, *role_args)
    assert warning == f"ignoring token cache file {theirs}: not valid JSON\n"

    theirs.chmod(0o644)
    before = len(sts_front.seen)
    _, warning = cached_token(run_authd, env, *role_args)
    assert warning == f"ignoring token cache file {theirs}: not a private file owned by this user\n"
    assert assume_calls(sts_front, before) == 1
    assert theirs.stat().st_mode & 0o777 == 0o600  # replaced by a private file


def test_aws_config_change_invalidates(
    run_authd: RunAuthd,
    client_env: dict[str, str],
    iam_user: IamUser,
    iam_role: IamRole,
    sts_front: StsFront,
) -> None:
    """Touching ~/.aws/config or ~/.aws/credentials makes the next run sign afresh."""
    env = client_env | iam_user.env()
    aws = Path(env["HOME"]) / ".aws"
    aws.mkdir()
    (aws / "config").write_text("[default]\n")
    args = ("-i", CLUSTER, "-r", iam_role.arn)
    before = len(sts_front.seen)
    cached_token(run_authd, env, *args)
    cached_token(run_authd, env, *args)
    assert assume_calls(sts_front, before) == 1
    stamp = (aws / "config").stat().st_mtime_ns
    os.utime(aws / "config", ns=(stamp + 10**9, stamp + 10**9))
    cached_token(run_authd, env, *args)
    assert assume_calls(sts_front, before) == 2
    (aws / "credentials").write_text("")  # a file appearing counts as a change too
    cached_token(run_authd, env, *args)
    cached_token(run_authd, env, *args)
    assert assume_calls(sts_front, before) == 3


def key(cluster: str = CLUSTER) -> TokenKey:
    """A key with a given cluster."""
    options = TokenOptions(cluster_id=cluster)
    return TokenKey.build(options, env={"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE"})


def test_expiry_boundary(tmp_path: Path) -> None:
    """A token is reused until exactly one minute before its expirationTimestamp."""
    cache = TokenCache(directory=tmp_path / "tokens")
    signed = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    expiry = signed + timedelta(minutes=14)
    warnings: list[str] = []
    cache.store(
        key(),
        token="k8s-aws-v1.abc",
        expiration=expiry,
        credentials_expire=None,
        warn=warnings.append,
    )
    hit = cache.load(key(), now=expiry - timedelta(seconds=61), warn=warnings.append)
    assert hit is not None
    assert (hit.token, hit.expiration) == ("k8s-aws-v1.abc", expiry)
    assert cache.load(key(), now=expiry - timedelta(seconds=60), warn=warnings.append) is None
    assert cache.load(key(), now=signed, warn=warnings.append) is not None
    assert cache.load(key("other"), now=signed, warn=warnings.append) is None
    assert warnings == []


def test_credentials_expiry_caps_reuse(tmp_path: Path) -> None:
    """A token signed by credentials that expire sooner is reused only until a minute before."""
    cache = TokenCache(directory=tmp_path / "tokens")
    signed = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    credentials_end = signed + timedelta(minutes=5)
    cache.store(
        key(),
        token="k8s-aws-v1.abc",
        expiration=signed + timedelta(minutes=14),
        credentials_expire=credentials_end,
        warn=print,
    )
    assert cache.load(key(), now=credentials_end - timedelta(seconds=61), warn=print) is not None
    assert cache.load(key(), now=credentials_end - timedelta(seconds=60), warn=print) is None


def test_implausible_times_are_refused(tmp_path: Path) -> None:
    """A file claiming a token valid for hours is treated as foreign, with a warning."""
    cache = TokenCache(directory=tmp_path / "tokens")
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    cache.store(
        key(),
        token="k8s-aws-v1.abc",
        expiration=now + timedelta(hours=3),
        credentials_expire=None,
        warn=print,
    )
    warnings: list[str] = []
    assert cache.load(key(), now=now, warn=warnings.append) is None
    assert warnings == [f"ignoring token cache file {cache.path_for(key())}: inconsistent times"]


def test_unwritable_cache_warns_and_goes_on(
    run_authd: RunAuthd, client_env: dict[str, str], iam_user: IamUser
) -> None:
    """If the token cache cannot be written the token is still printed, with a warning."""
    env = client_env | iam_user.env()
    blocker = Path(env["HOME"]) / ".kube"
    blocker.write_text("a file where a directory should be")
    done = run_authd(["token", "--cache", "-i", CLUSTER, "--token-only"], env)
    assert done.returncode == 0, done.stderr
    assert caller_identity(done.stdout.strip(), CLUSTER).arn == iam_user.arn
    assert "cannot write token cache" in done.stderr
