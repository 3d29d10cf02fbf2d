"""The `Status` objects kube-apiserver answers errors with, and the exception that carries one.

Each builder returns the exact shape the real server sends (`kind: Status`, `apiVersion: v1`,
`status: Failure`, a `reason` and a `code`, `details` naming the object where there is one), with
the real messages, so clients that branch on `reason` or `code` see what a cluster would show.
"""

from __future__ import annotations

from typing import Any

Doc = dict[str, Any]


class ApiError(Exception):
    """A request failed; `status` is the Status document and its `code` the HTTP status."""

    def __init__(self, status: Doc) -> None:
        super().__init__(status["message"])
        self.status = status

    @property
    def code(self) -> int:
        """The HTTP status code."""
        return int(self.status["code"])


def failure(code: int, reason: str, message: str, details: Doc | None = None) -> Doc:
    """A `Status` with `status: Failure`."""
    doc: Doc = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        doc["details"] = details
    return doc


def success(name: str, group: str, plural: str, uid: str) -> Doc:
    """What DELETE answers for resources that do not return the deleted object (ConfigMaps)."""
    details: Doc = {"name": name, "kind": plural, "uid": uid}
    if group:
        details["group"] = group
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    }


def _qualified(group: str, plural: str) -> str:
    return f"{plural}.{group}" if group else plural


def _details(name: str, group: str, plural: str) -> Doc:
    details: Doc = {"kind": plural}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    return details


def unauthorized() -> ApiError:
    """401: no bearer token, or one nobody issued."""
    return ApiError(failure(401, "Unauthorized", "Unauthorized"))


def forbidden(
    user: str, verb: str, *, group: str, plural: str, name: str, namespace: str | None
) -> ApiError:
    """403 with RBAC's message: `... cannot list resource "configmaps" in API group ""...`."""
    resource, _, sub = plural.partition("/")
    what = f'{_qualified(group, resource)} "{name}"' if name else _qualified(group, resource)
    scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    subresource = f"/{sub}" if sub else ""
    message = (
        f'{what} is forbidden: User "{user}" cannot {verb} resource "{resource}{subresource}" '
        f'in API group "{group}" {scope}'
    )
    return ApiError(failure(403, "Forbidden", message, _details(name, group, resource)))


def not_found(group: str, plural: str, name: str) -> ApiError:
    """404 for a named object: `configmaps "aws-auth" not found`."""
    message = f'{_qualified(group, plural)} "{name}" not found'
    return ApiError(failure(404, "NotFound", message, _details(name, group, plural)))


def no_route() -> ApiError:
    """404 for a path no API serves."""
    return ApiError(
        failure(404, "NotFound", "the server could not find the requested resource", {})
    )


def already_exists(group: str, plural: str, name: str) -> ApiError:
    """409 from a create whose name is taken."""
    message = f'{_qualified(group, plural)} "{name}" already exists'
    return ApiError(failure(409, "AlreadyExists", message, _details(name, group, plural)))


def conflict(group: str, plural: str, name: str) -> ApiError:
    """409 from an update whose `metadata.resourceVersion` (or precondition) is stale."""
    message = (
        f'Operation cannot be fulfilled on {_qualified(group, plural)} "{name}": the object has '
        "been modified; please apply your changes to the latest version and try again"
    )
    return ApiError(failure(409, "Conflict", message, _details(name, group, plural)))


def bad_request(message: str) -> ApiError:
    """400 BadRequest."""
    return ApiError(failure(400, "BadRequest", message))


def invalid(kind: str, group: str, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """422 Invalid; each cause is (field, type such as FieldValueRequired, message)."""
    qualified = f"{kind}.{group}" if group else kind
    text = ", ".join(f"{field}: {message}" for field, _, message in causes)
    details = {
        "name": name,
        "kind": kind,
        "causes": [{"reason": r, "message": m, "field": f} for f, r, m in causes],
    }
    if group:
        details["group"] = group
    return ApiError(failure(422, "Invalid", f'{qualified} "{name}" is invalid: {text}', details))


def expired(message: str) -> Doc:
    """410 Expired: a resourceVersion older than the retained history."""
    return failure(410, "Expired", message)


def too_old(requested: int, oldest: int) -> Doc:
    """The watch error for a compacted resourceVersion, exactly as the watch cache words it."""
    return expired(f"too old resource version: {requested} ({oldest})")


def too_large(requested: int) -> ApiError:
    """504 from a list that waited for a resourceVersion the store has not reached."""
    return ApiError(
        failure(
            504,
            "Timeout",
            f"Too large resource version: {requested}, current: unknown",
            {
                "causes": [
                    {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
                ],
                "retryAfterSeconds": 1,
            },
        )
    )


def unsupported_media(accepted: list[str]) -> ApiError:
    """415 for a PATCH content type the resource does not take."""
    message = (
        "the body of the request was in an unknown format - accepted media types include: "
        + ", ".join(accepted)
    )
    return ApiError(failure(415, "UnsupportedMediaType", message))


def method_not_allowed(method: str) -> ApiError:
    """405 for a verb the path does not serve."""
    return ApiError(
        failure(
            405,
            "MethodNotAllowed",
            f"the server does not allow this method on the requested resource ({method})",
        )
    )


def injected(code: int) -> ApiError:
    """What `fail_next` answers: the reason the real server uses for that code."""
    reasons = {
        429: ("TooManyRequests", "Too many requests, please try again later."),
        500: ("InternalError", "Internal error occurred: injected by the fake"),
        503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
        504: ("Timeout", "the server was unable to return a response in the time allotted"),
    }
    reason, message = reasons.get(code, ("InternalError", f"injected failure {code}"))
    return ApiError(failure(code, reason, message))
