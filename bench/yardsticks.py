"""Two fixed yardstick servers for bench/server.py: bare hypercorn+trio ASGI, and bare trio+h11.

Each one decodes the TokenReview JSON body and answers a constant TokenReview over TLS (1.2 or
later), with nothing else in the way: no routing, no limits, no logging. They are the measure
authd's throughput is compared with, so they are kept minimal on purpose and share no code with
authd's server. Run one as a process of its own:

    python -m bench.yardsticks {hypercorn,h11} --port PORT --cert CERT --key KEY
"""

from __future__ import annotations

import argparse
import contextlib
import json
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, cast

import h11
import trio

# The answer authd gives an allowed review (same shape and size), sent as is every time.
ANSWER = json.dumps(
    {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "metadata": {"creationTimestamp": None},
        "spec": {},
        "status": {
            "authenticated": True,
            "user": {
                "username": "bench",
                "uid": "aws-iam-authenticator:123456789012:AIDABENCH",
                "groups": ["bench"],
                "extra": {
                    "accessKeyId": ["AKIABENCHEXAMPLE0000"],
                    "arn": ["arn:aws:iam::123456789012:user/bench"],
                    "canonicalArn": ["arn:aws:iam::123456789012:user/bench"],
                    "principalId": ["AIDABENCH"],
                    "sessionName": [""],
                    "sigs.k8s.io/aws-iam-authenticator/principalId": ["AIDABENCH"],
                },
            },
        },
    },
    separators=(",", ":"),
).encode()
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]
BAD = b'{"error":"not a TokenReview"}'

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def is_review(body: bytes) -> bool:
    """Decode the body as authd must: JSON with a TokenReview kind and a string token."""
    try:
        review = json.loads(body)
    except ValueError:
        return False
    return (
        isinstance(review, dict)
        and review.get("kind") == "TokenReview"
        and isinstance(review.get("spec", {}).get("token"), str)
    )


async def asgi_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The bare ASGI handler: read the whole body, decode it, send the constant answer."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    ok = is_review(b"".join(chunks))
    body = ANSWER if ok else BAD
    headers = HEADERS if ok else [(b"content-length", str(len(BAD)).encode())]
    await send({"type": "http.response.start", "status": 200 if ok else 400, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def run_hypercorn(*, port: int, cert: str, key: str) -> None:
    """Serve `asgi_app` with hypercorn's trio worker until interrupted."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.certfile = cert
    config.keyfile = key
    config.accesslog = None
    config.errorlog = "-"
    # hypercorn types the app with its own TypedDicts; the plain dicts here are what it sends.
    trio.run(partial(serve, cast(Any, asgi_app), config))


async def h11_connection(stream: trio.SSLStream[trio.SocketStream]) -> None:
    """Answer keep-alive requests on one TLS connection until the client goes away."""
    conn = h11.Connection(h11.SERVER)
    body = bytearray()
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                ok = is_review(bytes(body))
                body.clear()
                status, payload = (200, ANSWER) if ok else (400, BAD)
                headers = HEADERS if ok else [(b"content-length", str(len(BAD)).encode())]
                await stream.send_all(
                    conn.send(h11.Response(status_code=status, headers=headers))
                    + conn.send(h11.Data(data=payload))
                    + conn.send(h11.EndOfMessage())
                )
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                break
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        pass  # the client went away or spoke nonsense: a yardstick just drops it
    finally:
        await trio.aclose_forcefully(stream)


def run_h11(*, port: int, cert: str, key: str) -> None:
    """Serve `h11_connection` on trio's SSLStream until interrupted."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(cert, key)
    trio.run(
        partial(
            trio.serve_ssl_over_tcp,
            h11_connection,
            port,
            context,
            host="127.0.0.1",
            https_compatible=True,
        )
    )


SERVERS: dict[str, Callable[..., None]] = {"hypercorn": run_hypercorn, "h11": run_h11}


def main(argv: list[str] | None = None) -> int:
    """Run the named yardstick in the foreground; SIGINT or SIGTERM stops it."""
    parser = argparse.ArgumentParser(prog="python -m bench.yardsticks", description=__doc__)
    parser.add_argument("server", choices=sorted(SERVERS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        SERVERS[args.server](port=args.port, cert=args.cert, key=args.key)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
