"""A fake kube-apiserver over real HTTPS on 127.0.0.1: discovery, CRUD, list/watch, test controls.

`FakeApiServer` serves ConfigMaps (and read-only Namespaces) and the custom resources of the
CRDs it is given (by default IAMIdentityMapping from `config/crd-iamidentitymapping.yaml`) with
the wire protocol a real server speaks, so kubectl and any client can drive it. Watches are
`Transfer-Encoding: chunked` streams of one JSON event per line. The methods under "test
controls" are thread-safe and change what clients see: compaction, dropped or stalled watches,
bookmarks, injected failures, a crash and restart on the same port, tokens and grants, and writes
"by another client".
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import functools
import json
import socket
import ssl
import tempfile
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fakes.kube import discovery, status
from tests.fakes.kube.auth import TokenReviewer, User, WebhookClient, webhook_user
from tests.fakes.kube.discovery import NAMESPACES
from tests.fakes.kube.handler import RequestRecord, Route, handler_for
from tests.fakes.kube.registry import Registry, stamp
from tests.fakes.kube.resources import CONFIGMAPS, CRD_FILE, ResourceType, load_crd
from tests.fakes.kube.store import Store, rtype_id
from tests.fakes.kube.tls import serving_cert
from tests.fakes.kube.watch import WatchControls
from tests.fakes.loopback import LoopbackServer

Doc = dict[str, Any]
ADMIN_TOKEN = "fake-admin-token"


@dataclass
class _Failure:
    code: int
    count: int
    verb: str | None
    resource: str | None


class FakeApiServer:
    """HTTPS on 127.0.0.1 port 0; `start()` (or `with`), then use `url`, `ca_file`, a token."""

    def __init__(
        self,
        webhook_kubeconfig: Path | None = None,
        *,
        tokens: Mapping[str, User] | None = None,
        crds: Iterable[Path] = (CRD_FILE,),
        namespaces: Iterable[str] = ("default", "kube-system", "kube-public", "kube-node-lease"),
        clock: Callable[[], datetime.datetime] | None = None,
        watch_expired_as: str = "event",
        bookmark_interval: float | None = None,
    ) -> None:
        self.webhook: TokenReviewer | None = (
            WebhookClient(webhook_kubeconfig) if webhook_kubeconfig is not None else None
        )
        self._dir = tempfile.TemporaryDirectory(prefix="fake-apiserver-")
        self.ca_file, key_file = serving_cert(Path(self._dir.name))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.ca_file, key_file)
        self._context = context
        self._server: LoopbackServer | None = None
        self._port = 0
        self._connections: set[socket.socket] = set()
        self.clock = clock or (lambda: datetime.datetime.now(datetime.UTC))
        self.store = Store()
        self.registry = Registry(self.store, clock=self.clock)
        self.resources: list[ResourceType] = [CONFIGMAPS, NAMESPACES]
        self.resources += [load_crd(Path(p)) for p in crds]
        self.watch = WatchControls(
            self.store, expired_as=watch_expired_as, bookmark_interval=bookmark_interval
        )
        self._tokens: dict[str, User] = dict(
            tokens
            if tokens is not None
            else {ADMIN_TOKEN: User(name="kubernetes-admin", groups=("system:masters",))}
        )
        self._failures: list[_Failure] = []
        self._requests: list[RequestRecord] = []
        for ns in namespaces:
            self.put_object(
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": ns},
                    "status": {"phase": "Active"},
                }
            )

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """`https://127.0.0.1:<port>`."""
        assert self._server is not None, "start() first"
        return self._server.url

    def start(self) -> None:
        """Serve in a background thread (on the port served before, after a `crash()`)."""
        self._server = LoopbackServer(handler_for(self), tls=self._context, port=self._port)
        self._port = self._server.port

    def crash(self) -> None:
        """Die as a killed kube-apiserver does: stop listening and cut every connection, open
        watches without their closing chunk. The store (etcd) and the serving certificate stay;
        `start()` serves them again on the same port, as the restarted process would."""
        if self._server is not None:
            self._server.stop()
            self._server = None
        self.watch.drop(mid_event=False)
        with self.store.cond:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        """End every watch cleanly, stop serving and remove the certificate files."""
        self.watch.close()
        if self._server is not None:
            self._server.stop()
            self._server = None
        self._dir.cleanup()

    def __enter__(self) -> FakeApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client_context(self) -> ssl.SSLContext:
        """A client-side TLS context that trusts this server's certificate."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def write_kubeconfig(
        self, path: Path, *, token: str = ADMIN_TOKEN, namespace: str = "default"
    ) -> Path:
        """A kubeconfig for this server (CA file and bearer token) at `path`; returns `path`."""
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "fake",
                            "cluster": {
                                "server": self.url,
                                "certificate-authority": str(self.ca_file),
                            },
                        }
                    ],
                    "users": [{"name": "fake", "user": {"token": token}}],
                    "contexts": [
                        {
                            "name": "fake",
                            "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                        }
                    ],
                    "current-context": "fake",
                }
            )
        )
        return path

    # -- test controls -----------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request so far, oldest first (a copy)."""
        with self.store.cond:
            return list(self._requests)

    def clear_requests(self) -> None:
        """Forget the request log."""
        with self.store.cond:
            self._requests.clear()

    def set_tokens(self, tokens: Mapping[str, User]) -> None:
        """Replace the token table."""
        with self.store.cond:
            self._tokens = dict(tokens)

    def add_token(self, token: str, user: User) -> None:
        """Add or replace one token."""
        with self.store.cond:
            self._tokens[token] = user

    def forbid(self, token: str, *verbs: str, resource: str) -> None:
        """Take `verbs` (or `*`) on `resource` away from `token` (403 from now on)."""
        with self.store.cond:
            user = self._tokens[token]
            denied = user.denied | {(v, resource) for v in verbs}
            self._tokens[token] = User(
                name=user.name,
                groups=user.groups,
                rules=user.rules,
                denied=denied,
                extra=user.extra,
            )

    def fail_next(
        self,
        code: int = 500,
        count: int = 1,
        *,
        verb: str | None = None,
        resource: str | None = None,
    ) -> None:
        """Answer the next `count` resource requests (matching `verb`/`resource`) with `code`."""
        with self.store.cond:
            self._failures.append(_Failure(code, count, verb, resource))

    def clear_failures(self) -> None:
        """Forget the failures `fail_next` injected and not yet served."""
        with self.store.cond:
            self._failures.clear()

    def garble_watches(self) -> None:
        """Send one line that is not a JSON event on every open watch (a corrupt object)."""
        self.watch.garble()

    def compact(self) -> int:
        """Drop the event history: watches and lists from older resourceVersions get 410."""
        return self.store.compact()

    def drop_watches(self, *, mid_event: bool = False) -> None:
        """Cut every open watch without the closing chunk (with half a JSON line if `mid_event`)."""
        self.watch.drop(mid_event=mid_event)

    def end_watches(self) -> None:
        """End every open watch cleanly, as a server-side timeout does."""
        self.watch.end()

    def stall_watches(self, seconds: float | None = None) -> None:
        """Send nothing on any watch for `seconds` (None: until `release_watches()`)."""
        self.watch.stall(seconds)

    def release_watches(self) -> None:
        """End a stall; queued events flow again."""
        self.watch.stall(0)

    def bookmark(self) -> None:
        """Send a BOOKMARK now on every watch that allowed bookmarks."""
        self.watch.bookmark()

    def wait_for_watches(self, count: int, timeout: float = 10) -> bool:
        """Block until at least `count` watches are open; False on timeout."""
        return self.watch.wait_open(count, timeout)

    @property
    def resource_version(self) -> str:
        """The newest resourceVersion, as a string."""
        with self.store.cond:
            return str(self.store.rv)

    def resource(self, kind: str) -> ResourceType:
        """The served type with this kind or plural."""
        for rtype in self.resources:
            if kind in (rtype.kind, rtype.plural):
                return rtype
        raise KeyError(kind)

    def put_object(self, obj: Doc) -> Doc:
        """Create or replace `obj` as another client would (status included, no checks)."""
        rtype = self.resource(obj["kind"])
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if rtype.namespaced:
            meta.setdefault("namespace", "default")
        with self.store.cond:
            old = self.store.get(rtype, meta.get("namespace", ""), meta["name"])
            if old is None:
                meta["uid"] = meta.get("uid") or str(uuid.uuid4())
                meta["creationTimestamp"] = stamp(self.clock())
                if rtype.custom:
                    meta["generation"] = 1
            else:
                for field in ("uid", "creationTimestamp", "generation"):
                    if field in old["metadata"]:
                        meta[field] = old["metadata"][field]
                if rtype.custom and obj.get("spec") != old.get("spec"):
                    meta["generation"] = old["metadata"].get("generation", 1) + 1
            return self.store.write(rtype, obj)

    def delete_object(self, kind: str, name: str, namespace: str = "") -> Doc:
        """Delete an object as another client would; returns its last state."""
        rtype = self.resource(kind)
        ns = (namespace or "default") if rtype.namespaced else ""
        return self.store.write(rtype, None, key=(rtype_id(rtype), ns, name))

    def get_object(self, kind: str, name: str, namespace: str = "") -> Doc | None:
        """The stored object, or None."""
        rtype = self.resource(kind)
        return self.store.get(rtype, (namespace or "default") if rtype.namespaced else "", name)

    # -- request handling (called from handler threads) --------------------------------------

    def _authenticate(self, header: str) -> User:
        token = header[7:].strip() if header.startswith("Bearer ") else ""
        if not token:
            raise status.unauthorized()
        with self.store.cond:
            user = self._tokens.get(token)
        if user is None and self.webhook is not None:
            answer = self.webhook.review(token)
            user = webhook_user(answer) if answer is not None else None
        if user is None:
            raise status.unauthorized()
        return user

    def _injected(self, verb: str, resource: str) -> status.ApiError | None:
        with self.store.cond:
            for failure in self._failures:
                if (
                    failure.count > 0
                    and failure.verb in (None, verb)
                    and failure.resource in (None, resource)
                ):
                    failure.count -= 1
                    self._failures = [f for f in self._failures if f.count > 0]
                    return status.injected(failure.code)
        return None

    def _connected(self, connection: socket.socket, *, open_: bool) -> None:
        """Track the open connections (a `crash()` cuts them)."""
        with self.store.cond:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def _record(self, record: RequestRecord) -> None:
        with self.store.cond:
            self._requests.append(record)

    def _discovery(self, path: str, address: str) -> Doc | None:
        """The discovery, version or OpenAPI document at `path`, or None."""
        core = [r for r in self.resources if not r.group]
        groups: dict[str, list[str]] = {}
        for rtype in self.resources:
            versions = groups.setdefault(rtype.group, []) if rtype.group else None
            if versions is not None and rtype.version not in versions:
                versions.append(rtype.version)  # one entry per version, however many resources
        docs: dict[str, Callable[[], Doc]] = {
            "/api": lambda: discovery.api_versions(address),
            "/api/v1": lambda: discovery.resource_list("v1", core),
            "/apis": lambda: discovery.api_group_list(groups),
            "/version": lambda: dict(discovery.KUBE_VERSION),
            "/openapi/v3": lambda: discovery.openapi_index(
                ["v1", *(f"{g}/{v}" for g, vs in groups.items() for v in vs)]
            ),
            "/openapi/v3/api/v1": lambda: discovery.openapi_document(core),
        }
        for group, versions in groups.items():
            docs[f"/apis/{group}"] = functools.partial(discovery.api_group, group, versions)
            for version in versions:
                served = [r for r in self.resources if (r.group, r.version) == (group, version)]
                gv = f"{group}/{version}"
                docs[f"/apis/{gv}"] = functools.partial(discovery.resource_list, gv, served)
                docs[f"/openapi/v3/apis/{gv}"] = functools.partial(
                    discovery.openapi_document, served
                )
        build = docs.get(path)
        return build() if build is not None else None

    def _route(self, path: str) -> Route | None:
        parts = path.strip("/").split("/")
        for rtype in self.resources:
            base = rtype.base_path.strip("/").split("/")
            if parts[: len(base)] != base:
                continue
            rest = parts[len(base) :]
            namespace: str | None = None
            if rtype.namespaced and len(rest) >= 3 and rest[0] == "namespaces":
                namespace, rest = rest[1], rest[2:]
            if not rest or rest[0] != rtype.plural or len(rest) > 3:
                continue
            if rtype.namespaced and namespace is None and len(rest) > 1:
                return None
            name = rest[1] if len(rest) > 1 else ""
            sub = rest[2] if len(rest) > 2 else ""
            if sub and not (sub == "status" and rtype.status_subresource):
                return None
            return Route(rtype, namespace, name, sub)
        return None
