"""HTTP/1.1 framing for the STS transport: a request head out, one response at a time in.

Sans-IO, like h11, and a strict subset of what h11 accepts: every answer this parser reads,
h11 reads to the same status, headers, body and keep-alive decision (tests/test_http1.py
checks that on generated answers). It exists because h11's general state machine cost about
60 us of CPU per STS call, a tenth of a new-token review (docs/BENCHMARKS.md); authd needs
only the client side of one GET at a time.

Refused where h11 is lenient, because on a pooled connection a framing doubt could hand one
token's answer to the next request: HTTP versions other than 1.0 and 1.1, obsolete line
folding, both Content-Length and Transfer-Encoding, repeated Content-Length headers, a 101,
and bytes left over after an answer (the connection is then not reused). h11 stays the
webhook's server-side parser (authd/server/http.py).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, NamedTuple

import httpx

MAX_HEAD_BYTES: Final = 16 * 1024
"""A response head (status line and headers) larger than this is refused (h11's default)."""
MAX_CHUNK_LINE: Final = 1024
"""A chunk-size line (with extensions) longer than this is refused."""

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_FIELD_VALUE = rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?"
_TOKEN_RE = re.compile(_TOKEN)
_VALUE_RE = re.compile(_FIELD_VALUE)
_TARGET_RE = re.compile(rb"[\x21-\x7e]+")
_HEADER_RE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(" + _FIELD_VALUE + rb")[ \t]*")
_STATUS_RE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ((?:[ \t]|[^\x00\s])*))?")
_CHUNK_RE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[^\r\n]*)?[ \t]*")
_HEAD_END_RE = re.compile(rb"\n\r?\n")
_LINE_RE = re.compile(rb"\r?\n")
_LENGTH_RE = re.compile(rb"[0-9]{1,20}")
_NO_BODY_STATUS: Final = (204, 304)
_FRAMING_NAMES: Final = (b"content-length", b"transfer-encoding")


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A final response's status line and headers (names as sent, values without OWS)."""

    status_code: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool


class End:
    """The response's body is complete (the only instance is `END`)."""


END: Final = End()
NEED_DATA: Final = None
"""`next_event` needs more bytes (or the end of the stream) before it can go on."""

Event = ResponseHead | bytes | End | None


class RequestHead(NamedTuple):
    """A request head's bytes and what its headers say about the body and the connection."""

    data: bytes
    length: int | None  # the declared Content-Length
    chunked: bool
    close: bool  # the request asks for `Connection: close`


def request_head(
    method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]]
) -> RequestHead:
    """The request line and headers, checked as h11 checks them, and the body's framing.

    Raises:
        httpx.LocalProtocolError: an illegal method, target, header name or value, no Host,
            a bad Content-Length, a transfer coding other than chunked, or both framings.
    """
    _check(_TOKEN_RE, method, "illegal method")
    if _TARGET_RE.fullmatch(target) is None:
        # Not quoted: StsClient's target holds the presigned signature.
        raise httpx.LocalProtocolError(f"illegal request target ({len(target)} bytes)")
    lines = [method + b" " + target + b" HTTP/1.1"]
    has_host = chunked = close = False
    length: int | None = None
    for name, value in headers:
        lower = _checked_name(name, value)
        if lower == b"host":
            has_host = True
        elif lower == b"content-length":
            _check(_LENGTH_RE, value, "bad Content-Length")
            if length is not None and length != int(value):
                raise httpx.LocalProtocolError("conflicting Content-Length headers")
            length = int(value)
        elif lower == b"transfer-encoding":
            if value.lower() != b"chunked" or chunked:
                raise httpx.LocalProtocolError("only one Transfer-Encoding: chunked is supported")
            chunked = True
        elif lower == b"connection":
            close = close or _says_close(value)
        lines.append(name + b": " + value)
    if not has_host:
        raise httpx.LocalProtocolError("Missing mandatory Host: header")
    if chunked and length is not None:
        raise httpx.LocalProtocolError("both Content-Length and Transfer-Encoding")
    lines.append(b"\r\n")
    return RequestHead(b"\r\n".join(lines), length, chunked, close)


def chunk(data: bytes) -> bytes:
    """`data` as one chunk of a chunked body (the last chunk, `0`, when empty)."""
    return b"%x\r\n%b\r\n" % (len(data), data) if data else b"0\r\n\r\n"


@functools.lru_cache(maxsize=256)
def _checked_name(name: bytes, value: bytes) -> bytes:
    """The lower-cased name of a header that passes h11's checks (remembered: StsClient sends
    the same few headers on every request, none of them secret, and checking each again cost
    microseconds).

    Raises:
        httpx.LocalProtocolError: an illegal name or value (never remembered).
    """
    _check(_TOKEN_RE, name, "illegal header name")
    if _VALUE_RE.fullmatch(value) is None:  # not quoted: a value may be a credential
        raise httpx.LocalProtocolError(f"illegal value of header {name!r}")
    return name.lower()


def _check(pattern: re.Pattern[bytes], value: bytes, what: str) -> None:
    if pattern.fullmatch(value) is None:
        raise httpx.LocalProtocolError(f"{what} {value!r}")


class ResponseParser:
    """Reads the answers to requests sent one at a time on one connection.

    Feed it what the socket gives (`receive_data`, `b""` at the end of the stream) and take
    events from `next_event`: the `ResponseHead` (1xx answers are skipped), the body's pieces
    as `bytes`, then `END`; `NEED_DATA` when it must wait. After `END`, `reusable` says whether
    the connection may carry another request; `start` readies the parser for the next answer.
    """

    __slots__ = ("_body", "_buffer", "_close", "_eof", "_head", "_method")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._eof = False
        self._method = b"GET"
        self._close = False
        self._head: ResponseHead | None = None
        self._body: _Body | None = None

    def start(self, method: bytes, *, close: bool = False) -> None:
        """A request with this method was sent (`close`: it asked for `Connection: close`);
        its answer comes next."""
        self._method = method
        self._close = close
        self._head = None
        self._body = None

    def receive_data(self, data: bytes) -> None:
        """Bytes from the socket; empty at the end of the stream."""
        if data:
            self._buffer += data
        else:
            self._eof = True

    @property
    def reusable(self) -> bool:
        """The answer was read to its end, both sides may go on, and nothing else arrived."""
        return (
            self._body is not None
            and self._body.done
            and self._head is not None
            and self._head.keep_alive
            and not self._close
            and not self._buffer
            and not self._eof
        )

    def next_event(self) -> Event:
        """The next piece of the answer, or NEED_DATA.

        Raises:
            httpx.RemoteProtocolError: the bytes are not an answer this parser accepts, or the
                stream ended before the answer did.
        """
        if self._head is None:
            head = self._read_head()
            if head is None:
                return NEED_DATA
            self._head = head
            self._body = self._framing(head)
            return head
        body = self._body
        if body is None or body.done:
            return END
        piece = body.read(self._buffer, eof=self._eof)
        if piece is None:
            return NEED_DATA
        return END if body.done and not piece else piece

    def _read_head(self) -> ResponseHead | None:
        while True:
            text = _take_block(self._buffer, "response head")
            if text is None:
                if self._eof:
                    raise httpx.RemoteProtocolError(
                        "Server disconnected without sending a response."
                        if not self._buffer
                        else "Server disconnected in the middle of the response head."
                    )
                return None
            head = _parse_head(text)
            if head is not None:
                return head

    def _framing(self, head: ResponseHead) -> _Body:
        """How this answer's body ends (RFC 9112 section 6.3, in h11's order); the framing
        headers were checked with the head, even where the status or method rules a body out."""
        chunked, length = _framing_headers(head.headers)
        if head.status_code in _NO_BODY_STATUS or self._method == b"HEAD":
            return _Length(0)
        if chunked:
            return _Chunked()
        if length is not None:
            return _Length(length)
        return _UntilClose()


def _take_block(buffer: bytearray, what: str) -> bytes | None:
    """Cut a head or trailer block (up to its blank line, which goes too) from `buffer`, or
    None while its end has not arrived.

    Raises:
        httpx.RemoteProtocolError: the block is over MAX_HEAD_BYTES.
    """
    found = _HEAD_END_RE.search(buffer)
    if found is None:
        if len(buffer) > MAX_HEAD_BYTES:
            raise httpx.RemoteProtocolError(f"{what} too long")
        return None
    if found.start() > MAX_HEAD_BYTES:
        raise httpx.RemoteProtocolError(f"{what} too long")
    block = bytes(buffer[: found.start()]).removesuffix(b"\r")
    del buffer[: found.end()]
    return block


def _lines(block: bytes) -> list[bytes]:
    """The lines of a block, ended by CRLF or a bare LF (as h11 splits them)."""
    lines = block.split(b"\r\n")
    if block.count(b"\n") >= len(lines):  # a line ends in a bare LF as well
        lines = _LINE_RE.split(block)
    return lines


def _fields(lines: list[bytes], what: str) -> list[tuple[bytes, bytes]]:
    """(name, value) of each header line, the value without its optional whitespace.

    Raises:
        httpx.RemoteProtocolError: a line that is not a header field.
    """
    fields: list[tuple[bytes, bytes]] = []
    for line in lines:
        field = _HEADER_RE.fullmatch(line)
        if field is None:
            raise httpx.RemoteProtocolError(f"illegal {what} line: {line[:100]!r}")
        fields.append((field.group(1), field.group(2)))
    return fields


def _parse_head(text: bytes) -> ResponseHead | None:
    """The head of a final answer; None for a 1xx (skipped, as the final one follows)."""
    lines = _lines(text)
    status = _STATUS_RE.fullmatch(lines[0])
    if status is None:
        raise httpx.RemoteProtocolError(f"illegal status line: {lines[0][:100]!r}")
    code = int(status.group(2))
    if code < 100 or code == 101:
        raise httpx.RemoteProtocolError(f"unexpected status {code}")
    headers = _fields(lines[1:], "header")
    keep_alive = status.group(1) == b"1" and not any(
        len(name) == 10 and name.lower() == b"connection" and _says_close(value)
        for name, value in headers
    )
    if code < 200:
        _framing_headers(headers)  # checked on a 1xx too, as h11 does (a final head: _framing)
        return None
    return ResponseHead(code, status.group(3) or b"", headers, keep_alive)


def _framing_headers(headers: list[tuple[bytes, bytes]]) -> tuple[bool, int | None]:
    """(chunked, Content-Length or None) of a head, refusing any framing h11 would refuse and
    the ambiguous framings it allows.

    Raises:
        httpx.RemoteProtocolError: both framings, two lengths, a bad length, or a transfer
            coding other than chunked.
    """
    encodings = [value for name, value in headers if name.lower() == b"transfer-encoding"]
    lengths = [value for name, value in headers if name.lower() == b"content-length"]
    if encodings and lengths:
        raise httpx.RemoteProtocolError("both Transfer-Encoding and Content-Length")
    if len(lengths) > 1:
        raise httpx.RemoteProtocolError("more than one Content-Length")
    if encodings and (len(encodings) != 1 or encodings[0].lower() != b"chunked"):
        raise httpx.RemoteProtocolError("Transfer-Encoding other than chunked")
    if lengths and _LENGTH_RE.fullmatch(lengths[0]) is None:
        raise httpx.RemoteProtocolError(f"bad Content-Length {lengths[0][:30]!r}")
    return bool(encodings), int(lengths[0]) if lengths else None


def _says_close(connection: bytes) -> bool:
    """Whether a Connection header's comma-separated options include `close`."""
    return b"close" in (option.strip(b" \t").lower() for option in connection.split(b","))


class _Body:
    """How one body is read from the buffer; `done` once it has all been returned."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False

    def read(self, buffer: bytearray, *, eof: bool) -> bytes | None:
        """The next piece (b"" at the end), or None to wait for more bytes."""
        raise NotImplementedError

    @staticmethod
    def _wait(eof: bool) -> None:
        """None, to wait for more bytes; at the end of the stream the body is cut short.

        Raises:
            httpx.RemoteProtocolError: the stream has ended.
        """
        if eof:
            raise httpx.RemoteProtocolError("Server disconnected in the middle of the body.")

    @staticmethod
    def _take(buffer: bytearray, most: int) -> bytes:
        """Up to `most` bytes from the front of `buffer`."""
        piece = bytes(buffer[:most])
        del buffer[: len(piece)]
        return piece


class _Length(_Body):
    __slots__ = ("_left",)

    def __init__(self, length: int) -> None:
        super().__init__()
        self._left = length
        self.done = length == 0

    def read(self, buffer: bytearray, *, eof: bool) -> bytes | None:
        if not buffer:
            return self._wait(eof)
        piece = self._take(buffer, self._left)
        self._left -= len(piece)
        self.done = self._left == 0
        return piece


class _UntilClose(_Body):
    """No length given: the body is everything until the server closes (never reused)."""

    __slots__ = ()

    def read(self, buffer: bytearray, *, eof: bool) -> bytes | None:
        if buffer:
            piece = bytes(buffer)
            buffer.clear()
            return piece
        if eof:
            self.done = True
            return b""
        return None


class _Chunked(_Body):
    __slots__ = ("_left", "_trailers")

    def __init__(self) -> None:
        super().__init__()
        self._left = -1  # bytes left in the current chunk; -1: a chunk-size line comes next
        self._trailers = False

    def read(self, buffer: bytearray, *, eof: bool) -> bytes | None:
        while True:
            if self._trailers:
                return self._read_trailers(buffer, eof=eof)
            if self._left < 0:
                if not self._read_size(buffer):
                    return self._wait(eof)
                continue
            if self._left == 0:
                if len(buffer) < 2:
                    return self._wait(eof)
                if buffer[:2] != b"\r\n":
                    raise httpx.RemoteProtocolError("chunk not followed by CRLF")
                del buffer[:2]
                self._left = -1
                continue
            if not buffer:
                return self._wait(eof)
            piece = self._take(buffer, self._left)
            self._left -= len(piece)
            return piece

    def _read_size(self, buffer: bytearray) -> bool:
        end = buffer.find(b"\r\n", 0, MAX_CHUNK_LINE + 2)
        if end < 0:
            if len(buffer) >= MAX_CHUNK_LINE + 2:  # however the bytes were split into reads
                raise httpx.RemoteProtocolError("chunk-size line too long")
            return False
        line = _CHUNK_RE.fullmatch(buffer, 0, end)
        if line is None:
            raise httpx.RemoteProtocolError("illegal chunk header")
        size = int(line.group(1), 16)
        del buffer[: end + 2]
        if size == 0:
            self._trailers = True
        else:
            self._left = size
        return True

    def _read_trailers(self, buffer: bytearray, *, eof: bool) -> bytes | None:
        if buffer[:2] == b"\r\n" or buffer[:1] == b"\n":
            del buffer[: 2 if buffer[:1] == b"\r" else 1]
            self.done = True
            return b""
        block = _take_block(buffer, "trailers")
        if block is None:
            return self._wait(eof)
        if any(name.lower() in _FRAMING_NAMES for name, _ in _fields(_lines(block), "trailer")):
            raise httpx.RemoteProtocolError("a framing header among the trailers")
        self.done = True
        return b""
