"""Try the configured backends in order and turn a verified identity into a Kubernetes user.

mapping 1 in docs/upstream-compat.md: the first backend that maps the identity wins (templates
rendered, reserved prefixes checked, any failure there denies at once); a backend that does not map
it but lists its account in `mapAccounts` maps it to its canonical ARN with no groups; otherwise
the next backend is tried. uid and extra follow server 3 in docs/upstream-compat.md (scrubbed
accounts get an administrative uid and no extra).

Each `Backend` holds its current immutable table in one attribute, so a reloader swaps a whole
table atomically and a review always sees one consistent snapshot.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

from authd.errors import AuthdError, NotMappedError, ReservedPrefixError, TemplateError
from authd.gotext import aggregate_message, go_quote
from authd.identity import Identity, User
from authd.mapping import Entry, MappingTable
from authd.mapping.templates import instance_id, needs_private_dns, render

PrivateDnsResolver = Callable[[str], Awaitable[str]]
NOT_MAPPED = "identity is not mapped"


@dataclass(frozen=True, slots=True)
class _State:
    """One backend's published state, replaced as a whole."""

    table: MappingTable | None
    problem: str | None
    reserved_prefixes: tuple[str, ...]


class Backend:
    """A named slot holding one backend's current table, swapped atomically by a reloader.

    `table` is the last good snapshot (None until the first one arrives). `problem` says why
    the backend is not ready; a backend with a table keeps serving it while a problem is
    reported (a bad edit keeps the last good mapping, authd 2 in docs/upstream-compat.md).
    """

    __slots__ = ("_state", "name")

    def __init__(
        self,
        name: str,
        table: MappingTable | None = None,
        *,
        problem: str | None = None,
        reserved_prefixes: Iterable[str] = (),
    ) -> None:
        self.name = name
        if table is None and problem is None:
            problem = "not loaded yet"
        self._state = _State(table, problem, tuple(reserved_prefixes))

    @property
    def table(self) -> MappingTable | None:
        """The current snapshot, or None when none has loaded yet."""
        return self._state.table

    @property
    def problem(self) -> str | None:
        """Why the backend is not ready, or None."""
        return self._state.problem

    @property
    def ready(self) -> bool:
        """True when a table is loaded and no problem is reported."""
        return self._state.table is not None and self._state.problem is None

    @property
    def reserved_prefixes(self) -> tuple[str, ...]:
        """Username prefixes this backend may not hand out (`reservedPrefixConfig`)."""
        return self._state.reserved_prefixes

    def publish(self, table: MappingTable) -> None:
        """Swap in a new good snapshot and clear any problem."""
        self._state = _State(table, None, self._state.reserved_prefixes)

    def mark_not_ready(self, problem: str) -> None:
        """Report a problem; the last good snapshot (if any) keeps serving."""
        self._state = _State(self._state.table, problem, self._state.reserved_prefixes)

    def clear(self, problem: str) -> None:
        """Drop the snapshot (for example the watched file was deleted) and report why."""
        self._state = _State(None, problem, self._state.reserved_prefixes)

    def set_reserved_prefixes(self, prefixes: Iterable[str]) -> None:
        """Replace the reserved username prefixes (applied by a config reload)."""
        state = self._state
        self._state = _State(state.table, state.problem, tuple(prefixes))


@dataclass(frozen=True, slots=True, kw_only=True)
class MapResult:
    """A mapped identity: the Kubernetes user and the backend that produced it."""

    user: User
    backend: str


class MapperChain:
    """The ordered backends plus the settings that shape the answer (scrubbed accounts)."""

    __slots__ = ("_backends", "_scrubbed")

    def __init__(
        self, backends: Sequence[Backend], *, scrubbed_accounts: Collection[str] = ()
    ) -> None:
        self._backends = tuple(backends)
        self._scrubbed = frozenset(scrubbed_accounts)

    @property
    def names(self) -> tuple[str, ...]:
        """The backends' names, in chain order."""
        return tuple(b.name for b in self._backends)

    def replace_backends(self, backends: Sequence[Backend]) -> None:
        """Swap in a new ordered list of backends in one step (the dynamic backend mode).

        A review already in `map` keeps iterating the list it started with.
        """
        self._backends = tuple(backends)

    async def map(
        self, identity: Identity, *, resolve_private_dns: PrivateDnsResolver | None = None
    ) -> MapResult:
        """Map a verified identity to a Kubernetes user (mapping 1 in docs/upstream-compat.md).

        Args:
            identity: who STS says signed the token.
            resolve_private_dns: async instance ID -> private DNS name, for
                `{{EC2PrivateDNSName}}`; it signals failure by raising an AuthdError.

        Raises:
            TemplateError: `mapper <Name> renderTemplates error: ...`.
            ReservedPrefixError: `invalid username '<u>' for mapper <Name>: ...`.
            NotMappedError: no backend maps the identity (`identity is not mapped`, or the
                aggregate of the backends' lookup errors).
        """
        errors: list[str] = []
        for backend in self._backends:
            state = backend._state  # one read: the whole review sees one snapshot
            entry = self._lookup(backend.name, state, identity, errors)
            if entry is not None:
                username, groups = await _render_entry(
                    backend.name, entry, identity, resolve_private_dns
                )
                _check_reserved(backend.name, username, state.reserved_prefixes)
                return MapResult(user=self._user(identity, username, groups), backend=backend.name)
            if state.table is not None and state.table.is_account_allowed(identity.account_id):
                user = self._user(identity, identity.canonical_arn, ())
                return MapResult(user=user, backend=backend.name)
        raise NotMappedError(aggregate_message(errors) if errors else NOT_MAPPED)

    @staticmethod
    def _lookup(name: str, state: _State, identity: Identity, errors: list[str]) -> Entry | None:
        """Ask one backend's snapshot; lookup errors are collected, not raised."""
        if state.table is None:
            errors.append(f"mapper {name} Map error: backend not ready: {state.problem}")
            return None
        try:
            return state.table.lookup(identity)
        except NotMappedError as exc:
            errors.append(f"mapper {name} Map error: {exc}")
            return None

    def _user(self, identity: Identity, username: str, groups: tuple[str, ...]) -> User:
        """Build the user with upstream's uid and extra (server 3 in docs/upstream-compat.md)."""
        if identity.account_id in self._scrubbed:
            uid = f"aws-iam-authenticator:administrative:{username}"
            return User(username=username, uid=uid, groups=groups, extra={})
        uid = f"aws-iam-authenticator:{identity.account_id}:{identity.user_id}"
        extra = {
            "accessKeyId": [identity.access_key_id],
            "arn": [identity.arn],
            "canonicalArn": [identity.canonical_arn],
            "principalId": [identity.user_id],
            "sessionName": [identity.session_name],
            "sigs.k8s.io/aws-iam-authenticator/principalId": [identity.user_id],
        }
        return User(username=username, uid=uid, groups=groups, extra=extra)


async def _render_entry(
    name: str,
    entry: Entry,
    identity: Identity,
    resolve: PrivateDnsResolver | None,
) -> tuple[str, tuple[str, ...]]:
    """Render the username then each group; one EC2 lookup serves all of them."""
    rendered: list[str] = []
    dns: str | None = None
    for what, template in (("username", entry.username), *(("group", g) for g in entry.groups)):
        try:
            if dns is None and needs_private_dns(template):
                dns = await _private_dns(identity, resolve)
            rendered.append(render(template, identity, private_dns_name=dns))
        except TemplateError as exc:
            raise TemplateError(
                f"mapper {name} renderTemplates error: error rendering {what} template "
                f"{go_quote(template)}: {exc}"
            ) from exc
    return rendered[0], tuple(rendered[1:])


async def _private_dns(identity: Identity, resolve: PrivateDnsResolver | None) -> str:
    """Look up the caller's private DNS name, after the session name proved an instance ID."""
    instance = instance_id(identity)
    if resolve is None:
        raise TemplateError(
            "EC2 lookups are not configured, so {{EC2PrivateDNSName}} cannot be rendered"
        )
    try:
        return await resolve(instance)
    except TemplateError:
        raise
    except AuthdError as exc:
        raise TemplateError(
            f"failed querying private DNS from EC2 API for node {instance}: {exc}"
        ) from exc


def _check_reserved(name: str, username: str, prefixes: tuple[str, ...]) -> None:
    """Deny a rendered username that starts with a reserved prefix.

    See mapping 7 in docs/upstream-compat.md.
    """
    if any(p and username.startswith(p) for p in prefixes):
        raise ReservedPrefixError(
            f"invalid username '{username}' for mapper {name}: username must not begin with "
            f"with the following prefixes: [{' '.join(prefixes)}]"
        )
