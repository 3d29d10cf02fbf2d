"""Go-compatible text helpers, and the one list of each upstream name in config."""

from __future__ import annotations

import pytest

from authd import logs, metrics
from authd.config import BACKEND_MODES, LOG_FORMATS, LOG_LEVELS
from authd.gotext import GO_FALSE, GO_TRUE, aggregate_message, go_quote, parse_bool


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        ("plain", '"plain"'),
        ('say "hi"\\', '"say \\"hi\\"\\\\"'),
        ("tab\tnl\nbell\a", '"tab\\tnl\\nbell\\a"'),
        ("\x01\x7f", '"\\x01\\x7f"'),
        ("é ü 日本", '"é ü 日本"'),
        ("zero\u200bwidth", '"zero\\u200bwidth"'),
        ("bad\udcffbyte", '"bad\\xffbyte"'),
    ],
)
def test_go_quote_matches_strconv_quote(text: str, quoted: str) -> None:
    """go_quote gives Go's `%q`: printable text as is, escapes the way strconv.Quote writes them."""
    assert go_quote(text) == quoted


def test_parse_bool_takes_only_go_spellings() -> None:
    """parse_bool accepts exactly strconv.ParseBool's spellings and says so in Go's words."""
    assert all(parse_bool(t) for t in GO_TRUE)
    assert not any(parse_bool(f) for f in GO_FALSE)
    for text in ("yes", "tRUE", " true", ""):
        with pytest.raises(ValueError, match=r'strconv\.ParseBool: parsing ".*": invalid syntax'):
            parse_bool(text)


def test_aggregate_message_joins_unique_texts() -> None:
    """One message prints alone; several print as Kubernetes' `[a, b]`, duplicates dropped."""
    assert aggregate_message(["a"]) == "a"
    assert aggregate_message(["a", "b", "a"]) == "[a, b]"


def test_other_modules_name_the_same_levels_and_backends() -> None:
    """The log and metric tables cover exactly the config's log levels, formats and backends."""
    assert set(logs.LEVELS) == {*LOG_LEVELS, "warn"}
    assert tuple(logs.FORMATS) == LOG_FORMATS
    assert set(metrics.BACKENDS) == set(BACKEND_MODES)
