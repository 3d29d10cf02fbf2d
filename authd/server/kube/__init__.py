"""A small Kubernetes API client for trio: connection, list/watch/get/write, informer; its errors.

authd follows two things in the API server live: the EKS `kube-system/aws-auth` ConfigMap and the
cluster-scoped `IAMIdentityMapping` custom resources. Three modules do it, each on httpx (which
runs under trio), with no Kubernetes library underneath (docs/kubernetes.md says why):

- `connection`: how to reach the API server, from `--kubeconfig`/`--master` or in-cluster, as
  client-go's `BuildConfigFromFlags` decides; `open_client` gives a `KubeClient`.
- `client`: list, watch, get, create, replace and status patch on API paths, errors translated.
- `informer`: list then watch one collection, keeping the current set of objects.

The error classes live here until they move into `authd/errors.py`:

    AuthdError
    └── KubeError                  the API server could not be reached or refused a request
        ├── Unauthorized           401: no credentials or credentials it does not accept
        ├── Forbidden              403: RBAC does not allow the verb on the resource
        ├── NotFound               404
        ├── Conflict               409: stale resourceVersion on replace, or already exists
        └── Gone                   410: resourceVersion compacted away; list again
"""

from __future__ import annotations

from http import HTTPStatus

from authd.errors import AuthdError

__all__ = [
    "Conflict",
    "Forbidden",
    "Gone",
    "KubeError",
    "NotFound",
    "Unauthorized",
    "error_for",
]


class KubeError(AuthdError):
    """A Kubernetes API request failed: transport, an unexpected status, or an unreadable answer.

    `verb` (list, watch, get, create, replace, patch_status, or "connect" for configuration)
    and `path` say which request; `status` is the HTTP status (None when no answer came);
    `detail` is the server's Status message or the transport's error. `str()` names them all.
    """

    reason = "kube_error"

    def __init__(self, detail: str, *, verb: str = "", path: str = "", status: int | None = None):
        self.detail = detail
        self.verb = verb
        self.path = path
        self.status = status
        where = f"{verb} {path}: " if verb or path else ""
        super().__init__(f"{where}{self.summary}")

    @property
    def summary(self) -> str:
        """`<code> <phrase>: <detail>` (`403 Forbidden: ...`) if answered, else `detail`."""
        if self.status is None:
            return self.detail
        try:
            phrase = HTTPStatus(self.status).phrase
        except ValueError:
            phrase = "Unknown"
        return f"{self.status} {phrase}: {self.detail}"


class Unauthorized(KubeError):
    """401: the API server does not accept the credentials (or none were sent)."""

    reason = "kube_unauthorized"


class Forbidden(KubeError):
    """403: the credentials are accepted but RBAC does not grant the verb on the resource."""

    reason = "kube_forbidden"


class NotFound(KubeError):
    """404: no such object or resource (for a CRD: not installed)."""

    reason = "kube_not_found"


class Conflict(KubeError):
    """409: the object changed since it was read (stale resourceVersion), or already exists."""

    reason = "kube_conflict"


class Gone(KubeError):
    """410: the resourceVersion is older than the server's history; the caller must list again."""

    reason = "kube_gone"


_BY_STATUS: dict[int, type[KubeError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
}


def error_for(status: int, detail: str, *, verb: str, path: str) -> KubeError:
    """The exception for an API answer with HTTP (or Status `code`) `status`."""
    return _BY_STATUS.get(status, KubeError)(detail, verb=verb, path=path, status=status)
