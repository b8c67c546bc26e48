"""Views of the event log: the Redis latest-state view with Celery-style results,
and the Postgres history."""

from resultlog.views.analytics import Analytics
from resultlog.views.backend import ResultBackend
from resultlog.chords.results import AioChordResult, ChordResult
from resultlog.chords.store import ChordView
from resultlog.views.exceptions import ExceptionRebuilder, RemoteTaskError, rebuild_exception
from resultlog.views.group import AioGroupResult, AioResultSet, GroupResult, ResultSet
from resultlog.views.history import HistoryStore, StoredEvent
from resultlog.views.redis_view import RedisView
from resultlog.views.result import AioAsyncResult, AsyncResult

__all__ = [
    "AioAsyncResult",
    "AioChordResult",
    "AioGroupResult",
    "AioResultSet",
    "Analytics",
    "AsyncResult",
    "ChordResult",
    "ChordView",
    "ExceptionRebuilder",
    "GroupResult",
    "HistoryStore",
    "RedisView",
    "RemoteTaskError",
    "ResultBackend",
    "ResultSet",
    "StoredEvent",
    "rebuild_exception",
]
