"""What an `httpx.Request` from StsClient puts on the wire, for tests that inspect it."""

from __future__ import annotations

import httpx


def sent_url(request: httpx.Request) -> httpx.URL:
    """The URL as sent: StsClient keeps the origin in `request.url` and passes the presigned
    path and query byte for byte in httpx's `target` extension."""
    target = request.extensions.get("target")
    return request.url if target is None else request.url.copy_with(raw_path=target)
