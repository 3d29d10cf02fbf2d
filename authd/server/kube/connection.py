"""How to reach the API server: `--kubeconfig`, `--master` or in-cluster, as upstream decides.

upstream builds its client with client-go's `clientcmd.BuildConfigFromFlags(master, kubeconfig)`;
`connection_from` follows the same rules (docs/kubernetes.md):

- both empty: the in-cluster configuration: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`,
  the service account token file (re-read as the kubelet rotates it) and its `ca.crt`;
- `--kubeconfig`: its current context's cluster (server, `certificate-authority(-data)`,
  `insecure-skip-tls-verify`) and user (`token`, `tokenFile`, `client-certificate(-data)`,
  `client-key(-data)`); relative file names are relative to the kubeconfig's directory;
- `--master`: overrides the server URL (alone, it is the whole configuration).

A user that needs an exec credential plugin or an auth-provider is refused: authd runs no
programs to get credentials. Only `authd/cli` reads `os.environ`; the environment is passed in.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Generator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import structlog
import yaml

import authd
from authd.server.kube import KubeError
from authd.server.kube.client import KubeClient

__all__ = [
    "IN_CLUSTER_CA_FILE",
    "IN_CLUSTER_TOKEN_FILE",
    "BearerAuth",
    "Connection",
    "connection_from",
    "open_client",
]

IN_CLUSTER_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105 - a path
IN_CLUSTER_CA_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"

_log = structlog.get_logger("authd.server.kube")


@dataclass(frozen=True, slots=True, kw_only=True)
class Connection:
    """Where the API server is and how to authenticate to it.

    `token_file`, when set, is read before each request that finds it changed (by mtime, size
    and inode); `token` is used while the file cannot be read, as client-go does.
    """

    server: str
    ssl_context: ssl.SSLContext
    token_file: str = ""
    token: str = ""


def connection_from(
    *,
    kubeconfig: str,
    master: str,
    env: Mapping[str, str],
    token_file: str = IN_CLUSTER_TOKEN_FILE,
    ca_file: str = IN_CLUSTER_CA_FILE,
    context: str = "",
) -> Connection:
    """The connection `--kubeconfig`/`--master` describe, or the in-cluster one when both are empty.

    Args:
        kubeconfig: path of a kubeconfig file, or "".
        master: API server URL overriding the kubeconfig's, or "".
        env: the process environment (only `KUBERNETES_SERVICE_HOST`/`_PORT` are read).
        token_file, ca_file: the in-cluster service account files (tests point elsewhere).
        context: the kubeconfig context to use instead of its `current-context` ("" for that).

    Raises:
        KubeError: not in a cluster, an unreadable or incomplete kubeconfig, an exec-plugin or
            auth-provider user, unreadable certificates or token file.
    """
    if kubeconfig:
        return _from_kubeconfig(Path(kubeconfig), master=master, use_context=context)
    if master:
        return Connection(server=_server_url(master, tls=False), ssl_context=_tls())
    _log.warning(
        "neither --kubeconfig nor --master was specified, using the in-cluster configuration"
    )
    return _in_cluster(env, token_file=token_file, ca_file=ca_file)


@asynccontextmanager
async def open_client(
    connection: Connection,
    *,
    timeout: float = 30.0,  # noqa: ASYNC109 - httpx's per-request timeout, not a deadline
    transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncIterator[KubeClient]:
    """A `KubeClient` for `connection`, its HTTP connections closed on exit.

    Args:
        timeout: connect, write and (outside watches) read timeout in seconds.
        transport: for tests (`httpx.MockTransport`); the default is httpx's own.
    """
    async with httpx.AsyncClient(
        base_url=connection.server,
        verify=connection.ssl_context,
        auth=BearerAuth(token=connection.token, token_file=connection.token_file),
        headers={"Accept": "application/json", "User-Agent": f"authd/{authd.__version__}"},
        timeout=timeout,
        follow_redirects=False,
        transport=transport,
    ) as http:
        yield KubeClient(http)


class BearerAuth(httpx.Auth):
    """`Authorization: Bearer <token>`, from a token file re-read when it changes.

    A token file that cannot be read (mid-rotation, removed) leaves the last token it gave, or
    the static token, in use; without any token no header is sent (the server answers 401).
    """

    def __init__(self, *, token: str = "", token_file: str = "") -> None:
        self._token = token
        self._file = token_file
        self._seen: tuple[int, int, int] | None = None

    def current(self) -> str:
        """The token to send now."""
        if self._file:
            self._refresh()
        return self._token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Add the header (httpx calls this for every request)."""
        token = self.current()
        if token:
            request.headers["Authorization"] = f"Bearer {token}"
        yield request

    def _refresh(self) -> None:
        try:
            stat = os.stat(self._file)
            seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if seen == self._seen:
                return
            token = Path(self._file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            _log.warning("cannot read the API server token file", path=self._file, error=str(exc))
            return
        if token:
            self._token, self._seen = token, seen


def _in_cluster(env: Mapping[str, str], *, token_file: str, ca_file: str) -> Connection:
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise KubeError(
            "unable to load in-cluster configuration, KUBERNETES_SERVICE_HOST and "
            "KUBERNETES_SERVICE_PORT must be defined (or give --kubeconfig or --master)"
        )
    token = _read_token(token_file, where="in-cluster configuration")
    try:
        context = _tls(ca_file=ca_file)
    except KubeError as exc:
        # client-go logs this and goes on with the system's roots; so does authd.
        _log.error("cannot load the in-cluster CA, using the system's", error=str(exc))
        context = _tls()
    return Connection(
        server=f"https://{_join_host_port(host, port)}",
        ssl_context=context,
        token_file=token_file,
        token=token,
    )


def _from_kubeconfig(path: Path, *, master: str, use_context: str = "") -> Connection:
    where = f"kubeconfig {path}"
    doc = _load_yaml(path)
    context_name = use_context or doc.get("current-context") or ""
    if not context_name:
        raise KubeError(f"{where}: no current-context")
    context = _named(doc, "contexts", "context", context_name, where)
    cluster_name, user_name = context.get("cluster") or "", context.get("user") or ""
    cluster = _named(doc, "clusters", "cluster", cluster_name, where)
    user = _named(doc, "users", "user", user_name, where) if user_name else {}
    _refuse_plugins(user, user_name, where)
    base = path.parent
    tls = _tls(
        ca_file=_local(cluster.get("certificate-authority"), base),
        ca_data=_b64(cluster.get("certificate-authority-data"), f"{where}: cluster {cluster_name}"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        cert_file=_local(user.get("client-certificate"), base),
        cert_data=_b64(user.get("client-certificate-data"), f"{where}: user {user_name}"),
        key_file=_local(user.get("client-key"), base),
        key_data=_b64(user.get("client-key-data"), f"{where}: user {user_name}"),
        where=where,
    )
    has_tls = any(
        cluster.get(key) for key in ("certificate-authority", "certificate-authority-data")
    ) or any(user.get(key) for key in ("client-certificate", "client-certificate-data"))
    has_tls = has_tls or bool(cluster.get("insecure-skip-tls-verify"))
    server = master or cluster.get("server") or ""
    if not server:
        raise KubeError(f"{where}: cluster {cluster_name!r} has no server")
    token_file = _local(user.get("tokenFile"), base)
    token = str(user.get("token") or "")
    if token_file and not token:
        token = _read_token(token_file, where=f"{where}: user {user_name}")
    return Connection(
        server=_server_url(str(server), tls=has_tls),
        ssl_context=tls,
        token_file=token_file,
        token=token,
    )


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise KubeError(f"kubeconfig {path}: cannot read: {exc}") from exc
    if not isinstance(doc, dict):
        raise KubeError(f"kubeconfig {path}: not a kubeconfig (no mapping at the top)")
    return doc


def _named(doc: Mapping[str, Any], section: str, key: str, name: str, where: str) -> dict[str, Any]:
    """The `key` body of the entry called `name` in the kubeconfig's `section` list."""
    for entry in doc.get(section) or ():
        if isinstance(entry, dict) and entry.get("name") == name:
            body = entry.get(key) or {}
            if not isinstance(body, dict):
                raise KubeError(f"{where}: {key} {name!r} is not a mapping")
            return body
    raise KubeError(f"{where}: no {key} named {name!r} (in {section})")


def _refuse_plugins(user: Mapping[str, Any], name: str, where: str) -> None:
    for key, what in (("exec", "an exec credential plugin"), ("auth-provider", "an auth-provider")):
        if user.get(key):
            raise KubeError(
                f"{where}: user {name!r} gets its credentials from {what}, which authd does not "
                "run; give that user a token, tokenFile or client certificate"
            )
    if user.get("username") or user.get("password"):
        raise KubeError(f"{where}: user {name!r} uses basic authentication, which authd refuses")


def _tls(
    *,
    ca_file: str = "",
    ca_data: bytes = b"",
    insecure: bool = False,
    cert_file: str = "",
    cert_data: bytes = b"",
    key_file: str = "",
    key_data: bytes = b"",
    where: str = "",
) -> ssl.SSLContext:
    """The TLS context: the CA (or the system's), and the client certificate when there is one."""
    label = f"{where}: " if where else ""
    if insecure and (ca_file or ca_data):
        raise KubeError(f"{label}a CA together with insecure-skip-tls-verify is not allowed")
    try:
        context = ssl.create_default_context(
            cafile=ca_file or None, cadata=ca_data.decode("ascii") if ca_data else None
        )
        if insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if cert_file or cert_data or key_file or key_data:
            _load_client_cert(context, cert_file, cert_data, key_file, key_data)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise KubeError(f"{label}cannot load TLS files: {exc}") from exc
    return context


def _load_client_cert(
    context: ssl.SSLContext, cert_file: str, cert_data: bytes, key_file: str, key_data: bytes
) -> None:
    """Load the client certificate; the ssl module reads only files, so data goes to a 0600 one."""
    if not (cert_file or cert_data) or not (key_file or key_data):
        raise ValueError("a client certificate needs both the certificate and the key")
    with tempfile.TemporaryDirectory(prefix="authd-kube-") as scratch:
        if cert_data:
            cert_file = _private_file(Path(scratch) / "client.crt", cert_data)
        if key_data:
            key_file = _private_file(Path(scratch) / "client.key", key_data)
        context.load_cert_chain(cert_file, key_file)


def _private_file(path: Path, data: bytes) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return str(path)


def _read_token(path: str, *, where: str) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise KubeError(f"{where}: cannot read the token file: {exc}") from exc
    if not token:
        raise KubeError(f"{where}: the token file {path} is empty")
    return token


def _b64(value: object, where: str) -> bytes:
    if not value:
        return b""
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError as exc:
        raise KubeError(f"{where}: *-data is not base64: {exc}") from exc


def _local(value: object, base: Path) -> str:
    """A kubeconfig file name, relative ones resolved against the kubeconfig's directory."""
    if not value:
        return ""
    return str(base / os.path.expanduser(str(value)))


def _server_url(server: str, *, tls: bool) -> str:
    """`server` with a scheme: client-go adds https when TLS is configured, else http."""
    if "://" in server:
        return server.rstrip("/")
    return f"{'https' if tls else 'http'}://{server.rstrip('/')}"


def _join_host_port(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
