"""The Python examples in docs/emitter.md run as written, against the real broker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from resultlog.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "emitter.md"
_BLOCK = re.compile(r"(?P<skip><!-- not run[^>]*-->\n)?```python\n(?P<code>.*?)```", re.S)


def examples() -> list[str]:
    return [m["code"] for m in _BLOCK.finditer(DOC.read_text()) if not m["skip"]]


def test_the_doc_has_examples() -> None:
    assert len(examples()) >= 3


@pytest.mark.parametrize("index", range(len(examples())))
async def test_example_runs(index: int, settings: Settings) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESULTLOG_")}
    env.update(
        RESULTLOG_KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
        RESULTLOG_EVENTS_TOPIC=settings.events_topic,  # the test's own topic, deleted after
        RESULTLOG_TOPIC_PARTITIONS=str(settings.topic_partitions),
        RESULTLOG_REDIS_URL=settings.redis_url,  # read-your-writes: the test's own keys
        RESULTLOG_REDIS_PREFIX=settings.redis_prefix,
    )
    done = subprocess.run(
        [sys.executable, "-c", examples()[index]],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
