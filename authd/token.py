"""Decode `k8s-aws-v1.` tokens and check the presigned STS URL inside.

See A, C, D in docs/upstream-compat.md.

Pure: standard library only, and the clock is an argument. `verify` runs upstream's checks in
upstream's order and fails with upstream's texts, because operators search logs for them. It
never talks to STS; `authd.server.sts.client` sends the request `verify` returns.

Where Go's `net/url` and Python's `urllib` disagree, this module follows Go, since the upstream
verifier is what tokens were written for. The URL handed on is rebuilt from the checked pieces
(scheme, allowed host, `/`, raw query), so the HTTP client cannot reach any host but the one
that passed the allowlist.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote, unquote_plus, urlsplit

from authd.errors import ConfigError, TokenFormatError
from authd.gotext import go_quote as _quote
from authd.regions import KNOWN_REGIONS

PREFIX = "k8s-aws-v1."
"""What every token starts with; the client, the verifier and log redaction all use this one."""
CLUSTER_ID_HEADER = "x-k8s-aws-id"
"""The signed header carrying the cluster ID: the client signs it, the server sends it to STS."""
MAX_TOKEN_BYTES = 4096
LIFETIME = timedelta(minutes=15)
"""STS honours a presigned GetCallerIdentity for 15 minutes after X-Amz-Date.

See A4 in docs/upstream-compat.md.
"""

# Go's RawURLEncoding alphabet, plus the line breaks its decoder skips; any other byte fails.
# Checked with one regex search (in C): a Python loop over a 2 KiB token costs ~20 us a review.
_B64_ILLEGAL = re.compile(rb"[^A-Za-z0-9_\-\r\n]")
_CONTROL_CHAR = re.compile(r"[\x00-\x1f\x7f]")
_ALLOWED_PARAMS = frozenset(
    {
        "action",
        "version",
        "x-amz-algorithm",
        "x-amz-credential",
        "x-amz-date",
        "x-amz-expires",
        "x-amz-security-token",
        "x-amz-signature",
        "x-amz-signedheaders",
    }
)
_MAX_EXPIRES = 900
_INT64 = 2**63
_REGION_ID = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# RFC 3986 query: unreserved, sub-delims, `:@/?` and `%` (escapes are checked on their own).
_NOT_QUERY_CHAR = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,;=:@/?%]")
_SECRET_PARAM = re.compile(r"(?i)(x-amz-(?:signature|security-token)=)[^&#]*")
# Any `key=value` piece, so a secret under an escaped key (`X-Amz-Signatur%65`) is found too.
_URL_PIECE = re.compile(r"(?:^|(?<=[?&#;/]))([^?&#;/=]*)=([^&#;]*)")
_SECRET_KEYS = frozenset({"x-amz-signature", "x-amz-security-token"})
# Characters Go's net/url lets through unescaped in a host name.
_HOST_CHARS = frozenset(string.ascii_letters + string.digits + "-_.~!$&'()*+,;=:[]<>\"")
_USERINFO_CHARS = frozenset(string.ascii_letters + string.digits + "-._:~!$&'()*+,;=%@")
_ORIGIN_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?")


@dataclass(frozen=True, slots=True)
class _Partition:
    """An SDK partition: its DNS domains and the pattern its region names follow."""

    domain: str
    dual_stack_domain: str  # "" where the partition has none (D6 in docs/upstream-compat.md)
    region_pattern: re.Pattern[str]

    @property
    def domains(self) -> tuple[str, ...]:
        """The domains an STS host of this partition may end in."""
        return tuple(d for d in (self.domain, self.dual_stack_domain) if d)


def _partition(domain: str, dual_stack: str, regions: str) -> _Partition:
    return _Partition(domain, dual_stack, re.compile(regions, re.ASCII))


# Domains from D6 in docs/upstream-compat.md; region patterns from the SDK's partitions.json, in its
# order.
_PARTITIONS: dict[str, _Partition] = {
    "aws": _partition("amazonaws.com", "api.aws", r"(us|eu|ap|sa|ca|me|af|il|mx)-\w+-\d+"),
    "aws-cn": _partition("amazonaws.com.cn", "api.amazonwebservices.com.cn", r"cn-\w+-\d+"),
    "aws-us-gov": _partition("amazonaws.com", "api.aws", r"us-gov-\w+-\d+"),
    "aws-iso": _partition("c2s.ic.gov", "", r"us-iso-\w+-\d+"),
    "aws-iso-b": _partition("sc2s.sgov.gov", "", r"us-isob-\w+-\d+"),
    "aws-iso-e": _partition("cloud.adc-e.uk", "", r"eu-isoe-\w+-\d+"),
    "aws-iso-f": _partition("csp.hci.ic.gov", "", r"us-isof-\w+-\d+"),
    "aws-eusc": _partition("amazonaws.eu", "api.amazonwebservices.eu", r"eusc-(de)-\w+-\d+"),
}
PARTITIONS: tuple[str, ...] = tuple(_PARTITIONS)
"""The partition names, in the SDK's order; `authd.arn` takes its list from here."""
# The SDK's region lists add only these names to what the patterns above already match.
_LISTED_REGIONS = {f"{name}-global": name for name in _PARTITIONS if name != "aws-eusc"}
"""Regions whose STS hosts a token may name, by partition; `global` is `sts.amazonaws.com`."""
_MAX_DNS_LABEL = 63

# Go's time layout for X-Amz-Date, walked element by element as Go's time.Parse does:
# (layout element, what it accepts, range name or "", lowest, highest).
_DATE_LAYOUT = "20060102T150405Z"
_PLAIN_DATE = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})T([0-9]{2})([0-9]{2})([0-9]{2})Z")
_DATE_STEPS: tuple[tuple[str, re.Pattern[str], str, int, int], ...] = (
    ("2006", re.compile("[0-9]{4}"), "", 0, 0),
    ("01", re.compile("[0-9]{2}"), "month", 1, 12),
    ("02", re.compile("[0-9]{2}"), "", 0, 0),  # the day is checked against the month at the end
    ("T", re.compile("T"), "", 0, 0),
    ("15", re.compile("[0-9]{1,2}"), "hour", 0, 23),
    ("04", re.compile("[0-9]{2}"), "minute", 0, 59),
    ("05", re.compile("[0-9]{2}(?:[.,][0-9]+)?"), "second", 0, 59),
    ("Z", re.compile("Z"), "", 0, 0),
)


# ---------------------------------------------------------------------------------------------
# A. The token codec (C1-C3)


def encode(url: str) -> str:
    """Wrap a presigned URL as a token: the prefix plus unpadded URL-safe base64 (A1)."""
    body = base64.urlsafe_b64encode(url.encode()).rstrip(b"=")
    return PREFIX + body.decode("ascii")


def decode(token: str) -> str:
    """Unwrap a token into its URL text, applying checks C1-C3.

    Bytes of the URL that are not UTF-8 come back as U+FFFD; `verify` refuses non-ASCII URLs.

    Raises:
        TokenFormatError: too large, missing prefix, or not unpadded URL-safe base64.
    """
    raw = token.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_TOKEN_BYTES:
        raise TokenFormatError("token is too large")
    if not token.startswith(PREFIX):
        raise TokenFormatError(f'token is missing expected "{PREFIX}" prefix')
    payload = raw[len(PREFIX) :]
    _check_base64(payload)
    data = payload.replace(b"\r", b"").replace(b"\n", b"")
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4)).decode("utf-8", "replace")


def _check_base64(payload: bytes) -> None:
    """Fail where Go's RawURLEncoding fails: a byte outside the alphabet, or a lone last one."""
    illegal = _B64_ILLEGAL.search(payload)
    if illegal is not None:
        raise TokenFormatError(f"illegal base64 data at input byte {illegal.start()}")
    count = len(payload) - payload.count(b"\r") - payload.count(b"\n")  # Go skips line breaks
    if count % 4 == 1:
        raise TokenFormatError(f"illegal base64 data at input byte {len(payload) - 1}")


# ---------------------------------------------------------------------------------------------
# The endpoint policy (section D plus authd's extra origins)


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointPolicy:
    """Which STS hosts a token may name. Build it with `EndpointPolicy.create`.

    `extra_origins` are normalised `scheme://host[:port]` texts (lower case) that bypass the
    scheme and host checks C5/C6, for VPC endpoints and for a local STS in tests.
    `extra_regions` are region names added to `KNOWN_REGIONS` (a region newer than this release).
    """

    partition: str
    region: str = ""
    extra_origins: frozenset[str] = frozenset()
    extra_regions: frozenset[str] = frozenset()

    @classmethod
    def create(
        cls,
        *,
        partition: str,
        region: str = "",
        extra_origins: Iterable[str] = (),
        extra_regions: Iterable[str] = (),
    ) -> EndpointPolicy:
        """Validate the verifier's partition and extra origins and build the policy.

        Args:
            partition: one of the eight partition names (`aws`, `aws-cn`, ...).
            region: the server's own region; `sts.<region>.<domain>` is then also allowed.
            extra_origins: `scheme://host[:port]` texts; `http` only for loopback hosts.
            extra_regions: region names whose `sts.<region>.<domain>` hosts are accepted too.

        Raises:
            ConfigError: an unknown partition, a malformed or non-loopback http origin, or a
                malformed region name.
        """
        if partition not in _PARTITIONS:
            names = ", ".join(_PARTITIONS)
            raise ConfigError(f"invalid partition {partition!r}: expected one of {names}")
        origins = frozenset(sts_origin(origin) for origin in extra_origins)
        regions = frozenset(sts_region(name) for name in extra_regions)
        return cls(partition=partition, region=region, extra_origins=origins, extra_regions=regions)


def sts_region(text: str) -> str:
    """Check one extra STS region name (`--extra-sts-region`) and return it.

    Raises:
        ConfigError: `"<text>" is not a valid region name`: not a DNS label of letters, digits
            and inner hyphens of at most 63 characters.
    """
    name = text.strip()
    if _REGION_ID.fullmatch(name) is None or len(name) > _MAX_DNS_LABEL:
        raise ConfigError(f"{_quote(text)} is not a valid region name")
    return name


def sts_origin(text: str) -> str:
    """Check one extra STS endpoint and return it as lower-case `scheme://host[:port]`.

    The one rule for `--extra-sts-endpoint` and `server.extraSTSEndpoints`: https (or http to a
    loopback host only), a host and an optional port, nothing else but a trailing `/`.

    Raises:
        ConfigError: `"<text>" is not a valid STS endpoint: <why>`.
    """
    try:
        parts = urlsplit(text.strip())
        _ = parts.port  # raises ValueError for a port out of range
    except ValueError:
        parts = None
    shape_ok = (
        parts is not None
        and parts.scheme in ("http", "https")
        and _ORIGIN_HOST.fullmatch(parts.netloc) is not None
        and parts.path in ("", "/")
        and not (parts.query or parts.fragment)
    )
    if parts is None or not shape_ok:
        raise ConfigError(
            f"{_quote(text)} is not a valid STS endpoint: expected scheme://host[:port]"
        )
    if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        raise ConfigError(
            f"{_quote(text)} is not a valid STS endpoint: http is only allowed for loopback "
            "hosts (127.0.0.0/8, ::1, localhost); use https"
        )
    return f"{parts.scheme}://{parts.netloc.lower()}"


def is_loopback(hostname: str) -> bool:
    """True for `localhost` (any case) and loopback IP addresses (127.0.0.0/8, ::1)."""
    if hostname.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# The result


@dataclass(frozen=True, slots=True, kw_only=True)
class PresignedRequest:
    """A token that passed every local check: what to send to STS and what it claims.

    `url` carries the signature and `session_token` the caller's temporary credential, so both
    are left out of `repr` to keep them out of logs.
    `expires_at` is `min(signed_at, now) + 15 minutes`: how long an answer about it may be kept.
    """

    url: str = field(repr=False)
    host: str
    region_label: str
    access_key_id: str
    signed_at: datetime
    expires_at: datetime
    session_token: str = field(default="", repr=False)


def verify(token: str, *, now: datetime, policy: EndpointPolicy) -> PresignedRequest:
    """Run the local checks C1-C16 in upstream's order and return the request to send.

    The cluster ID is not compared here (C17): STS does it, through the signature over the
    `x-k8s-aws-id` header the caller sends.

    Args:
        token: the bearer token as received.
        now: the current time, timezone-aware.
        policy: the hosts a token may name.

    Raises:
        TokenFormatError: the first failing check, with upstream's detail text.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    url = _parse_url(decode(token))
    region_label = _check_origin(url, policy)
    if url.path != "/":
        raise TokenFormatError("unexpected path in pre-signed URL")
    params = _parse_query(url.query)
    _check_params(params)
    signed_at = _parse_date(params.get("x-amz-date", ""))
    if now > signed_at + LIFETIME:
        raise TokenFormatError(
            f"X-Amz-Date parameter is expired (15 minute expiration) {_go_time_text(signed_at)}"
        )
    return PresignedRequest(
        url=f"{url.scheme}://{url.host}/?{url.query}",
        host=url.host,
        region_label=region_label,
        access_key_id=params.get("x-amz-credential", "").split("/")[0],
        signed_at=signed_at,
        # X-Amz-Date is the caller's to choose: a date in the future must not keep an answer
        # cached for longer than a token signed now would be valid.
        expires_at=min(signed_at, now) + LIFETIME,
        session_token=params.get("x-amz-security-token", ""),
    )


# ---------------------------------------------------------------------------------------------
# C4: URL parsing as Go's net/url.Parse does it


@dataclass(frozen=True, slots=True, kw_only=True)
class _Url:
    """The parts of a parsed URL the checks look at."""

    scheme: str  # lower-cased, as Go does
    host: str  # the authority without user info, port kept
    path: str  # unescaped
    query: str  # raw


class _UrlError(ValueError):
    """A URL Go's parser would refuse; the message is Go's."""


def _parse_url(raw: str) -> _Url:
    """Parse the token's URL (C4), failing as `parse "<url>": <message>`."""
    try:
        return _split_url(raw)
    except _UrlError as exc:
        # Go quotes the whole URL; the signature and session token are kept out of the message.
        raise TokenFormatError(f"parse {_quote(_redacted(raw))}: {exc}") from exc


def _redacted(raw: str) -> str:
    """`raw` with the signature and session token replaced, however their keys are spelled:
    the query parser unescapes keys and ignores their case, so `X-Amz-Signatur%65` is one."""

    def hide(piece: re.Match[str]) -> str:
        key = piece.group(1)
        return f"{key}=REDACTED" if _unquote_plus(key).lower() in _SECRET_KEYS else piece.group()

    return _URL_PIECE.sub(hide, _SECRET_PARAM.sub(r"\1REDACTED", raw))


def _split_url(raw: str) -> _Url:
    """Split like Go's url.Parse: fragment, scheme, query, then authority and path."""
    if _CONTROL_CHAR.search(raw):
        raise _UrlError("net/url: invalid control character in URL")
    if not raw.isascii():  # presigned URLs are ASCII; anything else could not be sent untouched
        raise _UrlError("non-ASCII character in URL")
    rest, _, fragment = raw.partition("#")
    _unescape(fragment)
    scheme, rest = _split_scheme(rest)
    rest, _, query = rest.partition("?")
    if not rest.startswith("/"):
        if scheme:  # an opaque URL such as `https:host`: no host, no path
            return _Url(scheme=scheme, host="", path="", query=query)
        if ":" in rest.partition("/")[0]:
            raise _UrlError("first path segment in URL cannot contain colon")
    host = ""
    if rest.startswith("//") and (scheme or not rest.startswith("///")):
        authority, slash, path = rest[2:].partition("/")
        host, rest = _parse_authority(authority), slash + path
    return _Url(scheme=scheme, host=host, path=_unescape(rest), query=query)


def _split_scheme(raw: str) -> tuple[str, str]:
    """Go's getScheme: a letter, then letters, digits, `+-.`, then `:`; else no scheme."""
    for index, char in enumerate(raw):
        if char in string.ascii_letters:
            continue
        if char in string.digits + "+-." and index > 0:
            continue
        if char == ":":
            if index == 0:
                raise _UrlError("missing protocol scheme")
            return raw[:index].lower(), raw[index + 1 :]
        break
    return "", raw


def _parse_authority(authority: str) -> str:
    """Check `[userinfo@]host[:port]` as Go does and return `host[:port]`."""
    userinfo, at, host = authority.rpartition("@")
    if at and not set(userinfo) <= _USERINFO_CHARS:
        raise _UrlError("net/url: invalid userinfo")
    _check_port(host)
    _check_host_text(host)
    return host


def _check_port(host: str) -> None:
    """Go's parseHost: anything after the host (or `]`) must be `:` and digits."""
    if host.startswith("["):
        end = host.rfind("]")
        if end < 0:
            raise _UrlError("missing ']' in host")
        colon_port = host[end + 1 :]
    else:
        colon = host.rfind(":")
        colon_port = host[colon:] if colon >= 0 else ""
    if colon_port and re.fullmatch(":[0-9]*", colon_port) is None:
        raise _UrlError(f"invalid port {_quote(colon_port)} after host")


def _check_host_text(host: str) -> None:
    """Go's host unescaping: only host characters, and no escaped ASCII except `%25`."""
    for index, char in enumerate(host):
        if char == "%":
            escape = host[index : index + 3]
            if _BAD_ESCAPE.match(escape) or (escape[1] < "8" and escape != "%25"):
                raise _UrlError(f"invalid URL escape {_quote(escape)}")
        elif char not in _HOST_CHARS:  # hex digits after a `%` are host characters anyway
            raise _UrlError(f"invalid character {_quote(char)} in host name")


def _unescape(text: str) -> str:
    """Percent-decode a path or fragment, refusing a `%` not followed by two hex digits."""
    bad = _BAD_ESCAPE.search(text)
    if bad is not None:
        raise _UrlError(f"invalid URL escape {_quote(text[bad.start() : bad.start() + 3])}")
    return unquote(text)


# ---------------------------------------------------------------------------------------------
# C5, C6 and section D: scheme and host


def _check_origin(url: _Url, policy: EndpointPolicy) -> str:
    """Apply C5 and C6, or accept an extra origin; return the StsRegion label.

    The label is always a known or configured region, `global`, or a configured extra origin's
    host, so a token cannot add a metric series (docs/metrics.md).
    """
    origin = f"{url.scheme}://{url.host.lower()}"
    if origin in policy.extra_origins:
        return origin.partition("://")[2]
    if url.scheme != "https":
        raise TokenFormatError(f"unexpected scheme {_quote(url.scheme)} in pre-signed URL")
    return _check_host(url.host, policy.partition, policy.region, policy.extra_regions)


@functools.lru_cache(maxsize=1024)
def _check_host(
    host: str, partition: str, configured_region: str, extra_regions: frozenset[str]
) -> str:
    """Apply section D to one host and return its region label; accepted hosts are memoised.

    Beyond upstream's rules, a regional host's region must be known (`KNOWN_REGIONS`), the
    server's own, or configured with `--extra-sts-region`.
    """
    region = _region_label(host)
    if region == "global":
        if partition != "aws":
            raise TokenFormatError(f"global endpoint unsupported in partition {partition}")
        return region
    if _REGION_ID.fullmatch(region) is None:
        raise TokenFormatError(f"invalid region identifier format provided: {region}")
    known = region in KNOWN_REGIONS[_sdk_partition_name(region)] or region in extra_regions
    if host in _sdk_hosts(region):
        if host.split(".", 2)[2] not in _PARTITIONS[partition].domains:
            raise TokenFormatError(f"partition {{{partition}}} does not support hostname {host}")
        if known or region == configured_region:
            return region
    if host in _configured_hosts(partition, configured_region):
        return region
    raise TokenFormatError(f"unexpected hostname {_quote(host)} in pre-signed URL")


def _region_label(host: str) -> str:
    """D1: `global` for the global endpoint, else the host's second label."""
    prefix = f"could not parse region for pre-signed URL {host}"
    if not host:
        raise TokenFormatError(f"{prefix}, host is empty")
    labels = host.split(".")
    if len(labels) < 3:
        raise TokenFormatError(f"{prefix}, invalid host format: {host}")
    return "global" if host == "sts.amazonaws.com" else labels[1]


def _sdk_hosts(region: str) -> frozenset[str]:
    """D4: the STS hosts the SDK resolves for a region (plain, FIPS, dual-stack)."""
    partition = _PARTITIONS[_sdk_partition_name(region)]
    return frozenset(
        f"{service}.{region}.{domain}"
        for service in ("sts", "sts-fips")
        for domain in partition.domains
    )


def _sdk_partition_name(region: str) -> str:
    """The SDK partition owning a region: its lists, then its patterns, else `aws`."""
    if region in _LISTED_REGIONS:
        return _LISTED_REGIONS[region]
    for name, partition in _PARTITIONS.items():
        if partition.region_pattern.fullmatch(region):
            return name
    return "aws"


def _configured_hosts(partition: str, region: str) -> frozenset[str]:
    """D5: `sts.<region>.<domain>` for the verifier's own (valid) region."""
    if _REGION_ID.fullmatch(region) is None or len(region) > _MAX_DNS_LABEL:
        return frozenset()
    return frozenset(f"sts.{region}.{domain}" for domain in _PARTITIONS[partition].domains)


# ---------------------------------------------------------------------------------------------
# C8-C13: the query


def _parse_query(raw: str) -> dict[str, str]:
    """C8-C10: parse as Go's url.ParseQuery; keys must be known, single and case-unique.

    Returns the values under lower-cased keys.
    """
    values = _query_values(raw)
    lowered = [key.lower() for key in values]
    if len(set(lowered)) != len(lowered):
        seen: set[str] = set()
        for key, low in zip(values, lowered, strict=True):
            if low in seen:
                raise TokenFormatError(f"duplicate query parameter found: {_quote(key)}")
            seen.add(low)
    params: dict[str, str] = {}
    for (key, found), low in zip(values.items(), lowered, strict=True):
        if low not in _ALLOWED_PARAMS:
            raise TokenFormatError(f"non-whitelisted query parameter {_quote(key)}")
        if len(found) != 1:
            raise TokenFormatError("query parameter with multiple values not supported")
        params[low] = found[0]
    return params


def _query_values(raw: str) -> dict[str, list[str]]:
    """Split on `&` and the first `=`, unescape (`+` is a space); `;` or bad `%` fail (C8)."""
    # A `%` escape cannot span two pieces (`&` is no hex digit), so checking the whole query
    # at once fails exactly when checking piece by piece would. Bytes RFC 3986 does not allow
    # in a query (space, `"`, `<`, `\\`, `{`, ...) would be re-encoded or refused on the way
    # to STS; the token is malformed, so it is refused here, before any request.
    if ";" in raw or _BAD_ESCAPE.search(raw) or _NOT_QUERY_CHAR.search(raw):
        raise TokenFormatError("malformed query parameter")
    values: dict[str, list[str]] = {}
    for piece in raw.split("&"):
        if piece:
            key, _, value = piece.partition("=")
            values.setdefault(_unquote_plus(key), []).append(_unquote_plus(value))
    return values


def _unquote_plus(text: str) -> str:
    """`unquote_plus`, skipped for the many keys and values with nothing to unescape."""
    if "%" in text or "+" in text:
        return unquote_plus(text)
    return text


def _check_params(params: dict[str, str]) -> None:
    """C11-C13: the action, the signed cluster-ID header and the expiry parameter."""
    if params.get("action") != "GetCallerIdentity":
        raise TokenFormatError("unexpected action parameter in pre-signed URL")
    signed = params.get("x-amz-signedheaders", "").split(";")
    if not any(header.lower() == CLUSTER_ID_HEADER for header in signed):
        raise TokenFormatError(
            f"client did not sign the {CLUSTER_ID_HEADER} header in the pre-signed URL"
        )
    expires, ok = _go_atoi(params.get("x-amz-expires", ""))
    if not ok or not 0 <= expires <= _MAX_EXPIRES:
        raise TokenFormatError(f"invalid X-Amz-Expires parameter in pre-signed URL: {expires}")


def _go_atoi(text: str) -> tuple[int, bool]:
    """Go's strconv.Atoi: (value, ok); 0 when not an integer, clamped to int64 when too big."""
    if _INTEGER.fullmatch(text) is None:
        return 0, False
    value = int(text)
    clamped = max(-_INT64, min(_INT64 - 1, value))
    return clamped, clamped == value


# ---------------------------------------------------------------------------------------------
# C14-C16: the signing date


def _parse_date(value: str) -> datetime:
    """C14-C15: X-Amz-Date must be present and read as Go reads `20060102T150405Z`."""
    if not value:
        raise TokenFormatError("X-Amz-Date parameter must be present in pre-signed URL")
    try:
        return _date_from_fields(value, _plain_date_fields(value) or _date_fields(value))
    except ValueError as exc:
        raise TokenFormatError(
            f"error parsing X-Amz-Date parameter {value} into format {_DATE_LAYOUT}: {exc}"
        ) from exc


def _plain_date_fields(value: str) -> list[str] | None:
    """The fields of a date written as signers write it, in range; None for anything else.

    One regex instead of walking the layout: the walk, with Go's exact messages, is kept for
    dates that need it.
    """
    match = _PLAIN_DATE.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second = match.groups()
    if not ("01" <= month <= "12" and hour <= "23" and minute <= "59" and second <= "59"):
        return None
    return [year, month, day, "T", hour, minute, second, "Z"]


def _date_fields(value: str) -> list[str]:
    """Walk the layout like Go's time.Parse, failing with Go's message at the first fault."""
    rest, fields = value, []
    for element, pattern, name, lowest, highest in _DATE_STEPS:
        match = pattern.match(rest)
        if match is None:
            raise ValueError(
                f"parsing time {_quote(value)} as {_quote(_DATE_LAYOUT)}: "
                f"cannot parse {_quote(rest)} as {_quote(element)}"
            )
        if name and not lowest <= int(match.group()[:2]) <= highest:
            raise ValueError(f"parsing time {_quote(value)}: {name} out of range")
        fields.append(match.group())
        rest = rest[match.end() :]
    if rest:
        raise ValueError(f"parsing time {_quote(value)}: extra text: {_quote(rest)}")
    return fields


def _date_from_fields(value: str, fields: list[str]) -> datetime:
    """Build the UTC datetime; the day is checked against its month last, as Go does."""
    year, month, day, _, hour, minute, second, _ = fields
    whole, _, fraction = second.replace(",", ".").partition(".")
    if int(year) < 1:  # Go allows year 0; Python cannot hold it, and it is long expired anyway
        raise ValueError(f"parsing time {_quote(value)}: year out of range")
    try:
        micros = int(fraction[:6].ljust(6, "0"))
        return datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(whole), micros, UTC
        )
    except ValueError:
        raise ValueError(f"parsing time {_quote(value)}: day out of range") from None


def _go_time_text(moment: datetime) -> str:
    """Render a UTC time as Go's Time.String does: `2006-01-02 15:04:05 +0000 UTC`."""
    text = f"{moment.year:04d}-{moment:%m-%d %H:%M:%S}"
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return f"{text} +0000 UTC"
