"""Remember STS' definitive denials, so a replayed fake token or an unknown key costs no STS call.

- `DeniedTokens`: a token STS refused for a reason that cannot change while the token is valid
  (`SignatureDoesNotMatch` under every cluster ID, `ExpiredToken`) is remembered by its cache
  key (`authd.server.sts.identitycache.token_key`, never the token) until the token's own
  expiry. `InvalidClientTokenId` is not among them: IAM is eventually consistent, and a key
  created seconds ago gets that code until STS learns it, so its token must be asked about
  again once the 60 s below have passed (kubectl reuses a token for 14 minutes).
- `DeniedCredentials`: a credential STS said does not exist (`InvalidClientTokenId`) is
  remembered for 60 s. The credential is the access key ID together with the session token, if
  any: a temporary key ID with a forged session token is refused with the same code, and keying
  by the key ID alone would let anyone who knows a real temporary key ID lock its owner out.

Both are LRU maps bounded by entries; times are passed in by the caller.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime

from authd.server.sts.identitycache import token_key

UNKNOWN_CREDENTIAL = "InvalidClientTokenId"
TOKEN_DENIALS = frozenset({"SignatureDoesNotMatch", "ExpiredToken"})
"""STS error codes that refuse the token itself: no later request of it can be accepted."""
CREDENTIAL_DENIED_FOR = 60.0
"""Seconds a credential STS does not know is refused without asking again."""


def credential_key(access_key_id: str, session_token: str) -> bytes:
    """The key of the credential that signed a request: its access key ID and session token.

    Both come from `authd.token.verify`'s parsed query, the parameters STS itself reads.
    """
    return token_key(f"{access_key_id}\0{session_token}")


class DeniedTokens:
    """Token keys STS refused, each with the code it gave, until the token expires."""

    __slots__ = ("_entries", "max_entries")

    def __init__(self, *, max_entries: int) -> None:
        """An empty map of at most `max_entries` tokens (0 remembers none)."""
        if max_entries < 0:
            raise ValueError(f"max_entries must not be negative, not {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, tuple[datetime, str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, *, now: datetime) -> str | None:
        """The code STS refused the token named `key` with, while it is valid at `now`."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, code = entry
        if now > expires_at:
            del self._entries[key]
            return None
        return code

    def put(self, key: bytes, *, code: str, expires_at: datetime) -> None:
        """Remember that STS refused the token named `key` with `code` (one of TOKEN_DENIALS)."""
        if self.max_entries == 0 or code not in TOKEN_DENIALS:
            return
        # The code is stored as the set's own string: entries never hold text STS sent.
        stored = next(known for known in TOKEN_DENIALS if known == code)
        self._entries[key] = (expires_at, stored)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class DeniedCredentials:
    """Credentials STS said do not exist, for `ttl` seconds each (a monotonic clock)."""

    __slots__ = ("_entries", "max_entries", "ttl")

    def __init__(self, *, max_entries: int, ttl: float = CREDENTIAL_DENIED_FOR) -> None:
        """An empty map of at most `max_entries` credentials (0 remembers none)."""
        if max_entries < 0:
            raise ValueError(f"max_entries must not be negative, not {max_entries}")
        self.max_entries = max_entries
        self.ttl = ttl
        self._entries: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def denied(self, key: bytes, *, now: float) -> bool:
        """Whether STS said, less than `ttl` seconds before `now`, that `key` does not exist."""
        until = self._entries.get(key)
        if until is None:
            return False
        if now >= until:
            del self._entries[key]
            return False
        return True

    def put(self, key: bytes, *, now: float) -> None:
        """Remember for `ttl` seconds that STS does not know the credential `key`."""
        if self.max_entries == 0:
            return
        self._entries[key] = now + self.ttl
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
