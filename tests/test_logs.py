"""Tests for authd.logs: level names, formats, and that secrets never reach the output."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import structlog
from structlog.testing import capture_logs

from authd import logs
from authd.errors import ConfigError

TOKEN = "k8s-aws-v1.aHR0cHM6Ly9zdHMuYW1hem9uYXdzLmNvbS8_QWN0aW9uPUdldENhbGxlcklkZW50aXR5"
SIGNATURE = "5f2c0e3b8a7d9f1e4c6b2a0d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f"
SECURITY_TOKEN = "FwoGZXIvYXdzEJr//////////wEaDNc8oSecurityTokenValue"
URL = (
    "https://sts.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15"
    "&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20240101%2Fus-east-1"
    f"&X-Amz-Security-Token={SECURITY_TOKEN}&X-Amz-Signature={SIGNATURE}"
)
SECRETS = (TOKEN.removeprefix("k8s-aws-v1."), SIGNATURE, SECURITY_TOKEN)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Put structlog and the root logger back as they were after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    output = logs._Output.current
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)
    logs._Output.current = output


@pytest.mark.parametrize(
    ("name", "level"),
    [
        ("panic", logging.CRITICAL),
        ("fatal", logging.CRITICAL),
        ("error", logging.ERROR),
        ("warning", logging.WARNING),
        ("warn", logging.WARNING),
        ("info", logging.INFO),
        ("debug", logging.DEBUG),
        ("trace", logging.DEBUG),
        ("INFO", logging.INFO),
    ],
)
def test_upstream_level_names_map_to_python_levels(name: str, level: int) -> None:
    """Each logrus level name (any case) maps onto the matching Python level."""
    assert logs.parse_level(name) == level


def test_invalid_level_has_upstreams_message() -> None:
    """An unknown level is refused with upstream's exact text."""
    with pytest.raises(ConfigError) as info:
        logs.configure(fmt="json", level="loud")
    assert str(info.value) == (
        'Invalid log level "loud". Valid values are: '
        "panic, fatal, error, warning, info, debug, trace"
    )


def test_capture_logs_with_authd_processors_shows_no_secret() -> None:
    """Through authd's processor chain, tokens, signatures and secret fields are redacted."""
    logs.configure(fmt="json", level="debug", stream=io.StringIO())
    log = structlog.get_logger()
    with capture_logs(processors=logs.processors()) as captured:
        log.warning(f"access denied for {TOKEN}", token=TOKEN, url=URL, arn="arn:aws:iam::1:role/r")
        log.info("review", headers={"X-Amz-Security-Token": SECURITY_TOKEN}, items=[TOKEN])
        log.info("keys", secret_access_key="abc123", signature=SIGNATURE, accesskeyid="AKID")
    rendered = repr(captured)
    for secret in SECRETS:
        assert secret not in rendered
    assert "abc123" not in rendered
    first, second, third = captured
    assert first["token"] == logs.REDACTED
    assert first["event"] == f"access denied for k8s-aws-v1.{logs.REDACTED}"
    assert "Action=GetCallerIdentity" in first["url"]  # the rest of the URL stays readable
    assert first["arn"] == "arn:aws:iam::1:role/r"
    assert second["headers"] == {"X-Amz-Security-Token": logs.REDACTED}
    assert third["accesskeyid"] == "AKID"  # upstream logs the access key ID on purpose


def test_exception_text_is_redacted() -> None:
    """A traceback whose message holds a token is rendered without it."""
    out = io.StringIO()
    logs.configure(fmt="json", level="info", stream=out)
    try:
        raise ValueError(f"bad token {TOKEN} at {URL}")
    except ValueError:
        structlog.get_logger().exception("failed")
    line = json.loads(out.getvalue())
    assert "ValueError: bad token k8s-aws-v1.[REDACTED]" in line["exception"]
    for secret in SECRETS:
        assert secret not in out.getvalue()


def test_stdlib_records_go_through_redaction_in_text_format() -> None:
    """A library logging through `logging` gets the same redaction and the text format."""
    out = io.StringIO()
    logs.configure(fmt="text", level="info", stream=out)
    logging.getLogger("botocore.endpoint").warning("sending %s", URL)
    structlog.get_logger().info("hello", n=1)
    text = out.getvalue()
    for secret in SECRETS:
        assert secret not in text
    lines = text.splitlines()
    assert lines[0].startswith("timestamp=")
    assert "level=warning" in lines[0]
    assert "X-Amz-Signature=[REDACTED]" in lines[0]
    assert "level=info event=hello n=1" in lines[1]


def test_level_filters_and_chatty_libraries_wait_for_trace() -> None:
    """At debug, authd's debug lines show but botocore's need `trace`."""
    out = io.StringIO()
    logs.configure(fmt="json", level="debug", stream=out)
    structlog.get_logger().debug("mine")
    logging.getLogger("botocore").debug("theirs")
    assert [json.loads(x)["event"] for x in out.getvalue().splitlines()] == ["mine"]
    out = io.StringIO()
    logs.configure(fmt="json", level="trace", stream=out)
    logging.getLogger("botocore").debug("theirs")
    out2 = io.StringIO()
    logs.configure(fmt="json", level="error", stream=out2)
    structlog.get_logger().warning("hidden")
    assert [json.loads(x)["event"] for x in out.getvalue().splitlines()] == ["theirs"]
    assert out2.getvalue() == ""


def test_unknown_format_warns_like_upstream_and_uses_text() -> None:
    """An unknown format logs upstream's warning, rendered as text."""
    out = io.StringIO()
    logs.configure(fmt="yaml", level="info", stream=out)
    line = out.getvalue().strip()
    assert line.startswith("timestamp=")
    assert "Unknown log format specified (yaml), will use default text formatter instead." in line


def test_real_process_stderr_never_shows_a_token() -> None:
    """A real process configured by `configure` writes JSON lines to stderr without secrets."""
    code = (
        "import logging, structlog\n"
        "from authd import logs\n"
        "logs.configure(fmt='json', level='info')\n"
        f"structlog.get_logger().warning('denied', token={TOKEN!r}, url={URL!r})\n"
        f"logging.getLogger('httpx').warning('GET %s', {URL!r})\n"
        f"structlog.get_logger().info('seen ' + {TOKEN!r})\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout == ""
    lines = [json.loads(x) for x in result.stderr.splitlines()]
    assert [x["event"].split(" ")[0] for x in lines] == ["denied", "GET", "seen"]
    for secret in SECRETS:
        assert secret not in result.stderr


def test_timestamp_is_iso_utc_with_microseconds_like_structlogs() -> None:
    """authd's stamper writes what structlog's TimeStamper(fmt="iso", utc=True) writes."""
    before = datetime.now(UTC)
    ours = logs.add_timestamp(None, "info", {})["timestamp"]
    theirs = structlog.processors.TimeStamper(fmt="iso", utc=True)(None, "info", {})["timestamp"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", ours)
    assert len(ours) == len(theirs)
    stamped = datetime.fromisoformat(ours.replace("Z", "+00:00"))
    assert before <= stamped <= datetime.now(UTC)


def test_render_json_clears_clean_lines_and_redacts_the_rest() -> None:
    """A line with no secret is rendered as is; anything the one look cannot clear (a marker in
    any string, a nested object, non-ASCII text) is redacted field by field first."""
    line = {"event": "review", "arn": "arn:aws:iam::1:user/a", "groups": ["dev"], "n": 1}
    assert logs.render_json(None, "info", dict(line)) == json.dumps(line, separators=(",", ":"))
    for value in ([f"x {TOKEN}"], f"see {URL}", ("\u017fignature=abc",), {"password": "pw1"}):
        rendered = logs.render_json(None, "info", {"event": "e", "v": value})
        assert not any(secret in rendered for secret in (*SECRETS, "=abc", "pw1"))
        assert logs.REDACTED in rendered


def review_fields(**extra: object) -> dict[str, object]:
    """A review line's fields, as authd.server.app passes them."""
    return {
        "decision": "allow",
        "reason": "",
        "backend": "MountedFile",
        "latency_ms": 0.038,
        "request_id": "b2d0be3500001ad9",
        "arn": "arn:aws:iam::123456789012:user/Alice",
        "accesskeyid": "AKIAALICE",
        "username": "alice",
        "groups": ["dev", "ops"],
        **extra,
    }


def test_review_log_writes_what_structlog_writes() -> None:
    """The review writer's line has structlog's keys, order and values; only the time differs."""
    ours, theirs = io.StringIO(), io.StringIO()
    logs.configure(fmt="json", level="info", stream=ours)
    write = logs.review_log()
    assert write is not logs.log_review
    write(review_fields())
    logs.configure(fmt="json", level="info", stream=theirs)
    structlog.get_logger("authd.review.reference").info("review", **review_fields())
    [line], [reference] = ours.getvalue().splitlines(), theirs.getvalue().splitlines()
    mine, expected = json.loads(line), json.loads(reference)
    assert list(mine) == list(expected)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", mine.pop("timestamp"))
    expected.pop("timestamp")
    assert mine == expected
    assert line.startswith('{"decision":"allow"')


@pytest.mark.parametrize(
    ("extra", "hidden"),
    [
        ({"error": f"invalid token {TOKEN}"}, SECRETS[0]),
        ({"url": URL}, SIGNATURE),
        ({"detail": {"password": "hunter2"}}, "hunter2"),  # nested: the key decides
        ({"X-Amz-Security-Token": "abc123"}, "abc123"),
        ({"session": "caf\u00e9", "note": "\u017fignature=abc"}, "=abc"),
    ],
)
def test_review_log_redacts_every_secret(extra: dict[str, object], hidden: str) -> None:
    """Whatever the one-look check cannot clear is redacted field by field before writing."""
    out = io.StringIO()
    logs.configure(fmt="json", level="info", stream=out)
    logs.review_log()(review_fields(**extra))
    line = out.getvalue()
    assert hidden not in line
    assert logs.REDACTED in line
    assert json.loads(line)["username"] == "alice"


def test_review_log_keeps_non_ascii_text() -> None:
    """Non-ASCII text takes the careful path and is written unchanged when it holds no secret."""
    out = io.StringIO()
    logs.configure(fmt="json", level="info", stream=out)
    logs.review_log()(review_fields(session="caf\u00e9", groups=["\u65e5\u672c"]))
    line = json.loads(out.getvalue())
    assert (line["session"], line["groups"]) == ("caf\u00e9", ["\u65e5\u672c"])


def test_review_log_in_text_format_or_above_info_goes_through_structlog() -> None:
    """Text lines and quieter levels use structlog's path: logfmt, or nothing at warning."""
    out = io.StringIO()
    logs.configure(fmt="text", level="info", stream=out)
    write = logs.review_log()
    assert write is logs.log_review
    write(review_fields())
    assert "event=review" in out.getvalue()
    assert "username=alice" in out.getvalue()
    quiet = io.StringIO()
    logs.configure(fmt="json", level="warning", stream=quiet)
    logs.review_log()(review_fields())
    assert quiet.getvalue() == ""


class BrokenStream(io.StringIO):
    """A log stream that fails as stderr does when journald restarts or a pipe closes; it
    counts the writes tried, so a test knows the lines reached it."""

    def __init__(self) -> None:
        super().__init__()
        self.tried: list[str] = []

    def write(self, text: str) -> int:
        self.tried.append(text)
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


class ClosedStream(io.StringIO):
    """A closed stream (writing raises ValueError) that counts the writes tried."""

    def __init__(self) -> None:
        super().__init__()
        self.tried: list[str] = []
        self.close()

    def write(self, text: str) -> int:
        self.tried.append(text)
        return super().write(text)


@pytest.mark.parametrize("fmt", ["json", "text"])
@pytest.mark.parametrize("stream_type", [BrokenStream, ClosedStream])
def test_a_log_that_cannot_be_written_does_not_fail_the_caller(
    fmt: str, stream_type: type[BrokenStream | ClosedStream]
) -> None:
    """Write errors are dropped: structlog lines, library lines and review lines all return,
    after each was really handed to the failing stream."""
    stream = stream_type()
    logs.configure(fmt=fmt, level="info", stream=stream)
    structlog.get_logger("authd.test").warning("still here", n=1)
    logging.getLogger("botocore.test").warning("library line")
    logs.review_log()(review_fields())
    tried = "".join(stream.tried)
    assert "still here" in tried
    assert "library line" in tried
    assert "alice" in tried  # the review line's username


# --- issue 13: the log never stalls the caller ------------------------------------------------


def test_queued_lines_reach_the_stream_in_order_and_drain_at_exit() -> None:
    """With `queued=True`, lines written by structlog and `logging` reach the stream's file
    descriptor whole and in order once drained."""
    import os
    import tempfile

    with tempfile.TemporaryFile("w+") as out:
        logs.configure(fmt="json", level="info", stream=out, queued=True)
        log = structlog.get_logger("test.queued")
        for n in range(500):
            log.info("line", n=n)
        logging.getLogger("test.queued.stdlib").warning("from logging")
        logs.drain(timeout=10)
        out.seek(0)
        lines = [json.loads(line) for line in out.read().splitlines()]
        assert os.fstat(out.fileno()).st_size > 0
    assert [line["n"] for line in lines if line["event"] == "line"] == list(range(500))
    assert lines[-1]["event"] == "from logging"
    assert logs.dropped_lines() == 0


def test_a_stalled_stream_drops_and_counts_lines_but_never_blocks_the_writer() -> None:
    """When nobody reads the pipe logs go to, logging still returns at once; lines beyond the
    pipe and the queue are dropped and counted."""
    import os

    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    try:
        logs.configure(fmt="json", level="info", stream=stream, queued=True, queue_lines=100)
        log = structlog.get_logger("test.stalled")
        for n in range(5000):  # a blocking write would never get through this loop
            log.info("filler", n=n, pad="x" * 200)
        dropped = logs.dropped_lines()
        logs.drain(timeout=0.2)  # the writer is stuck in write(): give up, do not hang
    finally:
        stream.close()
        os.close(read_end)
    # 5,000 lines of ~260 bytes: a 64 KiB pipe holds ~250, the queue 100; the rest are counted.
    assert dropped >= 5000 - 100 - 1000
