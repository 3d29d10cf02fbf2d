"""What `authd token` signs for: the one record of the command's token settings.

Standard library only: the token-cache hit path builds its key from it without loading botocore.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenOptions:
    """The settings that decide which token is signed, after flag > env > config precedence.

    The presigner signs from them and the token cache keys on them (with the AWS environment),
    so a setting added here reaches both.
    """

    cluster_id: str
    role_arn: str = ""
    external_id: str = ""
    session_name: str = ""
    forward_session_name: bool = False
    region: str = ""  # empty: resolved from the environment and profile (docs/client.md)
