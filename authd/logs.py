"""Logging setup: structlog configured once, JSON or text lines on stderr, secrets redacted.

Every line, authd's own and those of libraries logging through `logging` (botocore, httpx), is
redacted: a token (`k8s-aws-v1.` ...), a presigned URL's `X-Amz-Signature` or
`X-Amz-Security-Token`, and any field named like a token, signature, secret or password are
replaced by `[REDACTED]` (`redact`). JSON lines are rendered first and cleared in one look at the
rendered text, which holds for nearly every line; only a line that look cannot clear goes field
by field (`render_json`). Upstream's level names are accepted.

The one line per review (authd's access log, thousands a second under load) has its own writer,
`review_log`: the same keys, order, timestamp and redaction as structlog's lines, without
structlog's per-line dispatch, which cost more than rendering the line.

The daemon logs through a queue (`configure(queued=True)`): a line is rendered by the caller and
appended to a bounded queue; one writer thread wakes every 10 ms and writes what has gathered, in
one batch, to the stream's file descriptor. A stalled stderr or journald then stalls only that
thread, never a review; when the queue is full a line is dropped and counted (`dropped_lines`,
exported as `authd_log_lines_dropped_total`).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TextIO, cast

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from authd import jsoncodec
from authd.errors import ConfigError
from authd.names import LOG_FORMATS
from authd.token import PREFIX as TOKEN_PREFIX

__all__ = [
    "LEVELS",
    "REDACTED",
    "ReviewLog",
    "add_timestamp",
    "configure",
    "drain",
    "dropped_lines",
    "log_review",
    "parse_level",
    "processors",
    "redact",
    "redact_text",
    "render_json",
    "review_log",
]

ReviewLog = Callable[[dict[str, Any]], None]
"""Writes one review's line from its fields (the caller's dict; the writer may add to it)."""

REDACTED = "[REDACTED]"

# Upstream's logrus levels -> Python levels. panic and fatal both mean "only the worst".
LEVELS: Mapping[str, int] = {
    "panic": logging.CRITICAL,
    "fatal": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": logging.DEBUG,
}
FORMATS = LOG_FORMATS
# Libraries that log request details at DEBUG; they speak only at `trace`.
_CHATTY_LIBRARIES = ("botocore", "urllib3", "httpx", "httpcore", "hpack", "watchdog", "asyncio")

_SECRET_TEXT = re.compile(
    rf"(?P<token>{re.escape(TOKEN_PREFIX)})[A-Za-z0-9_\-=+/%]*"
    r"|(?P<param>(?:x-amz-)?signature|x-amz-security-token|x-amz-credential-secret)"
    r"(?P<sep>=|%3d)[^&\s\"',;]*",
    re.IGNORECASE,
)
_TOKEN_MARKER = TOKEN_PREFIX.lower()  # `_has_marker` looks in lower-cased text
_SECRET_KEY_SUFFIXES = ("token", "signature", "secret", "secretkey", "secretaccesskey", "password")


def parse_level(name: str) -> int:
    """The Python level for an upstream level name (case-insensitive, as logrus).

    Raises:
        ConfigError: with upstream's exact text for anything else.
    """
    try:
        return LEVELS[name.lower()]
    except KeyError:
        raise ConfigError(
            f'Invalid log level "{name}". Valid values are: '
            "panic, fatal, error, warning, info, debug, trace"
        ) from None


# Lines held for the writer thread; beyond this a stalled stream costs lines, not reviews.
QUEUE_LINES = 1024
# How often the writer thread wakes to write what has gathered, in seconds.
FLUSH_INTERVAL = 0.01


def configure(
    *,
    fmt: str = "json",
    level: str = "info",
    stream: TextIO | None = None,
    queued: bool = False,
    queue_lines: int = QUEUE_LINES,
) -> None:
    """Set up structlog and the standard `logging` module for the whole process.

    Call it once per process, before logging: each logger binds its output on first use
    (structlog's production setting; binding on every line would cost more than rendering it).
    A later call changes loggers not used yet, and the standard `logging` ones.

    Args:
        fmt: `json` (one object per line) or `text` (key=value with full timestamps). Anything
            else logs upstream's warning and uses text.
        level: an upstream level name (panic, fatal, error, warning, warn, info, debug, trace).
        stream: where lines go (default: the current `sys.stderr`).
        queued: hand lines to a writer thread through a queue of `queue_lines` lines (the
            daemon does); a full queue drops the line and counts it. A stream without a file
            descriptor is written by the thread through its own `write`.
        queue_lines: the queue's bound, in lines.

    Raises:
        ConfigError: an invalid level, with upstream's message.
    """
    threshold = parse_level(level)
    target = stream if stream is not None else sys.stderr
    # structlog and logging need only write() and flush(); they are typed for a TextIO.
    out = cast(TextIO, _QueuedOutput.start(target, queue_lines) if queued else _Unfailing(target))
    unknown_format = fmt not in FORMATS
    # JSON lines are redacted by their renderer (`render_json`); text lines by `redact`.
    finish: list[Processor] = (
        [render_json]
        if fmt == "json"
        # key=value lines with full timestamps, like upstream's logrus text formatter.
        else [
            redact,
            structlog.processors.LogfmtRenderer(
                key_order=["timestamp", "level", "event"], drop_missing=True
            ),
        ]
    )
    structlog.configure(
        processors=[*_PREPARE, *finish],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    _configure_stdlib(out, threshold, trace=level.lower() == "trace", finish=finish)
    _Output.current = _Output(json=fmt == "json", threshold=threshold, stream=out)
    if unknown_format:
        structlog.get_logger("authd").warning(
            f"Unknown log format specified ({fmt}), will use default text formatter instead."
        )


class _Unfailing:
    """The log stream, with write errors dropped: a line that cannot be written (journald
    restarting, a closed pipe) must not fail the review or reload that logged it."""

    __slots__ = ("__weakref__", "_stream")

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):  # ValueError: the stream was closed
            return 0

    def flush(self) -> None:
        # Not contextlib.suppress: a context manager per line costs more than the flush, and
        # the review line is flushed on every review.
        try:  # noqa: SIM105
            self._stream.flush()
        except (OSError, ValueError):
            pass


class _QueuedOutput:
    """The log stream as a bounded queue drained by one writer thread.

    `write` never blocks: it appends the text to a deque (no lock, no wake-up) or, when the
    deque is full, drops it and counts it. The thread wakes every FLUSH_INTERVAL seconds and
    writes what has gathered as one batch, so reviews pay neither a thread wake-up nor a
    system call per line. It writes to a duplicate of the stream's file descriptor with
    `os.write` (no Python buffer lock held while the stream is stalled, so the interpreter can
    still exit), or through the stream's own `write` when it has no descriptor.
    """

    current: ClassVar[_QueuedOutput | None] = None

    def __init__(self, stream: TextIO, capacity: int) -> None:
        self._lines: collections.deque[str] = collections.deque()
        self._capacity = capacity
        self._stream = stream
        self._fd = _duplicate_fd(stream)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="authd-log-writer", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, stream: TextIO, capacity: int) -> _QueuedOutput:
        """A new queue and writer for `stream`; the previous one is drained and stopped."""
        if cls.current is not None:
            cls.current.close(timeout=1.0)
        cls.current = cls(stream, capacity)
        return cls.current

    def write(self, text: str) -> int:
        """Queue `text`, or drop and count it when the queue is full."""
        if len(self._lines) < self._capacity:
            self._lines.append(text)  # deque.append is atomic: no lock needed
        else:
            with self._lock:
                self.dropped += 1
        return len(text)

    def flush(self) -> None:
        """Nothing to do: the writer thread writes within FLUSH_INTERVAL."""

    def close(self, *, timeout: float) -> None:
        """Write what is queued within `timeout` seconds, then stop the thread."""
        self._stop.set()
        self._thread.join(timeout)
        if self._fd is not None and not self._thread.is_alive():
            os.close(self._fd)
            self._fd = None

    def _run(self) -> None:
        """Write what has gathered every FLUSH_INTERVAL seconds; once more when stopped."""
        while not self._stop.wait(FLUSH_INTERVAL):
            self._drain()
        self._drain()

    def _drain(self) -> None:
        """Write every queued line, in batches."""
        lines = self._lines
        while lines:
            batch: list[str] = []
            with contextlib.suppress(IndexError):
                for _ in range(1024):
                    batch.append(lines.popleft())
            self._emit("".join(batch))

    def _emit(self, text: str) -> None:
        """Write `text` whole; a line that cannot be written is dropped (the stream is gone)."""
        if self._fd is None:
            _Unfailing(self._stream).write(text)
            _Unfailing(self._stream).flush()
            return
        data = memoryview(text.encode("utf-8", "replace"))
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError:
            pass


def _duplicate_fd(stream: TextIO) -> int | None:
    """A duplicate of `stream`'s file descriptor (after flushing it), or None if it has none."""
    try:
        fd = stream.fileno()
        stream.flush()
        return os.dup(fd)
    except (OSError, ValueError, AttributeError):
        return None


def dropped_lines() -> int:
    """Log lines dropped so far because the queue was full (0 when lines are not queued)."""
    output = _QueuedOutput.current
    return output.dropped if output is not None else 0


def drain(*, timeout: float = 2.0) -> None:
    """Write out queued lines (at most `timeout` seconds) and stop the writer thread.

    The CLI calls it before exiting; it also runs at interpreter exit.
    """
    output, _QueuedOutput.current = _QueuedOutput.current, None
    if output is not None:
        output.close(timeout=timeout)


atexit.register(drain)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Output:
    """What the last `configure` chose: JSON or not, the level threshold, the stream."""

    json: bool
    threshold: int
    stream: TextIO

    current: ClassVar[_Output | None] = None


def review_log() -> ReviewLog:
    """The writer of the one line per review for the current configuration.

    After `configure` with JSON at info or below: it adds `event`, `level` and `timestamp`,
    renders and redacts the line with `render_json`, as structlog would, and writes it. The
    daemon builds it once, after `configure`. Otherwise (text lines, a level above info, not
    configured), it is `log_review`, an ordinary structlog line.
    """
    output = _Output.current
    if output is None or not output.json or output.threshold > logging.INFO:
        return log_review
    stream = output.stream

    def write(fields: dict[str, Any]) -> None:
        fields["event"] = "review"
        fields["level"] = "info"
        line = render_json(None, "info", add_timestamp(None, "info", fields))
        stream.write(line + "\n")
        stream.flush()

    return write


def log_review(fields: dict[str, Any]) -> None:
    """A review's line through structlog (tests capture it with `capture_logs`)."""
    structlog.get_logger("authd.review").info("review", **fields)


def render_json(logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
    """structlog's last processor for JSON lines: render with orjson, then make sure no secret
    is in the line.

    One look at the rendered line clears nearly every line: no field named like a secret, no
    nested object (its keys would need checking), ASCII only, and no secret marker anywhere in
    the text. A line that look cannot clear is redacted field by field (`redact`) and rendered
    again, so what is written is what `redact` would let through.
    """
    line = _json_text(event_dict)
    if (
        not _secret_names(tuple(event_dict))
        and line.count("{") == 1
        and line.isascii()
        and not _has_marker(line.lower())
    ):
        return line
    return _json_text(redact(logger, method, event_dict))


def _json_text(value: Any) -> str:
    """One compact JSON object (orjson, see authd.jsoncodec); other objects as their repr."""
    return jsoncodec.dumps(value, default=repr).decode()


def processors() -> list[Processor]:
    """authd's processor chain up to the renderer: level, time, traceback, redaction.

    Tests pass it to `structlog.testing.capture_logs(processors=...)` to see each line as it
    would be rendered, redaction included.
    """
    return [*_PREPARE, redact]


class _LastSecond:
    """The last second formatted, kept as one (second, text) tuple so that threads logging at
    once never see half an update."""

    value: tuple[int, str] = (-1, "")


def add_timestamp(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: `timestamp` in UTC ISO 8601 with microseconds, as TimeStamper's
    `fmt="iso", utc=True` writes it (`2024-01-15T12:00:00.123456Z`), at a third of its cost."""
    now = time.time()
    second = int(now)
    last = _LastSecond.value
    if second != last[0]:
        last = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        _LastSecond.value = last
    event_dict["timestamp"] = f"{last[1]}.{int((now - second) * 1e6):06d}Z"
    return event_dict


# What every line gets before it is redacted and rendered.
_PREPARE: tuple[Processor, ...] = (
    structlog.processors.add_log_level,
    add_timestamp,
    structlog.processors.format_exc_info,
)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler authd installs, marked so a new `configure` can replace it."""


def _configure_stdlib(out: TextIO, threshold: int, *, trace: bool, finish: list[Processor]) -> None:
    """Route `logging` records (botocore, httpx, ...) through the same redaction and renderer
    (`finish`)."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.processors.add_log_level,
            add_timestamp,
            structlog.stdlib.add_logger_name,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            *finish,
        ],
    )
    handler = _Handler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(threshold)
    for name in _CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(threshold if trace else max(threshold, logging.WARNING))


def redact(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: replace tokens, signatures and secret-named fields by `[REDACTED]`."""
    for key in list(event_dict):
        event_dict[key] = _redact_value(event_dict[key], key)
    return event_dict


@functools.lru_cache(maxsize=256)
def _secret_names(keys: tuple[str, ...]) -> bool:
    """True when any of `keys` is a secret's name (memoised: lines reuse a few key sets)."""
    return any(_secret_key(key) for key in keys)


def _has_marker(low: str) -> bool:
    """True when lower-cased ASCII `low` holds something that may start a secret."""
    return (
        _TOKEN_MARKER in low
        or "signature" in low
        or "x-amz-security-token" in low
        or "x-amz-credential-secret" in low
    )


def redact_text(text: str) -> str:
    """`text` with tokens and presigned-URL signature/security-token values replaced."""
    # Most values (ARNs, names, IDs) hold no secret; for ASCII text a lower-cased substring test
    # decides that far faster than the case-insensitive regex. Non-ASCII text always takes the
    # regex: under IGNORECASE some non-ASCII letters (the long s, the Kelvin sign) match too.
    if text.isascii() and not _has_marker(text.lower()):
        return text
    return _SECRET_TEXT.sub(_replace, text)


def _replace(match: re.Match[str]) -> str:
    """The replacement for one secret found in text: keep the marker, drop the value."""
    if match.group("token"):
        return f"{match.group('token')}{REDACTED}"
    return f"{match.group('param')}{match.group('sep')}{REDACTED}"


def _secret_key(key: object) -> bool:
    """True for a field name that announces a secret: `token`, `X-Amz-Signature`, `secret_key`."""
    return isinstance(key, str) and _secret_name(key)


@functools.lru_cache(maxsize=1024)
def _secret_name(key: str) -> bool:
    """`_secret_key` for a string; memoised, since log lines reuse a handful of field names."""
    normal = key.lower().replace("-", "").replace("_", "")
    return normal.endswith(_SECRET_KEY_SUFFIXES)


def _redact_value(value: Any, key: object = None) -> Any:
    """`value` with secrets removed, recursing into containers."""
    if key is not None and _secret_key(key) and value not in (None, ""):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {k: _redact_value(v, k) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v) for v in value]
    # Anything else (bytes, exceptions, objects) is rendered as text later: check that text now.
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("utf-8", "replace")
    else:
        text = str(value)
    cleaned = redact_text(text)
    return cleaned if cleaned != text or isinstance(value, BaseException) else value
