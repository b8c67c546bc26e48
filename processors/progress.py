"""A small progress line (rate, ETA) for long commands; quiet when not on a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, label: str, stream: TextIO | None = None,
                 every_s: float = 0.2) -> None:
        self.total = max(total, 0)
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        # Off a terminal (CI logs) print a plain line every few seconds, not a bar.
        self.every_s = every_s if self.tty else 5.0
        self.done = 0
        self.started = time.monotonic()
        self._last = 0.0
        self._drawn = -1  # self.done at the last draw

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._draw()

    def _draw(self, final: bool = False) -> None:
        self._drawn = self.done
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.total:
            pct = min(100.0, 100.0 * self.done / self.total)
            left = (self.total - self.done) / rate if rate > 0 else 0.0
            width = 24
            filled = int(width * pct / 100)
            bar = "#" * filled + "." * (width - filled)
            text = (f"{self.label} [{bar}] {pct:5.1f}% {self.done:,}/{self.total:,} "
                    f"{rate:,.0f}/s ETA {left:,.0f}s")
        else:
            text = f"{self.label} {self.done:,} {rate:,.0f}/s"
        if self.tty:
            self.stream.write("\r" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self._draw(final=True)  # ends the bar's line
        elif self._drawn != self.done:
            self._draw()
