"""authd.client.presign: endpoint and region resolution, URL layout, the signature STS checks."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from authd import token as tokens
from authd.client.options import TokenOptions
from authd.client.presign import (
    USER_AGENT,
    AwsCredentials,
    AwsSettings,
    Endpoint,
    get_token,
    load_settings,
    make_token,
    order_query,
    presign_url,
    resolve_endpoint,
    resolve_region,
)
from authd.errors import ClientError
from tests.fakes.moto import IamRole, IamUser, caller_identity
from tests.fakes.sts_front import StsFront, query_signature

KEYS = AwsCredentials(
    access_key_id="AKIAIOSFODNN7EXAMPLE",
    secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
)


@pytest.mark.parametrize(
    ("region", "fips", "dualstack", "url"),
    [
        ("us-west-2", False, False, "https://sts.us-west-2.amazonaws.com"),
        ("us-east-1", False, False, "https://sts.us-east-1.amazonaws.com"),
        ("cn-north-1", False, False, "https://sts.cn-north-1.amazonaws.com.cn"),
        ("cn-northwest-1", False, False, "https://sts.cn-northwest-1.amazonaws.com.cn"),
        ("us-gov-west-1", False, False, "https://sts.us-gov-west-1.amazonaws.com"),
        ("us-gov-east-1", True, False, "https://sts.us-gov-east-1.amazonaws.com"),
        ("us-west-2", True, False, "https://sts-fips.us-west-2.amazonaws.com"),
        ("us-west-2", False, True, "https://sts.us-west-2.api.aws"),
        ("us-west-2", True, True, "https://sts-fips.us-west-2.api.aws"),
        ("cn-north-1", False, True, "https://sts.cn-north-1.api.amazonwebservices.com.cn"),
        ("us-iso-east-1", False, False, "https://sts.us-iso-east-1.c2s.ic.gov"),
        ("eu-west-1", False, False, "https://sts.eu-west-1.amazonaws.com"),
    ],
)
def test_regional_endpoint_per_partition(
    region: str, fips: bool, dualstack: bool, url: str
) -> None:
    """Every partition gets its own regional host; FIPS and dual-stack variants apply."""
    settings = AwsSettings(profile="default", use_fips=fips, use_dualstack=dualstack)
    assert resolve_endpoint(region, settings) == Endpoint(url=url, signing_region=region)


def test_legacy_sts_regional_endpoints_uses_global_host() -> None:
    """AWS_STS_REGIONAL_ENDPOINTS=legacy signs for sts.amazonaws.com in us-east-1, as botocore."""
    legacy = AwsSettings(profile="default", sts_regional_endpoints="legacy")
    assert resolve_endpoint("us-west-2", legacy) == Endpoint(
        url="https://sts.amazonaws.com", signing_region="us-east-1"
    )
    # Newer regions and other partitions never had a global endpoint.
    assert resolve_endpoint("cn-north-1", legacy).url == "https://sts.cn-north-1.amazonaws.com.cn"


def test_invalid_region_is_a_client_error() -> None:
    """A region that cannot be a host label is refused with a clear error."""
    for region in ("not a region!", "a/b", "", "-x"):
        with pytest.raises(ClientError, match="invalid region"):
            resolve_endpoint(region, AwsSettings(profile="default"))


def test_configured_endpoint_precedence(tmp_path: Path) -> None:
    """AWS_ENDPOINT_URL_STS, services section, AWS_ENDPOINT_URL, profile endpoint_url, in order."""
    config = tmp_path / "config"
    config.write_text(
        "[profile p]\nendpoint_url = https://profile.example\nservices = s\n"
        "region = ap-south-1\nsts_regional_endpoints = legacy\n"
        "[services s]\nsts =\n  endpoint_url = https://services.example\n"
    )
    env = {"AWS_CONFIG_FILE": str(config), "AWS_PROFILE": "p", "HOME": str(tmp_path)}
    full = env | {
        "AWS_ENDPOINT_URL_STS": "https://sts-env.example",
        "AWS_ENDPOINT_URL": "https://all-env.example",
    }
    assert load_settings(full).endpoint_url == "https://sts-env.example"
    del full["AWS_ENDPOINT_URL_STS"]
    assert load_settings(full).endpoint_url == "https://services.example"
    config.write_text(config.read_text().replace("services = s\n", ""))
    assert load_settings(full).endpoint_url == "https://all-env.example"
    settings = load_settings(env)
    assert settings.endpoint_url == "https://profile.example"
    assert settings.profile_region == "ap-south-1"
    assert settings.sts_regional_endpoints == "legacy"
    ignoring = load_settings(full | {"AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"})
    assert ignoring.endpoint_url == ""
    assert resolve_endpoint("eu-west-1", settings) == Endpoint(
        url="https://profile.example", signing_region="eu-west-1"
    )


def test_bad_sts_regional_endpoints_value(tmp_path: Path) -> None:
    """An unknown sts_regional_endpoints value is refused, naming the value."""
    with pytest.raises(ClientError, match='invalid sts_regional_endpoints value "sometimes"'):
        load_settings({"HOME": str(tmp_path), "AWS_STS_REGIONAL_ENDPOINTS": "sometimes"})


def test_unparseable_aws_config_is_a_client_error(tmp_path: Path) -> None:
    """A broken ~/.aws/config is reported with its path."""
    config = tmp_path / "config"
    config.write_text("[profile p\nregion = x\n")
    with pytest.raises(ClientError, match=f"cannot read AWS config file {config}"):
        load_settings({"HOME": str(tmp_path), "AWS_CONFIG_FILE": str(config)})


def test_region_order(tmp_path: Path) -> None:
    """Region: flag, AWS_REGION, AWS_DEFAULT_REGION, profile, then us-east-1 (IMDS off)."""
    profile = AwsSettings(profile="default", profile_region="eu-north-1")
    env = {"AWS_REGION": "eu-west-3", "AWS_DEFAULT_REGION": "eu-west-2"}
    off = {"AWS_EC2_METADATA_DISABLED": "true"}
    assert resolve_region("sa-east-1", env | off, profile) == "sa-east-1"
    assert resolve_region("", env | off, profile) == "eu-west-3"
    assert resolve_region("", {"AWS_DEFAULT_REGION": "eu-west-2"} | off, profile) == "eu-west-2"
    assert resolve_region("", off, profile) == "eu-north-1"
    assert resolve_region("", off, AwsSettings(profile="default")) == "us-east-1"


def test_region_from_instance_metadata(sts_front: StsFront) -> None:
    """With no region configured, the region is asked of instance metadata (moto serves it)."""
    before = len(sts_front.seen)
    env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": sts_front.url + "/"}
    assert resolve_region("", env, AwsSettings(profile="default")) == "us-east-1"
    paths = [seen.path for seen in sts_front.seen[before:]]
    assert "/latest/meta-data/placement/region" in paths


def test_signature_is_what_sts_recomputes() -> None:
    """The signature in the URL equals an independent SigV4 computation over host + cluster ID."""
    endpoint = Endpoint(url="https://sts.eu-west-1.amazonaws.com", signing_region="eu-west-1")
    url = presign_url(KEYS, cluster_id="my-cluster", endpoint=endpoint)
    parts = urlsplit(url)
    params = parse_qsl(parts.query)

    def recompute(cluster: str, secret: str) -> str:
        headers = {"host": parts.netloc, "x-k8s-aws-id": cluster}
        return query_signature(
            method="GET", path=parts.path, params=params, headers=headers, secret=secret
        )

    signature = dict(params)["X-Amz-Signature"]
    assert recompute("my-cluster", KEYS.secret_access_key) == signature
    assert recompute("other-cluster", KEYS.secret_access_key) != signature
    assert recompute("my-cluster", "another-secret") != signature


def test_temporary_credentials_add_security_token_in_order() -> None:
    """A session token is carried as X-Amz-Security-Token, sorted before SignedHeaders."""
    temporary = AwsCredentials(
        access_key_id="ASIAEXAMPLE", secret_access_key="s", session_token="tok/en+="
    )
    endpoint = Endpoint(url="https://sts.us-east-1.amazonaws.com", signing_region="us-east-1")
    url = presign_url(temporary, cluster_id="c", endpoint=endpoint)
    names = [piece.split("=", 1)[0] for piece in urlsplit(url).query.split("&")]
    assert names[-3:] == ["X-Amz-Security-Token", "X-Amz-SignedHeaders", "X-Amz-Signature"]
    assert dict(parse_qsl(urlsplit(url).query))["X-Amz-Security-Token"] == "tok/en+="


def test_order_query_puts_signature_last() -> None:
    """Parameters are sorted by name, the signature last; values are untouched."""
    url = "https://h/?X-Amz-Signature=s&b=2&Action=A&X-Amz-Date=d&a=%2F"
    assert order_query(url) == "https://h/?Action=A&X-Amz-Date=d&a=%2F&b=2&X-Amz-Signature=s"


def test_token_codec_round_trip() -> None:
    """Tokens are unpadded URL-safe base64 of the URL behind the k8s-aws-v1. prefix."""
    for url in ("https://sts.amazonaws.com/?a=b", "https://x/?q=~~~>>>???", "h"):
        token = tokens.encode(url)
        assert token.startswith("k8s-aws-v1.")
        assert "=" not in token
        assert "+" not in token
        assert "/" not in token
        assert tokens.decode(token) == url


def test_make_token_expiry_follows_signing_time() -> None:
    """The token is offered for 14 minutes after its X-Amz-Date."""
    endpoint = Endpoint(url="https://sts.us-east-1.amazonaws.com", signing_region="us-east-1")
    token = make_token(KEYS, cluster_id="c", endpoint=endpoint)
    query = dict(parse_qsl(urlsplit(tokens.decode(token.token)).query))
    assert token.expiration.strftime("%Y%m%dT%H%M%SZ") > query["X-Amz-Date"]
    assert (token.expiration.timestamp() - _amz(query["X-Amz-Date"])) == 14 * 60
    assert token.credentials_expire is None


def _amz(value: str) -> float:
    from datetime import UTC, datetime

    return datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()


def test_assume_role_sends_authenticator_user_agent(
    sts_front: StsFront, iam_user: IamUser, iam_role: IamRole, tmp_path: Path
) -> None:
    """AssumeRole calls carry `aws-iam-authenticator/<version>` in the user agent.

    See B6 in docs/upstream-compat.md.
    """
    env = {
        "HOME": str(tmp_path),
        "AWS_ENDPOINT_URL_STS": sts_front.url,
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    } | iam_user.env()
    before = len(sts_front.seen)
    token = get_token(
        TokenOptions(cluster_id="c", role_arn=iam_role.arn, session_name="sess"), env=env
    )
    calls = [seen for seen in sts_front.seen[before:] if seen.action == "AssumeRole"]
    assert len(calls) == 1
    assert USER_AGENT in calls[0].user_agent
    assert caller_identity(token.token, "c").arn == iam_role.assumed_arn("sess")
    assert token.credentials_expire is not None
