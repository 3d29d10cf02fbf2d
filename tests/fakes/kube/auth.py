"""Who is calling and what they may do: bearer tokens, an optional token webhook, RBAC-ish rules.

Every request needs `Authorization: Bearer <token>`; a missing or unknown token is 401. A token is
known when it is in the token table (as a static token file would have it) or, when a webhook
client is configured, when the webhook vouches for it, as kube-apiserver does with
`--authentication-token-webhook-config-file`. Each user carries allow rules in RBAC's terms
(verbs, resources such as `configmaps` or `iamidentitymappings/status`, namespaces, names); a
request no rule allows is 403 with RBAC's wording. `forbid()` subtracts grants from a token.
"""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import yaml

Doc = dict[str, object]


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """Allows `verbs` on `resources` (`*` for any), in `namespaces` and `names` (None: any)."""

    verbs: frozenset[str]
    resources: frozenset[str]
    namespaces: frozenset[str] | None = None
    names: frozenset[str] | None = None

    def allows(self, verb: str, resource: str, namespace: str | None, name: str) -> bool:
        """Does this rule cover the request?"""
        return (
            ("*" in self.verbs or verb in self.verbs)
            and ("*" in self.resources or resource in self.resources)
            and (self.namespaces is None or (namespace or "") in self.namespaces)
            and (self.names is None or name in self.names)
        )


def rule(
    verbs: str | list[str],
    resources: str | list[str],
    *,
    namespaces: list[str] | None = None,
    names: list[str] | None = None,
) -> Rule:
    """A `Rule` from plain strings: `rule(["list", "watch"], "configmaps", namespaces=[...])`."""
    return Rule(
        verbs=frozenset([verbs] if isinstance(verbs, str) else verbs),
        resources=frozenset([resources] if isinstance(resources, str) else resources),
        namespaces=frozenset(namespaces) if namespaces is not None else None,
        names=frozenset(names) if names is not None else None,
    )


ALLOW_ALL = (rule("*", "*"),)


@dataclass(frozen=True, slots=True, kw_only=True)
class User:
    """An authenticated caller and what it may do."""

    name: str
    groups: tuple[str, ...] = ("system:authenticated",)
    rules: tuple[Rule, ...] = ALLOW_ALL
    denied: frozenset[tuple[str, str]] = field(default_factory=frozenset)
    extra: Doc = field(default_factory=dict)

    def may(self, verb: str, resource: str, namespace: str | None, name: str) -> bool:
        """RBAC's answer for this user (grants minus `forbid()`den verb/resource pairs)."""
        if (verb, resource) in self.denied or ("*", resource) in self.denied:
            return False
        return any(r.allows(verb, resource, namespace, name) for r in self.rules)

    def info(self) -> Doc:
        """The `userInfo` a SelfSubjectReview reports."""
        doc: Doc = {"username": self.name, "groups": list(self.groups)}
        if self.extra:
            doc.update(self.extra)
        return doc


class TokenReviewer(Protocol):
    """The webhook side: the user a token belongs to, or None."""

    def review(self, token: str) -> dict[str, object] | None:
        """Ask the webhook."""
        ...


def webhook_user(answer: dict[str, object]) -> User:
    """A `User` from a TokenReview's `status.user`, allowed everything (RBAC is not the point)."""
    groups = answer.get("groups") or []
    extra = {k: v for k, v in answer.items() if k not in ("username", "groups")}
    return User(
        name=str(answer.get("username", "")),
        groups=tuple(str(g) for g in groups) if isinstance(groups, list) else (),
        extra=extra,
    )


class WebhookClient:
    """kube-apiserver's side of the token webhook, configured from the webhook kubeconfig."""

    def __init__(self, kubeconfig: Path) -> None:
        doc = yaml.safe_load(kubeconfig.read_text())
        cluster = doc["clusters"][0]["cluster"]
        self.url = cluster["server"]
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
        self._context = ssl.create_default_context(cadata=ca)
        self.reviews: list[dict[str, Any]] = []

    def review(self, token: str) -> dict[str, Any] | None:
        """The user the webhook vouches for, or None when it refuses."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "metadata": {"creationTimestamp": None},
            "spec": {"token": token},
        }
        with httpx.Client(verify=self._context, timeout=30) as client:
            response = client.post(self.url, json=body)
        answer = response.json() if response.status_code == 200 else {}
        self.reviews.append({"status": response.status_code, "answer": answer})
        status = answer.get("status", {})
        return status.get("user") if status.get("authenticated") else None
