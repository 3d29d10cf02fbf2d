"""Local token verification: every spec vector, extra origins, the codec.

See A, C, D in docs/upstream-compat.md.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from authd.arn import PARTITIONS
from authd.errors import ConfigError, TokenFormatError
from authd.token import PREFIX, EndpointPolicy, decode, encode, verify

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "vectors" / "token-verify.json").read_text()
)
FORMAT_PREFIX = "input token was not properly formatted: "
NOW = datetime(2024, 1, 15, 12, 0, 0, tzinfo=UTC)
AWS = EndpointPolicy.create(partition="aws")
SIGNATURE = "ab" * 32


def _wrap(url: str) -> str:
    """Make a token the way the client does, without going through the code under test."""
    return PREFIX + base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")


def _url(origin: str = "https://sts.us-west-2.amazonaws.com", **params: str) -> str:
    """A well-formed presigned URL for `origin`, with parameters overridden or added."""
    query = {
        "Action": "GetCallerIdentity",
        "Version": "2011-06-15",
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": "AKIDEXAMPLE%2F20240115%2Fus-west-2%2Fsts%2Faws4_request",
        "X-Amz-Date": "20240115T115500Z",
        "X-Amz-Expires": "60",
        "X-Amz-SignedHeaders": "host%3Bx-k8s-aws-id",
        "X-Amz-Signature": SIGNATURE,
    }
    query.update(params)
    return f"{origin}/?" + "&".join(f"{key}={value}" for key, value in query.items())


def _error(token: str, policy: EndpointPolicy = AWS, now: datetime = NOW) -> str:
    """Run verify, expecting a format error, and return its text."""
    with pytest.raises(TokenFormatError) as caught:
        verify(token, now=now, policy=policy)
    assert str(caught.value).startswith(FORMAT_PREFIX)
    return str(caught.value)


# Vectors of upstream's D7 ("any well-formed sts.<label>.amazonaws.com passes") that authd
# refuses: a region must be known or configured (docs/upstream-compat.md, D7). Each one passes
# once its region is configured with `--extra-sts-region`.
UNKNOWN_REGION_VECTORS = {"ok_unknown_region_commercial_format": "not-a-region"}


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(vector: dict[str, Any]) -> None:
    """Each spec vector passes, or fails with a format error containing its expected text."""
    policy = EndpointPolicy.create(partition=vector["partition"], region=vector["region"])
    now = datetime.fromisoformat(vector["now"])
    if vector["name"] in UNKNOWN_REGION_VECTORS:
        assert "unexpected hostname" in _error(vector["token"], policy, now)
        policy = EndpointPolicy.create(
            partition=vector["partition"],
            region=vector["region"],
            extra_regions=[UNKNOWN_REGION_VECTORS[vector["name"]]],
        )
    if vector["expect"] == "ok":
        request = verify(vector["token"], now=now, policy=policy)
        assert request.url.partition("?")[2] == vector["url"].partition("?")[2]
        assert request.access_key_id == "AKIAIOSFODNN7EXAMPLE"
    else:
        assert vector["error_contains"] in _error(vector["token"], policy, now)


def test_vectors_cover_every_error_category() -> None:
    """The vector file has at least one case for every error category the spec lists."""
    categories = {v["expect"] for v in VECTORS} - {"ok"}
    assert len(categories) == 17


def test_ok_result_describes_the_request() -> None:
    """A passing token yields the URL to fetch, its host, region label, key and validity."""
    url = _url(**{"X-Amz-Security-Token": "IQo%2Bsecret%3D%3D"})
    request = verify(_wrap(url), now=NOW, policy=AWS)
    assert request.url == url
    assert request.host == "sts.us-west-2.amazonaws.com"
    assert request.region_label == "us-west-2"
    assert request.access_key_id == "AKIDEXAMPLE"
    assert request.signed_at == datetime(2024, 1, 15, 11, 55, tzinfo=UTC)
    assert request.expires_at == request.signed_at + timedelta(minutes=15)
    assert SIGNATURE not in repr(request) and "secret" not in repr(request)


def test_global_endpoint_region_label() -> None:
    """The global endpoint is labelled `global` for the StsRegion metric."""
    request = verify(_wrap(_url("https://sts.amazonaws.com")), now=NOW, policy=AWS)
    assert request.region_label == "global"


def test_fetched_url_is_rebuilt_from_checked_parts() -> None:
    """User info and fragment are dropped and the scheme lower-cased, so nothing else is sent."""
    url = _url("HTTPS://user:pw@sts.us-west-2.amazonaws.com") + "#frag"
    request = verify(_wrap(url), now=NOW, policy=AWS)
    assert request.url == _url()
    assert request.host == "sts.us-west-2.amazonaws.com"


@pytest.mark.parametrize(
    ("origin", "host", "partition"),
    [
        ("https://sts.eu-west-1.amazonaws.com", "sts.eu-west-1.amazonaws.com", "aws"),
        ("https://sts-fips.us-gov-west-1.amazonaws.com", "", "aws-us-gov"),
        ("https://sts.us-gov-west-1.amazonaws.com", "", "aws"),  # same domain, accepted (D7)
        ("https://sts.us-isob-east-1.sc2s.sgov.gov", "", "aws-iso-b"),
        ("https://sts.eu-isoe-west-1.cloud.adc-e.uk", "", "aws-iso-e"),
        ("https://sts.us-isof-south-1.csp.hci.ic.gov", "", "aws-iso-f"),
        ("https://sts.eusc-de-east-1.amazonaws.eu", "", "aws-eusc"),
        ("https://sts-fips.eusc-de-east-1.api.amazonwebservices.eu", "", "aws-eusc"),
    ],
)
def test_partition_hosts_accepted(origin: str, host: str, partition: str) -> None:
    """Regional, FIPS and dual-stack hosts of each partition pass section D."""
    policy = EndpointPolicy.create(partition=partition)
    request = verify(_wrap(_url(origin)), now=NOW, policy=policy)
    assert request.host == (host or origin.removeprefix("https://"))


@pytest.mark.parametrize(
    ("origin", "partition", "message"),
    [
        ("https://sts.us-iso-east-1.api.aws", "aws-iso", 'unexpected hostname "sts.us-iso-'),
        ("https://sts.eu-west-1.amazonaws.com", "aws-iso", "partition {aws-iso} does not"),
        ("https://sts.amazonaws.com", "aws-us-gov", "global endpoint unsupported in partition"),
        ("https://", "aws", "could not parse region for pre-signed URL , host is empty"),
        ("https://sts..amazonaws.com", "aws", "invalid region identifier format provided: "),
        ("https://sts.-x.amazonaws.com", "aws", "invalid region identifier format provided: -x"),
        ("https://STS.us-west-2.amazonaws.com", "aws", 'unexpected hostname "STS.us-west-2'),
    ],
)
def test_partition_hosts_rejected(origin: str, partition: str, message: str) -> None:
    """Hosts outside the verifier's partition, or malformed ones, fail C6 with D's texts."""
    policy = EndpointPolicy.create(partition=partition)
    assert message in _error(_wrap(_url(origin)), policy)


def test_configured_region_host_needs_valid_region() -> None:
    """sts.<region>.<domain> is allowed only for a configured region that is well formed."""
    url = _url("https://sts.local-zone.amazonaws.com.cn")
    ok = EndpointPolicy.create(partition="aws-cn", region="local-zone")
    assert verify(_wrap(url), now=NOW, policy=ok).region_label == "local-zone"
    bad = EndpointPolicy.create(partition="aws-cn", region="local_zone")
    assert "unexpected hostname" in _error(_wrap(url), bad)


def test_invalid_partition_is_a_config_error() -> None:
    """An unknown partition is refused when the policy is built, naming the valid ones."""
    with pytest.raises(ConfigError, match="invalid partition 'aws-moon'"):
        EndpointPolicy.create(partition="aws-moon")
    for partition in PARTITIONS:
        assert EndpointPolicy.create(partition=partition).partition == partition


@pytest.mark.parametrize(
    "origin", ["http://127.0.0.1:4566", "http://127.9.8.7", "http://localhost:80", "http://[::1]:9"]
)
def test_extra_http_origin_on_loopback(origin: str) -> None:
    """A loopback http extra origin passes C5/C6 and keeps its scheme and port in the URL."""
    policy = EndpointPolicy.create(partition="aws", extra_origins=[origin + "/"])
    url = _url(origin)
    request = verify(_wrap(url), now=NOW, policy=policy)
    assert request.url == url
    assert request.region_label == request.host == origin.partition("://")[2]


@pytest.mark.parametrize(
    "origin",
    ["http://10.0.0.5:8080", "http://sts.us-west-2.amazonaws.com", "http://127.0.0.1.nip.io"],
)
def test_extra_http_origin_elsewhere_is_refused(origin: str) -> None:
    """Plain http to a non-loopback host is a configuration error with a clear message."""
    with pytest.raises(ConfigError, match="http is only allowed for loopback hosts"):
        EndpointPolicy.create(partition="aws", extra_origins=[origin])


@pytest.mark.parametrize(
    "origin",
    ["ftp://127.0.0.1", "https://host/path", "https://u@host", "https://host?x=1", "host:443", ""],
)
def test_malformed_extra_origin_is_refused(origin: str) -> None:
    """Only scheme://host[:port] is accepted as an extra origin."""
    with pytest.raises(ConfigError, match=r"expected scheme://host\[:port\]"):
        EndpointPolicy.create(partition="aws", extra_origins=[origin])


def test_extra_https_origin_for_vpc_endpoint() -> None:
    """A configured VPC endpoint host is accepted, and only on the configured scheme and port."""
    vpce = "vpce-0abc-1234.sts.us-west-2.vpce.amazonaws.com"
    policy = EndpointPolicy.create(partition="aws", extra_origins=[f"HTTPS://{vpce.upper()}"])
    request = verify(_wrap(_url(f"https://{vpce}")), now=NOW, policy=policy)
    assert request.host == request.region_label == vpce
    assert "unexpected hostname" in _error(_wrap(_url(f"https://{vpce}:8443")), policy)
    assert 'unexpected scheme "http"' in _error(_wrap(_url(f"http://{vpce}")), policy)


def test_extra_origin_still_runs_the_later_checks() -> None:
    """An extra origin skips only C5/C6: path, query and expiry are still enforced."""
    policy = EndpointPolicy.create(partition="aws", extra_origins=["http://127.0.0.1:1"])
    bad_path = _url("http://127.0.0.1:1").replace("/?", "/x?")
    assert "unexpected path" in _error(_wrap(bad_path), policy)
    old = _url("http://127.0.0.1:1", **{"X-Amz-Date": "20240115T114459Z"})
    assert "expired" in _error(_wrap(old), policy)


def test_encode_decode_round_trip() -> None:
    """encode gives the prefix plus unpadded URL-safe base64, and decode reverses it."""
    for url in ["", "a", "ab", "abc", _url(), _url() + "&x=~?>>>"]:
        token = encode(url)
        assert token.startswith(PREFIX) and "=" not in token
        assert decode(token) == url
    assert encode(_url()) == _wrap(_url())


def test_decode_skips_line_breaks() -> None:
    """CR and LF inside the base64 body are ignored, as Go's decoder does."""
    token = _wrap(_url())
    broken = token[:20] + "\r\n" + token[20:40] + "\n" + token[40:]
    assert decode(broken) == _url()


@pytest.mark.parametrize(
    ("payload", "index"),
    [("abc$", 3), ("ab=", 2), ("a", 0), ("abcde", 4), ("ab\ncd\ne", 6), ("aé", 1), ("ab/c", 2)],
)
def test_base64_error_position(payload: str, index: int) -> None:
    """A bad base64 body is reported at the byte Go reports (first bad byte, or a lone last one)."""
    assert _error(PREFIX + payload).endswith(f"illegal base64 data at input byte {index}")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://sts.us-west-2.amazonaws.com:44x/?", 'invalid port ":44x" after host'),
        ("https://[::1/?", "missing ']' in host"),
        ("https://st s.amazonaws.com/", 'invalid character " " in host name'),
        ("https://sts%2Eamazonaws.com/", 'invalid URL escape "%2E"'),
        ("https://sts.us-west-2.amazonaws.com/%zz", 'invalid URL escape "%zz"'),
        ("https://a\x01b/", "net/url: invalid control character in URL"),
        ("1a:b", "first path segment in URL cannot contain colon"),
        ("https://sts.us-west-2.amazonaws.com/\u00e9", "non-ASCII character in URL"),
    ],
)
def test_url_parse_errors(url: str, message: str) -> None:
    """URLs Go's parser refuses fail C4 with `parse "<url>": <Go's message>`."""
    text = _error(_wrap(url))
    assert text.startswith(f'{FORMAT_PREFIX}parse "') and text.endswith(message)


def test_parse_error_hides_the_signature() -> None:
    """A URL quoted in a parse error has its signature and session token blanked."""
    url = _url(**{"X-Amz-Security-Token": "sessionsecret"}) + "#%zz"
    text = _error(_wrap(url))
    assert "invalid URL escape" in text
    assert SIGNATURE not in text and "sessionsecret" not in text and "REDACTED" in text


def test_opaque_url_has_no_host() -> None:
    """`https:host` parses as an opaque URL with an empty host, failing D1."""
    assert "host is empty" in _error(_wrap("https:sts.amazonaws.com/?Action=x"))


def test_escaped_key_counts_as_duplicate() -> None:
    """Keys are compared unescaped: `%61ction` clashes with `Action`; `%41ction` repeats it."""
    url = _url() + "&%61ction=GetCallerIdentity"
    assert _error(_wrap(url)).endswith('duplicate query parameter found: "action"')
    url = _url() + "&%41ction=GetCallerIdentity"
    assert _error(_wrap(url)).endswith("query parameter with multiple values not supported")


def test_plus_is_a_space_in_query_values() -> None:
    """`+` decodes to a space, so `Get+CallerIdentity` is not the expected action (C8, C11)."""
    assert "unexpected action" in _error(_wrap(_url(Action="GetCaller+Identity")))
    assert verify(_wrap(_url(Action="%47etCallerIdentity")), now=NOW, policy=AWS)


def test_expires_overflow_is_reported_clamped() -> None:
    """An X-Amz-Expires beyond int64 is reported as Go's Atoi leaves it (clamped)."""
    text = _error(_wrap(_url(**{"X-Amz-Expires": "99999999999999999999"})))
    assert text.endswith(": 9223372036854775807")
    assert _error(_wrap(_url(**{"X-Amz-Expires": "+1_0"}))).endswith(": 0")


@pytest.mark.parametrize(
    ("date", "message"),
    [
        ("20241315T115500Z", ": month out of range"),
        ("20240230T115500Z", ": day out of range"),
        ("20240115T245500Z", ": hour out of range"),
        ("20240115T116000Z", ": minute out of range"),
        ("20240115T115560Z", ": second out of range"),
        ("20240115T115500", 'cannot parse "" as "Z"'),
        ("20240115T115500Zx", ': extra text: "x"'),
        ("20240115 115500Z", 'cannot parse " 115500Z" as "T"'),
    ],
)
def test_date_parse_errors(date: str, message: str) -> None:
    """X-Amz-Date faults are reported with Go's time.Parse wording (C15)."""
    text = _error(_wrap(_url(**{"X-Amz-Date": date.replace(" ", "%20")})))
    assert f"error parsing X-Amz-Date parameter {date} into format 20060102T150405Z: " in text
    assert text.endswith(message)


def test_fractional_seconds_are_accepted_like_go() -> None:
    """Go's parser takes a fraction after the seconds; the expiry text shows it as Go would."""
    token = _wrap(_url(**{"X-Amz-Date": "20240115T114459.250Z"}))
    text = _error(token)
    assert text.endswith("(15 minute expiration) 2024-01-15 11:44:59.25 +0000 UTC")
    later = NOW - timedelta(seconds=1)
    assert verify(token, now=later, policy=AWS).signed_at.microsecond == 250000


def test_now_must_be_timezone_aware() -> None:
    """A naive clock is a programming error, refused rather than compared wrongly."""
    with pytest.raises(ValueError, match="timezone-aware"):
        verify(_wrap(_url()), now=NOW.replace(tzinfo=None), policy=AWS)


@pytest.mark.parametrize(
    "host",
    [
        "sts.s3.amazonaws.com",  # S3's host, not STS
        "sts.not-a-region.amazonaws.com",
        "sts-fips.us-moon-1.amazonaws.com",
        "sts.us-moon-1.api.aws",
        "sts." + "a" * 64 + ".amazonaws.com",  # a label idna cannot encode
    ],
)
def test_host_of_an_unknown_region_is_refused(host: str) -> None:
    """Only known (or configured) regions may name an STS host, whatever the pattern allows."""
    assert "unexpected hostname" in _error(_wrap(_url(f"https://{host}")))


@pytest.mark.parametrize(
    "host",
    [
        "sts.us-east-1.amazonaws.com",
        "sts-fips.us-west-2.amazonaws.com",
        "sts.eu-west-1.api.aws",
        "sts.us-gov-west-1.amazonaws.com",
        "sts.amazonaws.com",
    ],
)
def test_hosts_of_known_regions_pass(host: str) -> None:
    """Regional, FIPS, dual-stack and global hosts of known regions pass in partition aws."""
    assert verify(_wrap(_url(f"https://{host}")), now=NOW, policy=AWS).host == host


def test_a_new_region_is_added_by_configuration() -> None:
    """A region newer than the built-in list passes once configured, with its own label."""
    token = _wrap(_url("https://sts.us-moon-1.amazonaws.com"))
    assert "unexpected hostname" in _error(token)
    policy = EndpointPolicy.create(partition="aws", extra_regions=[" us-moon-1 "])
    assert verify(token, now=NOW, policy=policy).region_label == "us-moon-1"
    fips = _wrap(_url("https://sts-fips.us-moon-1.amazonaws.com"))
    assert verify(fips, now=NOW, policy=policy).region_label == "us-moon-1"


@pytest.mark.parametrize("name", ["", "-x", "a_b", "a" * 64, "us.east"])
def test_malformed_extra_region_is_a_config_error(name: str) -> None:
    """A configured region must be one DNS label; anything else fails at start."""
    with pytest.raises(ConfigError, match="is not a valid region name"):
        EndpointPolicy.create(partition="aws", extra_regions=[name])


def test_extra_origin_label_is_the_configured_origin_in_lower_case() -> None:
    """An extra origin's StsRegion label is its configured host, whatever case the token uses."""
    policy = EndpointPolicy.create(partition="aws", extra_origins=["https://VPCE.example.com"])
    token = _wrap(_url("https://vPcE.Example.com"))
    assert verify(token, now=NOW, policy=policy).region_label == "vpce.example.com"


@pytest.mark.parametrize("char", list(' "<>\\^`{|}[]'))
def test_query_bytes_outside_rfc3986_are_malformed(char: str) -> None:
    """A query byte RFC 3986 does not allow is a local format error, never sent to STS."""
    token = _wrap(_url(**{"X-Amz-Signature": f"ab{char}cd"}))
    assert _error(token).endswith("malformed query parameter")


def test_future_date_does_not_extend_validity() -> None:
    """A token dated in the future expires 15 minutes after now, not after its own date."""
    token = _wrap(_url(**{"X-Amz-Date": "20240116T120000Z"}))  # a day after NOW
    request = verify(token, now=NOW, policy=AWS)
    assert request.expires_at == NOW + timedelta(minutes=15)
    assert request.signed_at == datetime(2024, 1, 16, 12, 0, tzinfo=UTC)
