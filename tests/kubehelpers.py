"""Kubernetes backend test helpers: a client on the fake API server, waiting, identities."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from authd.identity import Identity
from authd.server.kube.client import KubeClient
from authd.server.kube.connection import Connection, open_client
from authd.server.kube.informer import Backoff
from tests.fakes.apiserver import ADMIN_TOKEN, FakeApiServer

FAST = Backoff(initial=0.05, cap=0.2, jitter=0.0)


@asynccontextmanager
async def open_fake_client(
    api: FakeApiServer, token: str = ADMIN_TOKEN
) -> AsyncIterator[KubeClient]:
    """A real `KubeClient` over HTTPS to the fake API server, with a bearer token."""
    connection = Connection(server=api.url, ssl_context=api.client_context(), token=token)
    async with open_client(connection, timeout=10) as client:
        yield client


async def wait_until(check: Callable[[], bool], *, seconds: float = 10) -> None:
    """Poll `check` on the trio loop until it holds; fail after `seconds`.

    What `check` reads changes in other tasks and in the fake's threads, with no event to wait on.
    """
    with trio.fail_after(seconds):
        while not check():  # noqa: ASYNC110 - state owned by threads, no event to await
            await trio.sleep(0.01)


def identity(arn: str, *, account: str = "111122223333", user_id: str = "AIDAEXAMPLE") -> Identity:
    """A verified identity whose canonical ARN is `arn`."""
    return Identity(
        arn=arn,
        canonical_arn=arn,
        account_id=account,
        user_id=user_id,
        session_name="",
        access_key_id="AKIAEXAMPLE",
    )
