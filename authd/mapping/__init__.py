"""Identity mapping: the row a backend finds for an identity, and the table interface.

One module per backend (`file` for MountedFile, `dynamicfile`, later `configmap` and `crd`),
`templates` for username/group placeholders, and `chain` to try the backends in order
(mapping 1-10 in docs/upstream-compat.md). Every table answers `lookup()` and `len()`. Tables are
immutable snapshots; a reloader swaps a whole table at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from authd.identity import Identity


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """A mapping row as configured: username and group templates, not yet rendered."""

    username: str
    groups: tuple[str, ...] = ()


class MappingTable(Protocol):
    """What the chain needs from one backend's current snapshot of mappings."""

    def lookup(self, identity: Identity) -> Entry | None:
        """Return the entry mapping `identity`, or None when this table does not map it.

        Raises:
            NotMappedError: the table has an entry but refuses the identity (for example
                DynamicFile's `ARN does not match User ID`); the chain collects the text.
        """
        ...

    def is_account_allowed(self, account_id: str) -> bool:
        """True when the account is in this table's `mapAccounts` allow-list."""
        ...

    def __len__(self) -> int:
        """The number of mappings: role, user and SSO entries plus allowed accounts."""
        ...
