"""The MountedFile backend's table: mappings from the server config file.

See mapping 2 in docs/upstream-compat.md.

Lookups are dictionary hits on the lower-cased canonical ARN: roles first, then SSO
permission-set patterns (only with the `SSORoleMatch` gate), then users. Duplicate ARNs: the
last entry wins, as upstream's map assignment does. With authd's `RolePathMatch` gate a role
entry with a path is also indexed under its ARN without the path, which is the only form a
role session's canonical ARN takes (docs/troubleshooting.md, `role_path`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from authd.arn import strip_path
from authd.config import MappingConfig
from authd.identity import Identity
from authd.mapping import Entry

NAME = "MountedFile"
# What IAM Identity Center appends to `AWSReservedSSO_<permission set>_`: 16 hex digits (the
# ARN is lower-cased before the lookup). A bare prefix also matched roles anyone able to create
# roles in the account could name `AWSReservedSSO_<set>_anything`.
_SSO_SUFFIX = re.compile("[0-9a-f]{16}")


@dataclass(frozen=True, slots=True, kw_only=True)
class MountedFileTable:
    """An immutable snapshot of the MountedFile mappings. Build with `from_config`.

    `sso` maps `arn:<partition>:iam::<account>:` to `(role-name prefix, entry)` pairs, so an SSO
    lookup only scans the patterns of the caller's own account.
    """

    roles: Mapping[str, Entry]
    sso: Mapping[str, tuple[tuple[str, Entry], ...]]
    users: Mapping[str, Entry]
    accounts: frozenset[str]
    aliases: int = 0  # role keys added by `role_path_match`, not counted as mappings

    @classmethod
    def from_config(
        cls, config: MappingConfig, *, sso_role_match: bool = False, role_path_match: bool = False
    ) -> MountedFileTable:
        """Index validated mappings; SSO entries are kept only when `sso_role_match` is on.

        With `role_path_match` a role ARN with a path is indexed twice: as written, and without
        its path (in file order with the other entries, so a later entry still wins).
        """
        roles: dict[str, Entry] = {}
        sso: dict[str, dict[str, Entry]] = {}
        written: set[str] = set()
        for role in config.map_roles:
            entry = Entry(username=role.username, groups=role.groups)
            if role.rolearn:
                roles[role.rolearn.lower()] = entry
                written.add(role.rolearn.lower())
                if role_path_match:
                    roles[strip_path(role.rolearn).lower()] = entry
            elif role.sso is not None and sso_role_match:
                prefix = role.sso.arn_prefix()
                head, _, resource = prefix.rpartition(":")
                sso.setdefault(head + ":", {})[resource] = entry
        users = {u.userarn: Entry(username=u.username, groups=u.groups) for u in config.map_users}
        return cls(
            roles=MappingProxyType(roles),
            sso=MappingProxyType({k: tuple(v.items()) for k, v in sso.items()}),
            users=MappingProxyType(users),
            accounts=frozenset(config.map_accounts),
            aliases=len(roles.keys() - written),
        )

    def lookup(self, identity: Identity) -> Entry | None:
        """Return the entry for the identity's canonical ARN (case-insensitive), or None."""
        key = identity.canonical_arn.lower()
        entry = self.roles.get(key)
        if entry is not None:
            return entry
        if self.sso:
            # The resource is everything after the fifth colon (R2 in docs/upstream-compat.md).
            fields = key.split(":", 5)
            head, resource = ":".join(fields[:5]) + ":", fields[-1]
            for prefix, candidate in self.sso.get(head, ()):
                if resource.startswith(prefix) and _SSO_SUFFIX.fullmatch(resource[len(prefix) :]):
                    return candidate
        return self.users.get(key)

    def is_account_allowed(self, account_id: str) -> bool:
        """True when `mapAccounts` lists the account (exact text match)."""
        return account_id in self.accounts

    def __len__(self) -> int:
        """Mappings in the snapshot: roles, SSO patterns, users and allowed accounts."""
        sso = sum(len(patterns) for patterns in self.sso.values())
        return len(self.roles) - self.aliases + sso + len(self.users) + len(self.accounts)
