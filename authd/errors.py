"""The whole exception tree of authd.

    AuthdError
    ├── ConfigError (ValueError)          bad flags, config file, mapping file
    ├── BadRequestError (ValueError)      a webhook request that is not a TokenReview
    ├── ArnError (ValueError)             an ARN that cannot be canonicalised
    ├── TokenFormatError (ValueError)     fails a local check (C1-C16 in docs/upstream-compat.md)
    ├── StsError                          STS could not vouch for the token
    │   ├── StsRejectedError              STS answered 4xx: signature, expired, access denied
    │   ├── StsThrottledError             STS or authd's own limiter throttled the call
    │   └── StsUnavailableError           5xx, 3xx, timeout, connection error, unreadable body
    ├── Ec2Error                          DescribeInstances could not name an instance's private DNS
    ├── ListenError (OSError)             the server cannot listen on its address at start-up
    ├── MappingError                      the identity is verified but gets no Kubernetes user
    │   ├── NotMappedError                no backend maps it
    │   ├── ReservedPrefixError           the username starts with a reserved prefix
    │   └── TemplateError                 a username or group template cannot be rendered
    ├── ClientError                       the `token` command cannot make a token
    │   └── CredentialError               no usable AWS credentials, or AssumeRole refused
    └── KubeError                         the Kubernetes API could not be reached or refused
        ├── Unauthorized                  401: credentials missing or not accepted
        ├── Forbidden                     403: RBAC does not grant the verb on the resource
        ├── NotFound                      404
        ├── Conflict                      409: stale resourceVersion, or already exists
        └── Gone                          410: resourceVersion compacted away; list again

Each class carries `reason`, the code used in logs, metric labels and the `status.error` of
transient TokenReview answers (docs/server.md). Foreign exceptions are translated at the
boundary with `raise ... from`. What a review answers for each class is
`authd.outcomes.OUTCOMES`, one row per class.
"""

from __future__ import annotations

from http import HTTPStatus


class AuthdError(Exception):
    """Base of every error authd raises on purpose."""

    reason = "error"


class ConfigError(AuthdError, ValueError):
    """Invalid configuration; the message names the file, line and key where known.

    The same location is kept as attributes for logs and tools, so nobody has to read it back
    out of the text: `path` (the file), `line` (1-based) and `key` (the key path, as
    `server.mapRoles[3].rolearn`); each is None when unknown or not from a file.
    """

    reason = "config_error"

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.line = line
        self.key = key

    def prefixed(self, text: str) -> ConfigError:
        """The same error at the same location, its message preceded by `text: `."""
        return ConfigError(f"{text}: {self}", path=self.path, line=self.line, key=self.key)


class BadRequestError(AuthdError, ValueError):
    """A webhook request body that is not a TokenReview the server can answer."""

    reason = "bad_request"


class ArnError(AuthdError, ValueError):
    """An ARN that is not a valid identity ARN (R1-R9 in docs/upstream-compat.md)."""

    reason = "bad_arn"


class TokenFormatError(AuthdError, ValueError):
    """A token that fails a local check; rendered as upstream renders it.

    See C1-C16 in docs/upstream-compat.md.
    """

    reason = "bad_token"

    def __init__(self, detail: str) -> None:
        super().__init__(f"input token was not properly formatted: {detail}")
        self.detail = detail


class StsError(AuthdError):
    """STS could not confirm who signed the token.

    `status` is the HTTP status STS answered with, or None when no answer came (transport
    failure, timeout); the caller turns it into the upstream `sts_responses_total` metric.
    `code` is STS's error code (`SignatureDoesNotMatch`, `InvalidClientTokenId`, ...) when its
    answer named one, else "". `retryable` says whether another try could get another answer:
    false for a name that does not resolve or an error inside authd's own client.
    """

    reason = "sts_error"

    def __init__(
        self, detail: str, *, status: int | None = None, code: str = "", retryable: bool = True
    ) -> None:
        super().__init__(f"sts getCallerIdentity failed: {detail}")
        self.detail = detail
        self.status = status
        self.code = code
        self.retryable = retryable


class StsRejectedError(StsError):
    """STS refused the presigned request (a definitive answer: wrong cluster ID, tampering)."""

    reason = "sts_rejected"


class StsThrottledError(StsError):
    """STS, or authd's own rate limit in front of it, asks the caller to come back later."""

    reason = "throttled"

    def __init__(self, detail: str, *, status: int | None = None, retry_after: float = 1.0) -> None:
        AuthdError.__init__(self, f"sts getCallerIdentity was throttled: {detail}")
        self.detail = detail
        self.status = status
        self.code = "Throttling"
        self.retryable = False
        self.retry_after = retry_after


class StsUnavailableError(StsError):
    """STS could not be reached or answered something unreadable (a transient answer)."""

    reason = "sts_unavailable"


class Ec2Error(AuthdError):
    """EC2 could not give an instance's private DNS name (the mapper chain denies the review)."""

    reason = "ec2_error"


class ListenError(AuthdError, OSError):
    """The server cannot listen on an address: in use, not permitted, or no such address.

    The message names the address and the cause in one line (`cannot listen on
    127.0.0.1:21362: Address already in use`); the CLI prints it and exits 1.
    """

    reason = "listen_error"


class MappingError(AuthdError):
    """A verified identity that no backend turns into a Kubernetes user."""

    reason = "not_mapped"


class NotMappedError(MappingError):
    """No backend has a mapping for the identity."""

    reason = "not_mapped"


class ReservedPrefixError(MappingError):
    """The rendered username begins with a prefix reserved for that backend."""

    reason = "reserved_prefix"


class TemplateError(MappingError):
    """A username or group template could not be rendered."""

    reason = "template_error"


class ClientError(AuthdError):
    """The `token` command cannot produce a token."""

    reason = "client_error"


class CredentialError(ClientError):
    """No usable AWS credentials were found, or STS refused to assume the role."""

    reason = "credentials"


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
