"""Redis clients for the views, and the boundary where redis-py errors become ours."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.exceptions
import redis.retry
from redis.backoff import ExponentialWithJitterBackoff

from resultlog.connections import redis_url
from resultlog.errors import StoreUnavailable
from resultlog.refusals import redis_refusal
from resultlog.settings import Settings

# What "Redis could not be reached" looks like from redis-py (and the OS under it).
UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


# Bounded, and blocking when exhausted: a join over thousands of tasks reads them
# concurrently, and must queue for connections rather than open thousands.
MAX_CONNECTIONS = 64
# A dropped or refused connection is re-made and the command retried (the fold is
# idempotent, so re-running a script is harmless); Redis gone for longer (about 3 s) is
# an error. A command not answered within RESULTLOG_REDIS_TIMEOUT_S is not retried:
# Redis is there but hung (paused, swapping), and each retry would wait as long again
# (redis-py's default, 5 s times 7 tries, kept readers ~37 s past their own timeout).
_RETRIES = 6


def _retry(module: type[redis.retry.Retry] | type[redis.asyncio.retry.Retry]
           ) -> redis.retry.Retry | redis.asyncio.retry.Retry:
    backoff = ExponentialWithJitterBackoff(base=0.05, cap=1.0)
    return module(backoff, _RETRIES, supported_errors=(redis.exceptions.ConnectionError,))


def _options(settings: Settings, *, waits: bool = False) -> dict[str, Any]:
    return {
        "decode_responses": True,
        # Keepalive: a waiter's pub/sub connection may sit idle for hours.
        "socket_keepalive": True,
        "socket_connect_timeout": settings.redis_timeout_s,
        # A pub/sub connection's reads wait for pushes for as long as there are none:
        # redis-py before 8 bounds them by socket_timeout too, and would drop it idle.
        "socket_timeout": None if waits else settings.redis_timeout_s,
    }


def async_client(settings: Settings) -> redis.asyncio.Redis:
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        redis_url(settings), max_connections=MAX_CONNECTIONS, timeout=None,
        retry=_retry(redis.asyncio.retry.Retry), **_options(settings),
    )
    return redis.asyncio.Redis.from_pool(pool)


def pubsub_client(settings: Settings) -> redis.asyncio.Redis:
    """A client for one pub/sub connection: its reads have no timeout (a hung Redis is
    noticed by whoever waits on it, under their own deadline: views/notify.py)."""
    return redis.asyncio.Redis.from_url(
        redis_url(settings), retry=_retry(redis.asyncio.retry.Retry),
        **_options(settings, waits=True),
    )


def sync_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        redis_url(settings), retry=_retry(redis.retry.Retry), **_options(settings),
    )


@contextmanager
def translated(doing: str) -> Iterator[None]:
    """Re-raise redis-py's connection failures as :class:`StoreUnavailable`, and a
    refusal (wrong password, untrusted certificate) as the ConfigurationError naming
    the setting to fix."""
    try:
        yield
    except (*UNAVAILABLE, redis.exceptions.NoPermissionError) as exc:
        refused = redis_refusal(exc)
        if refused is not None:
            raise refused from exc
        raise StoreUnavailable(f"Redis is unavailable while {doing}: {exc}") from exc
    except redis.exceptions.ResponseError as exc:
        # Most are the command's own (a script's error): only a refusal is renamed.
        refused = redis_refusal(exc)
        if refused is not None:
            raise refused from exc
        raise


def text(value: str | bytes) -> str:
    """A reply value as text, whether the client decodes responses or not."""
    return value.decode() if isinstance(value, bytes) else value
