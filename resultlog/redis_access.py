"""Redis clients for the views, and the boundary where redis-py errors become ours."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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
# A dropped connection is re-made and the command retried (the fold is idempotent, so
# re-running a script is harmless); Redis gone for longer (about 3 s) is an error.
_RETRIES = 6


def _backoff() -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(base=0.05, cap=1.0)


def async_client(settings: Settings) -> redis.asyncio.Redis:
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        redis_url(settings), max_connections=MAX_CONNECTIONS, timeout=None,
        # Keepalive: a waiter's pub/sub connection may sit idle for hours.
        decode_responses=True, socket_keepalive=True,
        retry=redis.asyncio.retry.Retry(_backoff(), _RETRIES),
    )
    return redis.asyncio.Redis.from_pool(pool)


def sync_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        redis_url(settings), decode_responses=True, socket_keepalive=True,
        retry=redis.retry.Retry(_backoff(), _RETRIES),
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
