"""resultlog: an event-sourced task-result backend for Python task queues."""

from resultlog.errors import ResultlogError
from resultlog.settings import Settings

__all__ = ["ResultlogError", "Settings"]
__version__ = "0.1.0"
