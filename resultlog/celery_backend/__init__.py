"""Celery's result backend on resultlog: ``app.conf.result_backend = "resultlog://"``.

Needs the ``celery`` extra (``pip install resultlog[celery]``). See docs/celery.md.
"""

from resultlog.celery_backend.backend import ResultlogBackend
from resultlog.celery_backend.config import BackendConfig

__all__ = ["BackendConfig", "ResultlogBackend"]
