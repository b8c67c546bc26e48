"""resultlog as a Chicory result backend: ``Chicory(backend=ResultlogBackend())``.

Needs Chicory: ``pip install resultlog[chicory]``. See docs/chicory.md.
"""

try:
    import chicory  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "resultlog.chicory_backend needs Chicory, which is not installed: "
        "pip install resultlog[chicory]"
    ) from exc

from resultlog.chicory_backend.backend import ResultlogBackend

__all__ = ["ResultlogBackend"]
