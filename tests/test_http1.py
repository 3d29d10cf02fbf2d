"""authd/server/sts/http1.py: the STS transport's HTTP/1.1 framing, alone and against h11.

The property that lets it replace h11 on the client side: every answer it reads, h11 reads to
the same status, reason, headers and body, and a connection it would reuse h11 would reuse
too. Hypothesis generates well-formed answers (which it must read), then damages some of them
(which it may refuse where h11 is lenient, never read differently).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import h11
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authd.server.sts import http1

Outcome = tuple[int, bytes, list[tuple[bytes, bytes]], bytes, bool] | str


def _events(
    next_event: Callable[[], object],
    receive_data: Callable[[bytes], None],
    need_data: object,
    chunks: Sequence[bytes],
    *,
    eof: bool,
) -> Iterator[object]:
    """A parser's events, feeding it `chunks` one at a time (then the end of the stream, when
    `eof`) whenever it needs data; stops when it needs more than there is."""
    pending = list(chunks)
    closed = False
    while True:
        event = next_event()
        if event is not need_data:
            yield event
        elif pending:
            receive_data(pending.pop(0))
        elif eof and not closed:
            receive_data(b"")
            closed = True
        else:
            return


def read_ours(chunks: Sequence[bytes], *, eof: bool, method: bytes = b"GET") -> Outcome:
    """(status, reason, headers, body, reusable), or "error" / "incomplete"."""
    parser = http1.ResponseParser()
    parser.start(method)
    head: http1.ResponseHead | None = None
    body = b""
    try:
        for event in _events(
            parser.next_event, parser.receive_data, http1.NEED_DATA, chunks, eof=eof
        ):
            if isinstance(event, http1.ResponseHead):
                head = event
            elif isinstance(event, bytes):
                body += event
            else:
                assert head is not None
                return head.status_code, head.reason, head.headers, body, parser.reusable
    except httpx.RemoteProtocolError:
        return "error"
    return "incomplete"


def read_h11(chunks: Sequence[bytes], *, eof: bool, method: bytes = b"GET") -> Outcome:
    """The same answer read by h11's client, after h11 sent the request."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "sts.example")]))
    conn.send(h11.EndOfMessage())
    head: h11.Response | None = None
    body = b""
    try:
        for event in _events(conn.next_event, conn.receive_data, h11.NEED_DATA, chunks, eof=eof):
            if isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                reusable = (
                    conn.our_state is h11.DONE
                    and conn.their_state is h11.DONE
                    and not conn.trailing_data[0]
                    and not conn.trailing_data[1]
                )
                headers = list(head.headers.raw_items())
                return head.status_code, bytes(head.reason), headers, body, reusable
            elif isinstance(event, h11.ConnectionClosed):
                return "error"
    except h11.RemoteProtocolError:
        return "error"
    return "incomplete"


def _normalised(outcome: Outcome) -> Outcome:
    """h11 lower-cases a Transfer-Encoding value; compare without that difference."""
    if isinstance(outcome, str):
        return outcome
    status, reason, headers, body, reusable = outcome
    fixed = [
        (name, value.lower() if name.lower() == b"transfer-encoding" else value)
        for name, value in headers
    ]
    return status, reason, fixed, body, reusable


# --- generated answers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One generated answer: its bytes, how they arrive, and whether the stream then ends."""

    data: bytes
    cuts: tuple[int, ...]
    eof: bool
    method: bytes = b"GET"

    def chunks(self) -> list[bytes]:
        points = sorted({cut % (len(self.data) + 1) for cut in self.cuts} | {0, len(self.data)})
        return [self.data[a:b] for a, b in itertools.pairwise(points) if b > a]


_NAMES = st.sampled_from(
    [b"Content-Type", b"x-amzn-RequestId", b"Date", b"Server", b"Vary", b"X-Odd_Name!"]
)
_VALUES = st.one_of(
    st.binary(min_size=0, max_size=12).map(
        lambda raw: bytes(b for b in raw if 0x21 <= b <= 0x7E) or b"v"
    ),
    st.sampled_from([b"two words", b"tab\there", b"", b"obs-text \xe9\xff"]),
)


@st.composite
def answers(draw: st.DrawFn) -> Answer:
    """A well-formed answer under authd's rules (so h11's too), in random pieces."""
    eol = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    status = draw(st.sampled_from([200, 200, 403, 500, 302, 204, 304]))
    reason = draw(st.sampled_from([b" OK", b" Forbidden", b"", b" ", b" Two words"]))
    body = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    if status in (204, 304):
        body, framing = b"", "length"
    headers = [(draw(_NAMES), draw(_VALUES)) for _ in range(draw(st.integers(0, 4)))]
    if draw(st.booleans()):
        headers.append((b"Connection", draw(st.sampled_from([b"close", b"keep-alive"]))))
    encoded = body
    if framing == "length":
        headers.append((b"Content-Length", str(len(body)).encode()))
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", draw(st.sampled_from([b"chunked", b"Chunked"]))))
        encoded = _chunked(draw, body)
    data = b""
    if draw(st.integers(0, 4)) == 0:
        early = draw(st.sampled_from([b"X-Early: 1", b"Content-Length: 0", b"Link: </a>"]))
        data += b"HTTP/1.1 103 Early Hints" + eol + early + eol + eol
    data += version + b" " + str(status).encode() + reason + eol
    for name, value in headers:
        data += name + b":" + draw(st.sampled_from([b" ", b"", b"\t "])) + value + eol
    data += eol + encoded
    if draw(st.integers(0, 5)) == 0:
        data += b"HTTP/1.1 200 OK\r\n"  # bytes after the answer: never a reusable connection
    cuts = tuple(draw(st.lists(st.integers(0, 10_000), max_size=6)))
    method = draw(st.sampled_from([b"GET", b"GET", b"GET", b"HEAD"]))
    return Answer(data, cuts, eof=framing == "close" or draw(st.booleans()), method=method)


def _chunked(draw: st.DrawFn, body: bytes) -> bytes:
    out = b""
    rest = body
    while rest:
        size = draw(st.integers(1, max(1, len(rest))))
        ext = draw(st.sampled_from([b"", b"", b";name=value", b"; x"]))
        hex_size = draw(st.sampled_from(["%x", "%X", "%04x"])) % size
        out += hex_size.encode() + ext + b"\r\n" + rest[:size] + b"\r\n"
        rest = rest[size:]
    out += b"0\r\n"
    if draw(st.booleans()):
        out += b"X-Trailer: done\r\n"
    return out + b"\r\n"


@st.composite
def damaged(draw: st.DrawFn) -> Answer:
    """A well-formed answer with a few bytes replaced, inserted or removed."""
    answer = draw(answers())
    data = bytearray(answer.data)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = draw(st.sampled_from(b"\r\n \t:;0aZ\x00\x7f\xff,"))
        if action == "insert" or not data:
            data[at:at] = bytes([byte])
        elif action == "replace":
            data[min(at, len(data) - 1)] = byte
        else:
            del data[min(at, len(data) - 1)]
    return Answer(bytes(data), answer.cuts, answer.eof, answer.method)


_SETTINGS = settings(
    max_examples=600,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@_SETTINGS
@given(answers())
def test_every_well_formed_answer_reads_as_h11_reads_it(answer: Answer) -> None:
    """authd reads each generated answer, exactly as h11 does, in any split into pieces."""
    ours = read_ours(answer.chunks(), eof=answer.eof, method=answer.method)
    theirs = read_h11(answer.chunks(), eof=answer.eof, method=answer.method)
    assert not isinstance(ours, str), (ours, theirs, answer)
    assert _normalised(ours) == _normalised(theirs)


@_SETTINGS
@given(damaged())
def test_a_damaged_answer_is_refused_or_read_as_h11_reads_it(answer: Answer) -> None:
    """Never a different reading: authd refuses more than h11, never less carefully."""
    ours = read_ours(answer.chunks(), eof=answer.eof, method=answer.method)
    if isinstance(ours, str):
        return
    theirs = read_h11(answer.chunks(), eof=answer.eof, method=answer.method)
    assert _normalised(ours) == _normalised(theirs), answer


# --- the rules, one by one ---------------------------------------------------------------------

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def test_content_length_answer_and_reuse() -> None:
    assert read_ours([OK], eof=False) == (
        200,
        b"OK",
        [(b"Content-Type", b"application/json"), (b"Content-Length", b"2")],
        b"{}",
        True,
    )


def test_chunked_answer_with_extension_and_trailer() -> None:
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\n{}\r\n0\r\nA: b\r\n\r\n"
    outcome = read_ours([data[:20], data[20:41], data[41:]], eof=False)
    assert not isinstance(outcome, str)
    assert outcome[3:] == (b"{}", True)


def test_informational_answers_are_skipped() -> None:
    outcome = read_ours([b"HTTP/1.1 100 Continue\r\n\r\n" + OK], eof=False)
    assert not isinstance(outcome, str) and outcome[0] == 200 and outcome[3] == b"{}"


@pytest.mark.parametrize(
    ("head", "method"),
    [
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", b"GET"),
        (b"HTTP/1.1 304 Not Modified\r\n\r\n", b"GET"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"HEAD"),
    ],
)
def test_answers_without_a_body(head: bytes, method: bytes) -> None:
    outcome = read_ours([head], eof=False, method=method)
    assert not isinstance(outcome, str) and outcome[3:] == (b"", True)


def test_answer_until_close_is_never_reused() -> None:
    outcome = read_ours([b"HTTP/1.1 200 OK\r\n\r\nabc", b"def"], eof=True)
    assert not isinstance(outcome, str) and outcome[3:] == (b"abcdef", False)


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        OK + b"HTTP/1.1 200 OK\r\n",  # bytes after the answer
    ],
)
def test_connections_that_must_not_be_reused(data: bytes) -> None:
    outcome = read_ours([data], eof=False)
    assert not isinstance(outcome, str) and outcome[4] is False


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA: b\r\n continued\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"HTTP/1.1 099 Low\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n",
        b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        # framing headers are checked on a 1xx and refused among trailers
        b"HTTP/1.1 103 Early Hints\r\nContent-Length: x\r\n\r\n" + OK,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: 5\r\n\r\n",
    ],
)
def test_refused_answers(data: bytes) -> None:
    """Refused on the bytes alone, before the stream ends."""
    assert read_ours([data], eof=False) == "error"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"HTTP/1.1 200 OK\r\nContent-",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}",
    ],
)
def test_stream_ending_early_is_an_error(data: bytes) -> None:
    assert read_ours([data] if data else [], eof=True) == "error"


def test_oversized_head_and_chunk_line_are_refused() -> None:
    head = b"HTTP/1.1 200 OK\r\n" + b"A: " + b"x" * http1.MAX_HEAD_BYTES
    assert read_ours([head], eof=False) == "error"
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;" + b"x" * 2000
    assert read_ours([chunked], eof=False) == "error"


def test_request_head_is_checked_and_needs_a_host() -> None:
    head = http1.request_head(b"GET", b"/?a=b", [(b"Host", b"sts.example"), (b"X-A", b"1 2")]).data
    assert head == b"GET /?a=b HTTP/1.1\r\nHost: sts.example\r\nX-A: 1 2\r\n\r\n"
    framed = [(b"Host", b"h"), (b"content-length", b"12")]
    assert http1.request_head(b"POST", b"/", framed)[1:] == (12, False, False)
    framed = [(b"Host", b"h"), (b"Transfer-Encoding", b"Chunked")]
    assert http1.request_head(b"POST", b"/", framed)[1:] == (None, True, False)
    closing = [(b"Host", b"h"), (b"Connection", b"keep-alive, Close")]
    assert http1.request_head(b"GET", b"/", closing).close
    for method, target, headers in [
        (b"G T", b"/", [(b"Host", b"h")]),
        (b"GET", b"/a b", [(b"Host", b"h")]),
        (b"GET", b"/", [(b"Host", b"h"), (b"X A", b"1")]),
        (b"GET", b"/", [(b"Host", b"h"), (b"X-A", b"1\r\nX-B: 2")]),
        (b"GET", b"/", [(b"X-A", b"1")]),
        (b"GET", b"/", [(b"Host", b"h"), (b"Content-Length", b"-1")]),
        (b"GET", b"/", [(b"Host", b"h"), (b"Content-Length", b"1"), (b"content-length", b"2")]),
        (b"GET", b"/", [(b"Host", b"h"), (b"Transfer-Encoding", b"gzip")]),
        (b"GET", b"/", [(b"Host", b"h"), (b"Transfer-Encoding", b"chunked")] * 2),
        (
            b"GET",
            b"/",
            [(b"Host", b"h"), (b"Content-Length", b"1"), (b"Transfer-Encoding", b"chunked")],
        ),
    ]:
        with pytest.raises(httpx.LocalProtocolError):
            http1.request_head(method, target, headers)


def test_an_illegal_target_is_not_quoted_in_the_error() -> None:
    """The target carries the presigned signature: an error about it must not repeat it."""
    secret = b"/?X-Amz-Signature=" + b"ab" * 32 + b" x"
    with pytest.raises(httpx.LocalProtocolError) as refused:
        http1.request_head(b"GET", secret, [(b"Host", b"h")])
    assert b"ab" * 32 not in str(refused.value).encode()


def test_a_request_asking_to_close_leaves_the_connection_unpooled() -> None:
    parser = http1.ResponseParser()
    parser.start(b"GET", close=True)
    parser.receive_data(OK)
    while parser.next_event() is not http1.END:
        pass
    assert not parser.reusable


def test_chunk_size_line_limit_does_not_depend_on_how_bytes_arrive() -> None:
    line = b"1;" + b"x" * (http1.MAX_CHUNK_LINE - 2)
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + line + b"\r\nA\r\n0\r\n\r\n"
    cut = data.index(line) + len(line) + 1  # between the line's CR and LF
    for pieces in ([data], [data[:cut], data[cut:]]):
        outcome = read_ours(pieces, eof=False)
        assert not isinstance(outcome, str) and outcome[3] == b"A"


def test_an_illegal_header_value_is_not_quoted_in_the_error() -> None:
    with pytest.raises(httpx.LocalProtocolError) as refused:
        http1.request_head(b"GET", b"/", [(b"Host", b"h"), (b"Authorization", b"secret\r\n")])
    assert "secret" not in str(refused.value)
