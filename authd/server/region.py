"""The server's own AWS region (authd.md section 3): env, then instance metadata, then us-east-1."""

from __future__ import annotations

from collections.abc import Mapping

import httpx

DEFAULT_REGION = "us-east-1"
IMDS_ENDPOINT = "http://169.254.169.254"


def resolve_region(env: Mapping[str, str], *, default: str = DEFAULT_REGION) -> str:
    """`AWS_REGION`, then `AWS_DEFAULT_REGION`, then IMDS (one try, 1 s), then `default`.

    IMDS is skipped when `AWS_EC2_METADATA_DISABLED=true`; `AWS_EC2_METADATA_SERVICE_ENDPOINT`
    points it elsewhere (a local stand-in in tests). Never raises: a failure falls through.
    """
    for key in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if env.get(key):
            return env[key]
    if env.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
        return default
    endpoint = env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", IMDS_ENDPOINT).rstrip("/")
    return _imds_region(endpoint) or default


def _imds_region(endpoint: str) -> str:
    """IMDSv2: a session token, then the placement region; "" on any failure."""
    try:
        with httpx.Client(timeout=1.0) as client:
            session = client.put(
                f"{endpoint}/latest/api/token",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
            )
            headers = {"X-aws-ec2-metadata-token": session.text} if session.is_success else {}
            answer = client.get(f"{endpoint}/latest/meta-data/placement/region", headers=headers)
    except httpx.HTTPError:
        return ""
    return answer.text.strip() if answer.is_success else ""
