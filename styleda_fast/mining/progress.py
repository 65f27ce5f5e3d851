"""The console of a mining run: messages and one progress line on stderr (rank 0 only), and the time left."""

from __future__ import annotations

import shutil
import sys
import time


def printable(text: str) -> str:
    """``text`` with the undecodable bytes of file names (lone surrogates) escaped as ``\\xNN``: printable on any
    stream, whatever its error handler."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


PROGRESS_EVERY_S = 30.0  # when stderr is not a terminal: a progress line at most this often (and one per chunk)


class Console:
    """Messages of rank 0 and one progress line on stderr. A message first ends an open progress line, so no
    message is ever printed in the middle of one. On a terminal the line is redrawn in place; otherwise (a log
    file, a pipe) a plain line is printed per finished chunk and at most every ``PROGRESS_EVERY_S`` seconds."""

    def __init__(self, rank: int):
        self.quiet = rank != 0
        self.tty = sys.stderr.isatty()
        self.open = False
        self.last_draw = 0.0
        self.last_line = time.monotonic()

    def end_line(self) -> None:
        if self.open:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.open = False

    def say(self, message: str, *, err: bool = False) -> None:
        if self.quiet:
            return
        self.end_line()
        print(printable(message), file=sys.stderr if err else sys.stdout, flush=True)

    def progress(self, text: str, *, final: bool = False) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if self.tty:
            if final or now - self.last_draw >= 0.1:
                width = max(20, shutil.get_terminal_size().columns - 1)
                sys.stderr.write("\r" + text[:width] + "\x1b[K")
                sys.stderr.flush()
                self.open, self.last_draw = True, now
        elif final or now - self.last_line >= PROGRESS_EVERY_S:
            print(text, file=sys.stderr, flush=True)
            self.last_line = now


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Eta:
    """Time left: the mean time of this run's finished chunks for the chunks to come, and the current chunk's step
    rate for the rest of it (its own estimate until a chunk has finished)."""

    def __init__(self, chunks: int):
        self.chunks, self.finished, self.spent = chunks, 0, 0.0
        self.chunk_start = time.monotonic()

    def start_chunk(self) -> None:
        self.chunk_start = time.monotonic()

    def finish_chunk(self) -> None:
        self.finished += 1
        self.spent += time.monotonic() - self.chunk_start

    def left(self, done: int = 0, total: int = 0) -> str:
        elapsed = time.monotonic() - self.chunk_start
        this_left = elapsed / done * (total - done) if done and total else None
        per_chunk = self.spent / self.finished if self.finished else (elapsed / done * total if done else None)
        after = self.chunks - self.finished - (1 if total else 0)
        if per_chunk is None:
            return "ETA ?"
        return f"ETA {duration((this_left or 0.0) + max(after, 0) * per_chunk)}"
