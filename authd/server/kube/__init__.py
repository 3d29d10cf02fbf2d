"""A small Kubernetes API client for trio: connection, list/watch/get/write, informer; its errors.

authd follows two things in the API server live: the EKS `kube-system/aws-auth` ConfigMap and the
cluster-scoped `IAMIdentityMapping` custom resources. Three modules do it, each on httpx (which
runs under trio), with no Kubernetes library underneath (docs/kubernetes.md says why):

- `connection`: how to reach the API server, from `--kubeconfig`/`--master` or in-cluster, as
  client-go's `BuildConfigFromFlags` decides; `open_client` gives a `KubeClient`.
- `client`: list, watch, get, create, replace and status patch on API paths, errors translated.
- `informer`: list then watch one collection, keeping the current set of objects.

The error classes live in `authd/errors.py` and are re-exported here:

    AuthdError
    └── KubeError                  the API server could not be reached or refused a request
        ├── Unauthorized           401: no credentials or credentials it does not accept
        ├── Forbidden              403: RBAC does not allow the verb on the resource
        ├── NotFound               404
        ├── Conflict               409: stale resourceVersion on replace, or already exists
        └── Gone                   410: resourceVersion compacted away; list again
"""

from __future__ import annotations

from authd.errors import Conflict, Forbidden, Gone, KubeError, NotFound, Unauthorized

__all__ = [
    "Conflict",
    "Forbidden",
    "Gone",
    "KubeError",
    "NotFound",
    "Unauthorized",
    "error_for",
]


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
