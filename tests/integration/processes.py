"""Run the real processor (``resultlog process``) as a child process for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from resultlog.settings import Settings


class ProcessorProcess:
    """``python -m resultlog process`` with the test's settings; killable."""

    def __init__(self, settings: Settings, *args: str, env: dict[str, str] | None = None) -> None:
        """``args``: more arguments to ``resultlog process``; ``env``: more variables."""
        self.settings = settings
        self.args = args
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.mkstemp(prefix="resultlog-processor-", suffix=".log")[1])

    def start(self) -> ProcessorProcess:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("RESULTLOG_")},
               **self.settings.to_env(), **self.env, "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "resultlog", "process", "--loglevel", "info", *self.args],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, no final commit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def __enter__(self) -> ProcessorProcess:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
        if e is not None:
            # The test failed: what the processor said is the first thing to read.
            tail = self.output()[-20_000:]
            print(f"--- processor output (last 20,000 chars of {self.log}) ---\n{tail}")
        self.log.unlink(missing_ok=True)


@contextmanager
def live_processor(settings: Settings) -> Iterator[ProcessorProcess]:
    """A processor for a whole test, which must still be running at its end."""
    with ProcessorProcess(settings) as processor:
        yield processor
        assert processor.alive(), processor.output()[-5000:]
