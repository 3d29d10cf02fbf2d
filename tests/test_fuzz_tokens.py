"""Fuzzing tokens, TokenReview bodies and HTTP request bytes through the real App and HTTP server.

The strategies and invariants are tests/fuzzing.py's (docs/RELIABILITY.md): no crash, no 5xx,
no false accept, no request to the canary or outside the allowlist, no secret in a log line.
The tests after the properties show that each check can fail.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator

import pytest

from authd.token import encode
from tests.fakes.canary import Canary
from tests.fakes.signing_sts import decode_url, genuine
from tests.fuzzing import (
    CLUSTER_ID,
    TokenCase,
    TokenHarness,
    check_http,
    check_review_body,
    check_token,
    http_requests,
    review_bodies,
    run,
    secrets_of,
    signed_url,
    token_harness,
    tokens,
)

PARAMS = [("Action", "GetCallerIdentity"), ("X-Amz-Date", "20240115T115500Z")]


@pytest.fixture(scope="module")
def harness() -> Iterator[TokenHarness]:
    """One App, signing STS and canary for the module's properties."""
    with token_harness() as started:
        yield started


def test_no_token_is_falsely_accepted_crashes_or_leaks(harness: TokenHarness) -> None:
    """800 tokens: signed, edited, re-hosted to the canary, random; every invariant holds."""
    assert run(tokens(harness), lambda case: check_token(harness, case), 800) == 800
    assert harness.sts.accepted_count() > 0, "no signed token was ever accepted"
    assert harness.canary.hits == 0


def test_no_review_body_makes_a_server_error(harness: TokenHarness) -> None:
    """400 TokenReview bodies of every shape get a 200 verdict or a 400, and log no secret."""
    assert run(review_bodies(harness), lambda case: check_review_body(harness, case), 400) == 400


def test_no_request_bytes_make_a_server_error(harness: TokenHarness) -> None:
    """400 raw requests through the real HTTP server: never a 5xx, never the canary."""
    assert run(http_requests(harness), lambda case: check_http(harness, case), 400) == 400


def test_a_signed_token_is_allowed_and_one_changed_byte_is_not(harness: TokenHarness) -> None:
    """The stand-in answers only its own signatures, so the false-accept check has teeth."""
    url = signed_url(harness.sts.netloc, [*PARAMS, ("X-Amz-SignedHeaders", "x-k8s-aws-id")])
    url = url.replace("X-Amz-Date=20240115T115500Z", "X-Amz-Date=20240115T115500Z&X-Amz-Expires=60")
    assert not genuine(url, host=harness.sts.netloc, cluster_id=CLUSTER_ID)
    check_token(harness, TokenCase(encode(url)))  # re-ordered after signing: refused by STS
    good = signed_url(
        harness.sts.netloc,
        [*PARAMS, ("X-Amz-Expires", "60"), ("X-Amz-SignedHeaders", "x-k8s-aws-id")],
    )
    assert genuine(good, host=harness.sts.netloc, cluster_id=CLUSTER_ID)
    check_token(harness, TokenCase(encode(good), signed=True))
    forged = good[:-1] + ("0" if good[-1] != "0" else "1")
    with pytest.raises(AssertionError, match="refused"):
        check_token(harness, TokenCase(encode(forged), signed=True))


def test_secrets_of_a_token_include_its_body_and_signature() -> None:
    """The log check looks for the token, its base64 body and its signature, escaped or not."""
    url = "http://h/?X-Amz-Signatur%65=" + "ab" * 16 + "&X-Amz-Security-Token=" + "Z" * 20
    token = encode(url)
    assert decode_url(token) == url
    assert {token, token[11:], "ab" * 16, "Z" * 20} <= set(secrets_of(token))


def test_canary_counts_http_tls_and_silent_connections() -> None:
    """Any connection to the canary counts, whatever it says, so zero hits means none came."""
    canary = Canary().start()
    try:
        with socket.create_connection(("127.0.0.1", canary.port)) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(12) == b"HTTP/1.1 200"
        context = ssl.create_default_context()
        with (
            socket.create_connection(("127.0.0.1", canary.port)) as sock,
            pytest.raises((ssl.SSLError, OSError)),
        ):
            context.wrap_socket(sock, server_hostname="localhost")
        with socket.create_connection(("127.0.0.1", canary.port)):
            pass
        assert sorted(canary.wait_greeted(3)) == ["http", "silent", "tls"]
        assert canary.hits == 3
        assert f"127.0.0.1:{canary.port}" in canary.netlocs()
    finally:
        canary.stop()


def test_a_review_answer_is_parsed_json(harness: TokenHarness) -> None:
    """The review check reads the answer the App really gives (a sanity check on the harness)."""
    response = harness.review(b'{"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1"}')
    assert response.status == 200
    assert json.loads(response.body)["status"]["authenticated"] is False


@pytest.mark.parametrize(
    "key", ["X-Amz-Signatur%65", "X%2DAmz-Signature", "%58-Amz-Signature", "X-Amz-Security-Toke%6E"]
)
def test_a_respelled_secret_key_is_not_logged_when_the_url_is_malformed(
    harness: TokenHarness, key: str
) -> None:
    """Found by the token fuzzer: a URL that fails to parse is quoted in the error, and a
    signature under a percent-escaped key (which the query parser reads as X-Amz-Signature) went
    into the review's log line unredacted."""
    secret = "b15ac21019c18996bb5773253082ac1da7b598b90dbd2895f7d88dbba4acc07d"
    url = f"0http://{harness.sts.netloc}/?Action=GetCallerIdentity&{key}={secret}"
    assert secret in secrets_of(encode(url))
    check_token(harness, TokenCase(encode(url)))
    check_token(harness, TokenCase(encode(f"http://{harness.sts.netloc}/?{key}={secret}#%zz")))


@pytest.mark.parametrize(
    "framing",
    [
        b"Transfer-Encoding: gzip\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    ],
)
def test_an_unsupported_transfer_encoding_is_a_400(harness: TokenHarness, framing: bytes) -> None:
    """Found by the request fuzzer: h11 hints 501 for a transfer coding it does not support; a
    malformed request is the client's fault and gets 400, like every other protocol error."""
    answer = harness.exchange(b"POST /authenticate HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    check_http(harness, (b"POST /authenticate HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n", ""))
