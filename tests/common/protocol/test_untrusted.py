"""Client-supplied text as the server shows it: one bounded, escaped line."""

from __future__ import annotations

from slperf.common.protocol.untrusted import MAX_SHOWN_CHARS, shown


def test_short_text_is_quoted_as_is():
    assert shown("c1") == "'c1'"


def test_control_characters_are_escaped_so_no_line_can_be_forged():
    text = shown("boom\n2024-01-01 INFO slperf.server: client c9 connected\r\x1b[2J")
    assert "\n" not in text and "\r" not in text and "\x1b" not in text
    assert "\\n2024" in text


def test_long_text_is_truncated_saying_how_much_was_left_out():
    text = shown("a" * (1 << 20))
    assert len(text) < MAX_SHOWN_CHARS + 40
    assert text.endswith(f"(+{(1 << 20) - MAX_SHOWN_CHARS} chars)")


def test_bytes_and_other_objects_are_shown_as_text():
    assert shown(b"\xffid") == repr("\ufffdid")
    assert shown(12) == "'12'"
