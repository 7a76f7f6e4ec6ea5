"""A detached container's log: its output exactly, and when each line of it arrived.

Design note. ``log`` holds the container's stdout and stderr byte for byte, in the order
written (one pipe for both, or its terminal), so ``tether logs`` without ``-t`` is a plain
read and anyone may ``cat`` the file. The time of each line lives beside it, in
``log.idx``: one fixed-size record per line, ``(offset of the line's first byte in log,
nanoseconds since the epoch when the shim read it)``, little-endian u64 pairs, appended
in order. Fixed records let a reader find the lines of any byte range by bisection, so
``logs -f -t`` costs the same on the millionth line as on the first. The shim writes a
line's record before its bytes, so a reader never sees a line without its time.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import struct
import time
from dataclasses import dataclass

from tether.runtime.terminal import write_all

__all__ = ["INDEX_SUFFIX", "LogChunk", "LogWriter", "read_log", "rfc3339"]

INDEX_SUFFIX = ".idx"
_RECORD = struct.Struct("<QQ")
_BLOCK = 65536
READ_LIMIT = 1 << 20  # bytes of log per read; a reader asks again for the rest


def rfc3339(ns: int) -> str:
    """Nanoseconds since the epoch as Docker prints them: 2026-12-07T10:00:00.123456789Z."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


class LogWriter:
    """Appends output to ``log`` and the time of each new line to ``log.idx`` (in the shim)."""

    def __init__(self, path: str) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self.log = os.open(path, flags, 0o640)
        try:
            self.index = os.open(path + INDEX_SUFFIX, flags, 0o640)
        except OSError:
            os.close(self.log)
            raise
        self.at_line_start = _ends_a_line(path)

    def write(self, data: bytes) -> None:
        """Record ``data`` as read now. Errors (a full disk) lose output, never block the container."""
        now = time.time_ns()
        try:
            offset = os.fstat(self.log).st_size  # not a counter: a late error of the shim may append too
            starts = [offset] if self.at_line_start else []
            newline = data.find(b"\n")
            while newline != -1 and newline + 1 < len(data):
                starts.append(offset + newline + 1)
                newline = data.find(b"\n", newline + 1)
            self.at_line_start = data.endswith(b"\n")
            if starts:
                write_all(self.index, b"".join(_RECORD.pack(start, now) for start in starts))
            write_all(self.log, data)
        except OSError:
            pass

    def close(self) -> None:
        for fd in (self.log, self.index):
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass(frozen=True)
class LogChunk:
    text: str  # the output (with "TIMESTAMP " before each line when asked for)
    offset: int  # where the next read goes on (``since``)
    more: bool  # more is there already: read again at once


def read_log(
    path: str,
    since: int | None = None,
    tail: int | None = None,
    timestamps: bool = False,
    final: bool = True,
    limit: int = READ_LIMIT,
) -> LogChunk:
    """Part of the log at ``path``: from byte ``since``, or the last ``tail`` lines, or all.

    At most ``limit`` bytes at a time (``more`` says whether to ask again). While the
    container still writes (``final`` False) a chunk never ends inside a UTF-8 character:
    the rest of it comes with the next read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return LogChunk("", 0, False)
    try:
        size = os.fstat(fd).st_size
        if since is not None:
            start = min(max(since, 0), size)
        elif tail is not None:
            start = _tail_start(fd, size, tail)
        else:
            start = 0
        end = min(size, start + limit)
        data = os.pread(fd, end - start, start)
        if end < size or not final:
            data = data[: _complete_utf8(data)]
        end = start + len(data)
        at_line_start = start == 0 or os.pread(fd, 1, start - 1) == b"\n"
    finally:
        os.close(fd)
    if timestamps and data:
        text = _with_timestamps(path + INDEX_SUFFIX, data, start, at_line_start)
    else:
        text = data.decode("utf-8", errors="replace")
    return LogChunk(text, end, end < size)


def _with_timestamps(index_path: str, data: bytes, start: int, at_line_start: bool) -> str:
    """``data`` (log bytes from ``start``) with each line that starts in it prefixed by its time."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the last line is complete: no further line starts here
        ends_complete = True
    else:
        ends_complete = False
    offsets = []
    position = start
    for line in lines:
        offsets.append(position)
        position += len(line) + 1
    times = _Index(index_path).times_at(offsets)
    out = []
    for i, line in enumerate(lines):
        text = line.decode("utf-8", errors="replace")
        if i > 0 or at_line_start:
            text = f"{rfc3339(times[i])} {text}"
        out.append(text)
    return "\n".join(out) + ("\n" if ends_complete else "")


class _Index:
    """The records of ``log.idx`` (a missing file has none), found by bisection."""

    def __init__(self, path: str) -> None:
        try:
            self.fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            self.count = os.fstat(self.fd).st_size // _RECORD.size
        except OSError:
            self.fd, self.count = None, 0

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> int:
        """The offset of record ``i``."""
        assert self.fd is not None
        return int(_RECORD.unpack(os.pread(self.fd, _RECORD.size, i * _RECORD.size))[0])

    def times_at(self, offsets: list[int]) -> list[int]:
        """The time of the line starting at each (ascending) offset: its record's, or the
        last one before it (a record lost to a full disk), or 0."""
        if self.fd is None:
            return [0] * len(offsets)
        try:
            first = max(bisect.bisect_right(self, offsets[0]) - 1, 0)
            # the lines of one chunk have consecutive records: one read fetches them all
            wanted = min(self.count - first, len(offsets) + 1)
            raw = os.pread(self.fd, wanted * _RECORD.size, first * _RECORD.size)
        finally:
            os.close(self.fd)
        records = [_RECORD.unpack_from(raw, k * _RECORD.size) for k in range(len(raw) // _RECORD.size)]
        found, k = [], -1
        for offset in offsets:
            while k + 1 < len(records) and records[k + 1][0] <= offset:
                k += 1
            found.append(int(records[k][1]) if k >= 0 else 0)
        return found


def _tail_start(fd: int, size: int, lines: int) -> int:
    """The offset where the last ``lines`` lines of the file begin."""
    if lines <= 0:
        return size
    end = size
    if end and os.pread(fd, 1, end - 1) == b"\n":
        end -= 1  # the last line's own newline does not start another line
    seen = 0
    while end > 0:
        begin = max(0, end - _BLOCK)
        block = os.pread(fd, end - begin, begin)
        cut = len(block)
        while True:
            newline = block.rfind(b"\n", 0, cut)
            if newline == -1:
                break
            seen += 1
            if seen == lines:
                return begin + newline + 1
            cut = newline
        end = begin
    return 0


def _complete_utf8(data: bytes) -> int:
    """Length of ``data`` without a UTF-8 character cut off at its end."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: look further back for the lead
        need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
        return len(data) - back if need > back else len(data)
    return len(data)


def _ends_a_line(path: str) -> bool:
    """True if the log is empty or ends with a newline (the next byte starts a line)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() == 0:
                return True
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"
    except OSError:
        return True
