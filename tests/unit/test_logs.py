"""A detached container's log (``tether.runtime.logs``): the output byte for byte, a time
per line beside it, and reads from an offset, of the last N lines, with timestamps."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tether.runtime.logs import INDEX_SUFFIX, LogWriter, read_log, rfc3339

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z"


@pytest.fixture
def log(tmp_path: Path) -> str:
    return str(tmp_path / "log")


def write(path: str, *chunks: bytes, pause: float = 0.0) -> None:
    writer = LogWriter(path)
    try:
        for chunk in chunks:
            writer.write(chunk)
            time.sleep(pause)
    finally:
        writer.close()


def test_rfc3339() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00.000000000Z"
    assert rfc3339(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"


def test_output_is_kept_exactly_and_each_line_gets_a_time(log: str) -> None:
    write(log, b"one\ntw", b"o\nthree\n", b"four (no newline)", pause=0.01)
    assert Path(log).read_bytes() == b"one\ntwo\nthree\nfour (no newline)"
    assert Path(log + INDEX_SUFFIX).stat().st_size == 4 * 16  # a record per line start
    assert read_log(log).text == "one\ntwo\nthree\nfour (no newline)"
    stamped = read_log(log, timestamps=True).text.split("\n")
    assert [line.split(" ", 1)[1] for line in stamped] == ["one", "two", "three", "four (no newline)"]
    assert all(re.match(STAMP + " ", line) for line in stamped)
    # a line's time is when its first byte came: "two" began in the first chunk
    assert stamped[0][:30] == stamped[1][:30] < stamped[2][:30] < stamped[3][:30]


def test_a_partial_line_continues_in_the_next_run(log: str) -> None:
    write(log, b"half")
    write(log, b" and the rest\nnext\n")  # a restarted container appends
    assert read_log(log).text == "half and the rest\nnext\n"
    assert len(read_log(log, timestamps=True).text.splitlines()) == 2


def test_tail(log: str) -> None:
    write(log, b"".join(b"line%d\n" % i for i in range(1, 10001)))
    assert read_log(log, tail=2).text == "line9999\nline10000\n"
    assert read_log(log, tail=0).text == ""
    assert read_log(log, tail=20000).text == read_log(log).text
    stamped = read_log(log, tail=1, timestamps=True).text
    assert re.fullmatch(STAMP + " line10000\n", stamped)
    write(log, b"partial")
    assert read_log(log, tail=2).text == "line10000\npartial"


def test_follow_from_an_offset(log: str) -> None:
    write(log, b"a\nb")
    first = read_log(log, final=False)
    assert (first.text, first.offset, first.more) == ("a\nb", 3, False)
    write(log, b"c\nd\n")
    second = read_log(log, since=first.offset, timestamps=True, final=False)
    # the chunk starts inside the line "bc": no time before its first part
    assert re.fullmatch(rf"c\n{STAMP} d\n", second.text), second.text
    assert read_log(log, since=second.offset).text == ""


def test_a_utf8_character_is_never_cut_while_running(log: str) -> None:
    write(log, "é".encode()[:1])
    running = read_log(log, final=False)
    assert (running.text, running.offset) == ("", 0)
    write(log, "é".encode()[1:] + b"\n")
    assert read_log(log, since=running.offset).text == "é\n"


def test_reads_are_limited_and_say_there_is_more(log: str) -> None:
    write(log, b"x" * 100 + b"\n")
    chunk = read_log(log, limit=40)
    assert (len(chunk.text), chunk.offset, chunk.more) == (40, 40, True)
    rest = read_log(log, since=chunk.offset)
    assert rest.text == "x" * 60 + "\n" and not rest.more


def test_missing_log_and_missing_index(log: str) -> None:
    assert read_log(log) == read_log(log, tail=3)
    assert read_log(log).text == "" and read_log(log).offset == 0
    Path(log).write_bytes(b"no index\n")  # a log from before the index existed
    assert read_log(log, timestamps=True).text == "1970-01-01T00:00:00.000000000Z no index\n"
