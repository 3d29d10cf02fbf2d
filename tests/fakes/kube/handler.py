"""The HTTP side of the fake API server: one request in, one JSON answer or watch stream out.

`handler_for(api)` builds the `BaseHTTPRequestHandler` class the loopback server runs: it reads
the body (Content-Length or chunked), authenticates the bearer token, answers discovery and
SelfSubjectReview, routes resource requests, checks the user's rules (403), applies injected
failures, then calls the registry or starts a watch stream. Every answer is logged as a
`RequestRecord`.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import traceback
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.kube import discovery, protobuf, status
from tests.fakes.kube.auth import User
from tests.fakes.kube.discovery import NAMESPACES
from tests.fakes.kube.resources import ResourceType
from tests.fakes.kube.watch import WatchStream

if TYPE_CHECKING:
    from tests.fakes.kube.server import FakeApiServer

Doc = dict[str, Any]
SELF_SUBJECT_REVIEW = "/apis/authentication.k8s.io/v1/selfsubjectreviews"


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the server saw it: method, path, query (last value per key), user, status."""

    method: str
    path: str
    query: dict[str, str]
    user: str | None
    status: int
    content_type: str = ""


@dataclass(frozen=True, slots=True)
class Route:
    """Where a resource request goes: type, namespace (None: all), name, subresource."""

    rtype: ResourceType
    namespace: str | None
    name: str
    subresource: str


def _verb(method: str, route: Route, query: dict[str, str]) -> str:
    """The RBAC verb of a request, as the API server's request-info resolver names it."""
    if method == "GET":
        if route.name:
            return "get"
        return "watch" if query.get("watch") in ("1", "true", "True") else "list"
    return {
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if route.name else "deletecollection",
    }.get(method, method.lower())


def handler_for(api: FakeApiServer) -> type[BaseHTTPRequestHandler]:
    """The request handler class serving `api` (one instance per request, one thread each)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            del format, args

        def setup(self) -> None:
            super().setup()
            api._connected(self.connection, open_=True)

        def finish(self) -> None:
            api._connected(self.connection, open_=False)
            super().finish()

        def do_GET(self) -> None:
            self._serve()

        do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

        def _serve(self) -> None:
            split = urlsplit(self.path)
            self._query = {
                k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()
            }
            self._path = split.path.rstrip("/") or "/"
            self._user: User | None = None
            self._content_type = self.headers.get("content-type", "").split(";")[0].strip()
            body = self._read_body()
            try:
                self._user = api._authenticate(self.headers.get("authorization", ""))
                self._dispatch(body)
            except status.ApiError as error:
                self._json(error.code, error.status)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                self.close_connection = True
            except Exception:  # a fake's bug must surface as a 500, not a hang
                traceback.print_exc()
                self._json(
                    500,
                    status.failure(
                        500, "InternalError", "Internal error occurred: fake apiserver bug"
                    ),
                )

        def _read_body(self) -> bytes:
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                data = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()
            length = int(self.headers.get("content-length") or 0)
            return self.rfile.read(length) if length else b""

        def _dispatch(self, body: bytes) -> None:
            assert self._user is not None
            if self.command == "POST" and self._path == SELF_SUBJECT_REVIEW:
                # kubectl sends this request as protobuf; its spec is empty, so it is not read.
                self._json(201, _self_subject_review(self._user.info()))
                return
            if self.command == "GET":
                doc = api._discovery(self._path, urlsplit(api.url).netloc)
                if doc is not None:
                    self._json(200, doc)
                    return
            route = api._route(self._path)
            if route is None:
                raise status.no_route()
            verb = _verb(self.command, route, self._query)
            resource = route.rtype.plural + (f"/{route.subresource}" if route.subresource else "")
            # As the API server's request-info resolver does, a list or watch with an exact
            # `metadata.name` field selector is authorized as a request for that name, so a
            # rule with resourceNames can allow it (the RBAC docs' "Referring to resources").
            name = route.name or (_selected_name(self._query) if verb in ("list", "watch") else "")
            if not self._user.may(verb, resource, route.namespace, name):
                raise status.forbidden(
                    self._user.name,
                    verb,
                    group=route.rtype.group,
                    plural=resource,
                    name=route.name,
                    namespace=route.namespace,
                )
            injected = api._injected(verb, route.rtype.plural)
            if injected is not None:
                raise injected
            if route.rtype is NAMESPACES and verb not in ("get", "list", "watch"):
                raise status.method_not_allowed(self.command)
            self._resource(verb, route, body)

        def _resource(self, verb: str, route: Route, body: bytes) -> None:
            rtype, ns, name = route.rtype, route.namespace or "", route.name
            strict = self._query.get("fieldValidation") == "Strict"
            dry_run = self._query.get("dryRun") == "All"
            reg = api.registry
            if verb == "watch":
                WatchStream(self, api.watch, rtype, route.namespace, self._query).run()
                return
            if verb == "list":
                doc = reg.list(rtype, route.namespace, self._query)
                if discovery.wants_table(self.headers.get("accept", "")):
                    doc = discovery.table(
                        rtype,
                        doc["items"],
                        include=self._query.get("includeObject", "Metadata"),
                        rv=doc["metadata"]["resourceVersion"],
                        now=api.clock(),
                    )
                self._json(200, doc)
            elif verb == "get":
                obj = reg.get(rtype, ns if rtype.namespaced else "", name)
                if discovery.wants_table(self.headers.get("accept", "")):
                    obj = discovery.table(
                        rtype,
                        [obj],
                        include=self._query.get("includeObject", "Metadata"),
                        rv=obj["metadata"]["resourceVersion"],
                        now=api.clock(),
                    )
                self._json(200, obj)
            elif verb == "create":
                if route.subresource:
                    raise status.method_not_allowed(self.command)
                self._json(
                    201, reg.create(rtype, ns, self._decode(body), strict=strict, dry_run=dry_run)
                )
            elif verb == "update":
                self._json(
                    200,
                    reg.update(
                        rtype,
                        ns,
                        name,
                        self._decode(body),
                        subresource=route.subresource,
                        strict=strict,
                        dry_run=dry_run,
                    ),
                )
            elif verb == "patch":
                self._json(
                    200,
                    reg.patch(
                        rtype,
                        ns,
                        name,
                        self._content_type,
                        self._decode(body, patch=True),
                        subresource=route.subresource,
                        strict=strict,
                        dry_run=dry_run,
                    ),
                )
            elif verb == "delete":
                # DeleteOptions from typed clients come as protobuf; only JSON ones are read.
                json_body = body and self._content_type in ("", "application/json")
                options = self._decode(body) if json_body else {}
                self._json(200, reg.delete(rtype, ns, name, options, dry_run=dry_run))
            elif verb == "deletecollection":
                self._json(
                    200, reg.delete_collection(rtype, route.namespace, self._query, dry_run=dry_run)
                )
            else:
                raise status.method_not_allowed(self.command)

        def _decode(self, body: bytes, *, patch: bool = False) -> Any:
            if not patch and self._content_type == protobuf.MEDIA_TYPE:
                return protobuf.decode(body)
            if not patch and self._content_type not in ("", "application/json"):
                raise status.unsupported_media(["application/json", protobuf.MEDIA_TYPE])
            try:
                return json.loads(body)
            except ValueError as exc:
                raise status.bad_request(
                    f"couldn't get version/kind; json parse error: {exc}"
                ) from None

        def _json(self, code: int, doc: Doc) -> None:
            data = json.dumps(doc).encode()
            self.record(code)
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-cache, private")
            self.end_headers()
            self.wfile.write(data)

        def record(self, code: int) -> None:
            """Log this request with its answer's status."""
            api._record(
                RequestRecord(
                    self.command,
                    self._path,
                    dict(self._query),
                    self._user.name if self._user else None,
                    code,
                    self._content_type,
                )
            )

        def abort(self) -> None:
            """Close the connection now, without a closing chunk or TLS close_notify."""
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    return Handler


def _selected_name(query: dict[str, str]) -> str:
    """The name an exact `metadata.name=` (or `==`) field selector picks, or ""."""
    for term in query.get("fieldSelector", "").split(","):
        for op in ("==", "="):
            field, sep, value = term.partition(op)
            if sep and field.strip() == "metadata.name":  # `!=` leaves "metadata.name!" here
                return value.strip()
    return ""


def _self_subject_review(user: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "SelfSubjectReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": None},
        "status": {"userInfo": user},
    }
