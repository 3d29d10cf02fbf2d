"""The server's own AWS region: env, then instance metadata, then us-east-1.

See authd 3 in docs/upstream-compat.md.
"""

from __future__ import annotations

from collections.abc import Mapping

from authd.imds import imds_region

DEFAULT_REGION = "us-east-1"


def resolve_region(env: Mapping[str, str], *, default: str = DEFAULT_REGION) -> str:
    """`AWS_REGION`, then `AWS_DEFAULT_REGION`, then IMDS (`authd.imds`: one try, 1 s), then
    `default`.

    IMDS is skipped when `AWS_EC2_METADATA_DISABLED=true`; `AWS_EC2_METADATA_SERVICE_ENDPOINT`
    points it elsewhere (a local stand-in in tests). Never raises: a failure falls through.
    """
    for key in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if env.get(key):
            return env[key]
    return imds_region(env) or default
