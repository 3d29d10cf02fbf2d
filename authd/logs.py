"""Logging setup: structlog configured once, JSON or text lines on stderr, secrets redacted.

Every line, authd's own and those of libraries logging through `logging` (botocore, httpx),
passes through `redact`: a token (`k8s-aws-v1.` ...), a presigned URL's `X-Amz-Signature` or
`X-Amz-Security-Token`, and any field named like a token, signature, secret or password are
replaced by `[REDACTED]` before rendering. Upstream's level names are accepted.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from authd.errors import ConfigError

__all__ = [
    "LEVELS",
    "REDACTED",
    "configure",
    "parse_level",
    "processors",
    "redact",
    "redact_text",
]

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
FORMATS = ("json", "text")
# Libraries that log request details at DEBUG; they speak only at `trace`.
_CHATTY_LIBRARIES = ("botocore", "urllib3", "httpx", "httpcore", "hpack", "watchdog", "asyncio")

_SECRET_TEXT = re.compile(
    r"(?P<token>k8s-aws-v1\.)[A-Za-z0-9_\-=+/%]*"
    r"|(?P<param>(?:x-amz-)?signature|x-amz-security-token|x-amz-credential-secret)"
    r"(?P<sep>=|%3d)[^&\s\"',;]*",
    re.IGNORECASE,
)
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


def configure(*, fmt: str = "json", level: str = "info", stream: TextIO | None = None) -> None:
    """Set up structlog and the standard `logging` module for the whole process.

    Args:
        fmt: `json` (one object per line) or `text` (key=value with full timestamps). Anything
            else logs upstream's warning and uses text.
        level: an upstream level name (panic, fatal, error, warning, warn, info, debug, trace).
        stream: where lines go (default: the current `sys.stderr`).

    Raises:
        ConfigError: an invalid level, with upstream's message.
    """
    threshold = parse_level(level)
    out = stream if stream is not None else sys.stderr
    unknown_format = fmt not in FORMATS
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        # key=value lines with full timestamps, like upstream's logrus text formatter.
        else structlog.processors.LogfmtRenderer(
            key_order=["timestamp", "level", "event"], drop_missing=True
        )
    )
    structlog.configure(
        processors=[*processors(), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        # Not cached: `configure` may run again (tests, CLI re-parsing) and must take effect.
        cache_logger_on_first_use=False,
    )
    _configure_stdlib(out, threshold, trace=level.lower() == "trace", renderer=renderer)
    if unknown_format:
        structlog.get_logger("authd").warning(
            f"Unknown log format specified ({fmt}), will use default text formatter instead."
        )


def processors() -> list[Processor]:
    """authd's processor chain up to the renderer: context, level, time, traceback, redaction.

    Tests pass it to `structlog.testing.capture_logs(processors=...)` to see each line as it
    would be rendered, redaction included.
    """
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact,
    ]


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler authd installs, marked so a new `configure` can replace it."""


def _configure_stdlib(out: TextIO, threshold: int, *, trace: bool, renderer: Processor) -> None:
    """Route `logging` records (botocore, httpx, ...) through the same redaction and renderer."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.stdlib.add_logger_name,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact,
            renderer,
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


def redact_text(text: str) -> str:
    """`text` with tokens and presigned-URL signature/security-token values replaced."""
    # Most values (ARNs, names, IDs) hold no secret; for ASCII text a lower-cased substring test
    # decides that far faster than the case-insensitive regex. Non-ASCII text always takes the
    # regex: under IGNORECASE some non-ASCII letters (the long s, the Kelvin sign) match too.
    if text.isascii():
        low = text.lower()
        if not (
            "k8s-aws-v1." in low
            or "signature" in low
            or "x-amz-security-token" in low
            or "x-amz-credential-secret" in low
        ):
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
