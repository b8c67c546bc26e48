"""Redis memory per stored result: resultlog's view next to Celery's Redis backend.

The same N tasks (STARTED, then SUCCESS with the small dict result of bench/peers.py,
uuid task ids) are stored both ways in the local stack's Redis, each under its own
isolated prefix: through resultlog's fold script (what the processor runs, via
``RedisView.apply``) and through Celery's Redis backend (``store_result``, as a worker
does). Prints, per task, the keys each keeps and their ``MEMORY USAGE`` (the key, its
value and Redis' per-key overhead, exact for these small values), then deletes them.

    .venv/bin/python -m bench.redis_memory [--tasks 2000]

Needs the ``celery`` package (the ``dev`` or ``bench`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import uuid

import redis

from bench._common import cleanup, isolated
from resultlog.schemas.event import TaskEvent
from resultlog.schemas.states import State
from resultlog.settings import Settings
from resultlog.views import RedisView


def _usage(client: redis.Redis, pattern: str) -> tuple[int, int]:
    """(keys, bytes) under ``pattern``."""
    keys = list(client.scan_iter(match=pattern, count=1000))
    total = 0
    for key in keys:
        total += client.memory_usage(key, samples=0) or 0
    return len(keys), total


async def _resultlog(settings: Settings, task_ids: list[str]) -> None:
    async with RedisView(settings) as view:
        for i, tid in enumerate(task_ids):
            await view.apply([TaskEvent.create(tid, State.STARTED, worker="bench@host"),
                              TaskEvent.create(tid, State.SUCCESS, worker="bench@host",
                                               result={"task": i, "writer": 0, "ok": True})])


def _celery(redis_url: str, prefix: str, task_ids: list[str]) -> None:
    from celery import Celery  # type: ignore[import-untyped]

    app = Celery("redis-memory", broker="memory://", backend=redis_url, set_as_current=False)
    app.conf.result_backend_transport_options = {"global_keyprefix": prefix}
    for i, tid in enumerate(task_ids):
        app.backend.store_result(tid, None, "STARTED")
        app.backend.store_result(tid, {"task": i, "writer": 0, "ok": True}, "SUCCESS")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=2000)
    args = ap.parse_args()
    if args.tasks < 1:
        raise SystemExit("--tasks must be at least 1")
    settings = isolated("mem")
    task_ids = [str(uuid.uuid4()) for _ in range(args.tasks)]
    celery_prefix = f"{settings.redis_prefix}celery:"
    client = redis.Redis.from_url(settings.redis_url)
    try:
        asyncio.run(_resultlog(settings, task_ids))
        # Every key under the prefix: the task hashes (and anything else the fold keeps).
        rl_keys, rl_bytes = _usage(client, f"{settings.redis_prefix}task:*")
        all_keys, all_bytes = _usage(client, f"{settings.redis_prefix}*")
        _celery(settings.redis_url, celery_prefix, task_ids)
        c_keys, c_bytes = _usage(client, f"{celery_prefix}*")
        n = args.tasks
        print(f"{n:,} tasks, each STARTED then SUCCESS with a 3-key dict result; MEMORY USAGE per task:")
        print(f"  resultlog view (task hash):      {rl_bytes / n:7.1f} bytes in {rl_keys / n:.1f} key(s)"
              f"  (all keys under the prefix: {all_bytes / n:.1f} bytes, {all_keys} keys)")
        print(f"  Celery Redis backend (meta key): {c_bytes / n:7.1f} bytes in {c_keys / n:.1f} key(s)")
        print(f"  ratio: {rl_bytes / c_bytes:.2f}")
    finally:
        for key in client.scan_iter(match=f"{celery_prefix}*", count=1000):
            client.delete(key)
        client.close()
        asyncio.run(cleanup(settings))


if __name__ == "__main__":
    main()
