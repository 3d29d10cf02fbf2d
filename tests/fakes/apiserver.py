"""A stand-in for kube-apiserver, speaking its real wire protocol (the package is tests/fakes/kube).

kube-apiserver cannot run here. `FakeApiServer` serves over HTTPS on 127.0.0.1:

- Authentication as kube-apiserver does it with a static token table and, when given a webhook
  kubeconfig, `--authentication-token-webhook-config-file`: it POSTs a `TokenReview`
  (authentication.k8s.io/v1) to the webhook and treats 200 with `status.authenticated: true` as
  the user; anything else is 401 Unauthorized. `POST /apis/authentication.k8s.io/v1/
  selfsubjectreviews` (what `kubectl auth whoami` calls) shows exactly that user.
- Discovery, OpenAPI v3 and the ConfigMap and IAMIdentityMapping endpoints with get, list,
  watch, create, update, patch and delete, RBAC-ish 403s, and test controls
  (tests/fakes/kube/server.py).
"""

from __future__ import annotations

from tests.fakes.kube.auth import User, WebhookClient, rule
from tests.fakes.kube.handler import SELF_SUBJECT_REVIEW, RequestRecord
from tests.fakes.kube.server import ADMIN_TOKEN, FakeApiServer
from tests.fakes.kube.status import unauthorized
from tests.fakes.kube.tls import serving_cert

UNAUTHORIZED = unauthorized().status

__all__ = [
    "ADMIN_TOKEN",
    "SELF_SUBJECT_REVIEW",
    "UNAUTHORIZED",
    "FakeApiServer",
    "RequestRecord",
    "User",
    "WebhookClient",
    "rule",
    "serving_cert",
]
