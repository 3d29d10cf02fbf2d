"""Frozen values that cross module boundaries: who STS says signed, and the Kubernetes user."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """The caller as STS GetCallerIdentity reports it (E5 in docs/upstream-compat.md).

    `arn` is what STS returned (an assumed-role ARN for role sessions); `canonical_arn` is the
    mapping key (R1-R9 in docs/upstream-compat.md). `session_name` is empty for IAM users, root and
    federated users.
    """

    arn: str
    canonical_arn: str
    account_id: str
    user_id: str
    session_name: str
    access_key_id: str
    sts_endpoint: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class User:
    """The Kubernetes user a TokenReview answers with (server 3 in docs/upstream-compat.md)."""

    username: str
    uid: str
    groups: tuple[str, ...] = ()
    extra: dict[str, list[str]] = field(default_factory=dict)
