"""Live transitions (docs/dashboard.md, "Live updates"): ONE subscription to the channel
``fold.lua`` publishes on, held while at least one page listens, fanned out to each
listener's bounded queue; a listener too slow to keep up loses the oldest messages and
never blocks the others.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass

import redis.asyncio
from redis.exceptions import RedisError

from resultlog import names
from resultlog.background import stop_if_cancelled
from resultlog.dashboard.templating import task_href

log = logging.getLogger(__name__)

#: Messages a listener may fall behind by before the oldest are dropped.
QUEUE_MESSAGES = 256
#: Seconds between SSE comments that keep idle connections (and proxies) open.
KEEPALIVE_S = 15.0
_RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class Transition:
    """A task whose latest state a fold moved, as the live pages show it (one entry of a
    ``transitions`` message; ``task_name`` None when the batch did not carry it)."""

    task_id: str
    state: str
    timestamp: int  # ms since the epoch
    attempt: int
    worker: str | None
    task_name: str | None


def parse_message(prefix: str, data: str | bytes) -> list[Transition]:
    """The transitions of one ``fold.lua`` message (malformed entries are skipped)."""
    try:
        items = json.loads(data)
    except ValueError:
        return []
    out: list[Transition] = []
    for item in items if isinstance(items, list) else ():
        try:
            key, state, ts, attempt, worker, name = item
            out.append(Transition(
                task_id=names.task_id_from_key(prefix, key), state=str(state),
                timestamp=int(ts), attempt=int(attempt),
                worker=worker if isinstance(worker, str) else None,
                task_name=name if isinstance(name, str) else None))
        except (ValueError, TypeError):
            continue
    return out


class LiveHub:
    """One subscription to the transitions channel, shared by every listener."""

    def __init__(self, client: redis.asyncio.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.channel = names.transitions_channel(prefix)
        self._queues: set[asyncio.Queue[list[Transition]]] = set()
        self._reader: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    @asynccontextmanager
    async def listen(self) -> AsyncIterator[asyncio.Queue[list[Transition]]]:
        """A queue of transition lists; the subscription is live on entry."""
        queue: asyncio.Queue[list[Transition]] = asyncio.Queue(QUEUE_MESSAGES)
        self._queues.add(queue)
        if self._reader is None or self._reader.done():
            self._subscribed.clear()
            self._reader = asyncio.create_task(self._read(), name="dashboard-live")
        try:
            await self._subscribed.wait()
            yield queue
        finally:
            self._queues.discard(queue)
            if not self._queues:
                await self.close()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None

    async def _read(self) -> None:
        while True:
            stop_if_cancelled()
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._subscribed.set()
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    self._deliver(parse_message(self.prefix, message["data"]))
            except (RedisError, OSError) as exc:
                # A page only misses what happened while Redis was away; say so.
                log.warning("dashboard: live transitions interrupted (%s); resubscribing", exc)
                await asyncio.sleep(_RETRY_S)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _deliver(self, transitions: list[Transition]) -> None:
        if not transitions:
            return
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(transitions)


async def sse_stream(hub: LiveHub) -> AsyncIterator[str]:
    """Server-sent events: one ``transitions`` event (a JSON list) per fold call."""
    async with hub.listen() as queue:
        # Sent once the subscription is live: a page that saw it misses nothing after.
        yield "event: ready\ndata: {}\n\n"
        while True:
            try:
                batch = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
            except TimeoutError:
                yield ": keepalive\n\n"
                continue
            # Each with the link to its page, made as the templates make theirs.
            data = json.dumps([{**asdict(t), "href": task_href(t.task_id)} for t in batch],
                              separators=(",", ":"))
            yield f"event: transitions\ndata: {data}\n\n"
