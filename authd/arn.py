"""Parse identity ARNs and turn them into the canonical ARN used as the mapping key, as upstream.

Pure: the standard library and authd's core only (the partition names come from
`authd.token`, which knows each partition's STS hosts). Error texts match upstream word for
word because they reach users in TokenReview `status.error` and in logs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from authd.errors import ArnError
from authd.token import PARTITIONS  # one list of partitions: the one whose STS hosts are known

__all__ = ["PARTITIONS", "PrincipalType", "canonicalize", "strip_path"]


class PrincipalType(enum.Enum):
    """What kind of principal an ARN names; NONE only goes with errors."""

    NONE = "NONE"
    ROLE = "ROLE"
    USER = "USER"
    ROOT = "ROOT"
    FEDERATED_USER = "FEDERATED_USER"
    ASSUMED_ROLE = "ASSUMED_ROLE"


_IAM_TYPES = {"user": PrincipalType.USER, "role": PrincipalType.ROLE, "root": PrincipalType.ROOT}


@dataclass(frozen=True, slots=True, kw_only=True)
class _Arn:
    """The six colon-separated fields of an ARN; `resource` keeps any further colons."""

    text: str
    partition: str
    service: str
    region: str
    account: str
    resource: str


def _parse(arn: str) -> _Arn:
    """Split an ARN into its fields, applying R1-R3 in docs/upstream-compat.md."""
    if not arn.startswith("arn:"):
        raise ArnError(f"arn '{arn}' is invalid: 'arn: invalid prefix'")
    fields = arn.split(":", 5)
    if len(fields) < 6:
        raise ArnError(f"arn '{arn}' is invalid: 'arn: not enough sections'")
    _, partition, service, region, account, resource = fields
    if partition not in PARTITIONS:
        raise ArnError(f"arn '{arn}' does not have a recognized partition")
    return _Arn(
        text=arn,
        partition=partition,
        service=service,
        region=region,
        account=account,
        resource=resource,
    )


def canonicalize(arn: str) -> tuple[PrincipalType, str]:
    """Return the principal type and canonical ARN of an identity ARN.

    See R1-R9 in docs/upstream-compat.md.

    IAM user, role and root ARNs and STS federated-user ARNs come back unchanged; an STS
    assumed-role ARN becomes the IAM role ARN (session dropped, role path kept).

    Raises:
        ArnError: with upstream's text when the ARN is malformed or names no identity.
    """
    parsed = _parse(arn)
    if parsed.service == "iam":
        return _canonical_iam(parsed)
    if parsed.service == "sts":
        return _canonical_sts(parsed)
    raise ArnError(f"service {parsed.service} in arn {arn} is not a valid service for identities")


def _canonical_iam(parsed: _Arn) -> tuple[PrincipalType, str]:
    """IAM users, roles and root are already canonical (R5)."""
    kind = _IAM_TYPES.get(parsed.resource.split("/")[0])
    if kind is None:
        raise ArnError(f"unrecognized resource {parsed.resource} for service iam")
    return kind, parsed.text


def _canonical_sts(parsed: _Arn) -> tuple[PrincipalType, str]:
    """Federated users stay as they are; assumed roles become their IAM role (R6)."""
    elements = parsed.resource.split("/")
    if elements[0] == "federated-user":
        return PrincipalType.FEDERATED_USER, parsed.text
    if elements[0] != "assumed-role":
        raise ArnError(f"unrecognized resource {parsed.resource} for service sts")
    if len(elements) < 3:
        raise ArnError(f"assumed-role arn '{parsed.text}' does not have a role")
    role = "/".join(elements[1:-1])
    return PrincipalType.ASSUMED_ROLE, _role_arn(parsed, role)


def _role_arn(parsed: _Arn, role: str) -> str:
    """Build the IAM role ARN for `role` in the ARN's partition and account."""
    return f"arn:{parsed.partition}:iam::{parsed.account}:role/{role}"


def strip_path(arn: str) -> str:
    """Remove the path from an IAM role ARN (`role/Org/Team/Admin` -> `role/Admin`).

    Anything that is not a role ARN with a path comes back unchanged. Not applied by
    `canonicalize`; mapping uses it where upstream does.

    Raises:
        ArnError: for the same malformed ARNs `canonicalize` rejects (R1-R3).
    """
    parsed = _parse(arn)
    elements = parsed.resource.split("/")
    if elements[0] != "role" or len(elements) <= 2:
        return arn
    return _role_arn(parsed, elements[-1])
