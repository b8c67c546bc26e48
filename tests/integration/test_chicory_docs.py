"""The example at the top of docs/chicory.md runs as written: a Chicory app on resultlog,
its worker in the same process, a processor running, the broker on the local Redis."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from resultlog.settings import Settings
from tests.integration.processes import ProcessorProcess

pytest.importorskip("chicory")

from tests.integration.chicory_app import BLOCK_MS, broker_url  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "chicory.md"
_BLOCK = re.compile(r"(?P<skip><!-- not run[^>]*-->\n)?```python\n(?P<code>.*?)```", re.S)


def examples() -> list[str]:
    return [m["code"] for m in _BLOCK.finditer(DOC.read_text()) if not m["skip"]]


@pytest.fixture
def processor(settings: Settings) -> Iterator[ProcessorProcess]:
    with ProcessorProcess(settings) as processor:
        yield processor


def test_the_example_runs_and_prints_what_the_doc_says(
        settings: Settings, processor: ProcessorProcess) -> None:
    assert len(examples()) == 1
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RESULTLOG_", "CHICORY_"))}
    env.update(settings.to_env(), CHICORY_BROKER_REDIS_URL=broker_url(settings),
               CHICORY_BROKER_REDIS_BLOCK_MS=str(BLOCK_MS))
    done = subprocess.run([sys.executable, "-c", examples()[0]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["5", "SUCCESS 5", "[True]"], done.stdout
