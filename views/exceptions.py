"""Rebuild a task's exception from the data an event recorded: type, module, message.

The data comes off the log, which every worker can write, so rebuilding must never
become a way to run code: the class is looked up, never created, no code of it runs,
and anything else becomes a :class:`RemoteTaskError` subclass named after the original.
The rules, and why: docs/results.md, "Exceptions".
"""

from __future__ import annotations

import builtins
import functools
import importlib
import inspect
import sys
from collections.abc import Iterable
from types import BuiltinFunctionType, ModuleType
from typing import Any, Final

from resultlog.errors import ConfigurationError, InvalidTaskId
from resultlog.schemas.event import ExceptionInfo, listed_ids

_BUILTIN_EXCEPTIONS: Final = tuple(
    v for v in vars(builtins).values() if isinstance(v, type) and issubclass(v, BaseException)
)
# BaseException's C-level instance dict accessor: writing a note through it runs no
# __getattr__/__setattr__ a class may define.
_EXC_DICT: Final[Any] = vars(BaseException)["__dict__"]


class RemoteTaskError(Exception):
    """Stands in for a task's exception whose class could not (or may not) be rebuilt.

    Subclasses are made per original class name, so ``type(exc).__name__`` and
    ``__module__`` read like the original. This is the task's failure, not resultlog's,
    which is why it is not a :class:`~resultlog.errors.ResultlogError`.
    """

    exc_type: str = ""
    exc_module: str = ""

    def __init__(self, message: str = "", exc_type: str = "", exc_module: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.exc_type = exc_type or self.exc_type
        self.exc_module = exc_module or self.exc_module


class ExceptionRebuilder:
    """Turns :class:`ExceptionInfo` into an exception instance, by the module's rules.

    ``import_modules`` names modules (a name also covers its submodules) that may be
    imported to find a class; the default imports nothing. Only list your own code.
    Anything but a list (tuple, ...) of module names is a :class:`ConfigurationError`.
    """

    def __init__(self, import_modules: Iterable[str] = (), *, call_class: bool = False) -> None:
        self.import_modules = frozenset(module_names(import_modules))
        # Celery's way, for the Celery backend: a class found by rule 1 and 2 is called
        # with the message, so its __init__ runs (rule 3 does not hold); one that cannot
        # be called so becomes Exception("<class ...>(message)"), as Celery makes it.
        self.call_class = call_class

    def rebuild(self, info: ExceptionInfo, traceback: str | None = None,
                args: tuple[Any, ...] | None = None) -> Exception:
        """``args``: what to call the class with instead of the message (``call_class``
        only: Celery calls ``cls(*args)`` with the args it stored)."""
        cls = self.resolve(info.module, info.type)
        exc = None
        if cls is not None:
            if self.call_class:
                exc = _call(cls, info.message, (info.message,) if args is None else args)
            else:
                exc = _instantiate(cls, info.message)
        if exc is None:
            stand_in = _stand_in(info.module, info.type)
            exc = stand_in(info.message, info.type, info.module)
        if traceback:
            _EXC_DICT.__get__(exc)["__notes__"] = [f"Remote traceback:\n{traceback.rstrip()}"]
        return exc

    def resolve(self, module_name: str, qualname: str) -> type[Exception] | None:
        """The real class named, if the rules allow it; else None."""
        if not _dotted(module_name) or not _dotted(qualname):
            return None
        module = sys.modules.get(module_name)
        if module is None and self._may_import(module_name):
            try:
                module = importlib.import_module(module_name)
            except Exception:  # an allow-listed module that fails to import: no class
                return None
        if not issubclass(type(module), ModuleType):
            return None
        obj: object = module
        for part in qualname.split("."):
            try:
                obj = inspect.getattr_static(obj, part)
            except AttributeError:
                return None
        # type(obj) and issubclass on a real class run no user code (unlike isinstance,
        # which may consult a __class__ property).
        if not issubclass(type(obj), type):
            return None
        cls: type = obj  # type: ignore[assignment]
        return cls if issubclass(cls, Exception) else None

    def _may_import(self, module_name: str) -> bool:
        return any(
            module_name == allowed or module_name.startswith(allowed + ".")
            for allowed in self.import_modules
        )


def module_names(value: object, what: str = "import_modules") -> tuple[str, ...]:
    """``value`` (a list, tuple or other iterable of dotted module names) as a tuple;
    else :class:`ConfigurationError` naming ``what``.

    Checked when the rebuilder is made: a lone string would otherwise allow one module
    per character, and an entry that is not a name would fail only when a failed task's
    exception is rebuilt, far from the mistake (or never match, silently).
    """
    try:
        entries = listed_ids(value)
    except InvalidTaskId:  # the same shape rule as a list of task ids, in these words
        example = f"[{value!r:.60}]" if isinstance(value, str) else "['myapp']"
        raise ConfigurationError(
            f"{what}: expected a list of module names, got {type(value).__name__} "
            f"{value!r:.60}; for one module pass {example}, for none pass []") from None
    for entry in entries:
        if not isinstance(entry, str) or not _dotted(entry):
            raise ConfigurationError(
                f"{what}: each entry must be a module name such as 'myapp' or 'myapp.tasks', "
                f"got {type(entry).__name__} {entry!r:.60}")
    return tuple(entries)


def rebuild_exception(
    info: ExceptionInfo, traceback: str | None = None, *, import_modules: Iterable[str] = ()
) -> Exception:
    """:meth:`ExceptionRebuilder.rebuild` with a one-off rebuilder."""
    return ExceptionRebuilder(import_modules).rebuild(info, traceback)


def _dotted(name: str) -> bool:
    return bool(name) and all(part.isidentifier() for part in name.split("."))


def _instantiate(cls: type[Exception], message: str) -> Exception | None:
    # Identity, not `in`: hashing would consult a metaclass's __hash__.
    if any(cls is b for b in _BUILTIN_EXCEPTIONS):
        try:
            return cls(message)
        except Exception:  # e.g. UnicodeDecodeError wants five arguments
            pass
    new = inspect.getattr_static(cls, "__new__")
    if type(new) is not BuiltinFunctionType:
        return None
    try:
        exc = new(cls, message)
    except Exception:
        return None
    if type(exc) is not cls:
        return None
    # Made without its __init__ (rule 3), an instance may lack attributes its __str__
    # reads (subprocess.CalledProcessError's returncode): then ``f"{exc}"`` in the
    # caller's own handler would raise again. Such a class gets the stand-in, whose
    # str() is the message; the caller would run the same __str__ when logging it.
    try:
        str(exc)
        repr(exc)
    except Exception:
        return None
    return exc


def _call(cls: type[Exception], message: str, args: tuple[Any, ...]) -> Exception:
    try:
        exc = cls(*args)
    except Exception:
        return Exception(f"{cls}({message!r})")
    return exc if issubclass(type(exc), Exception) else Exception(f"{cls}({message!r})")


@functools.lru_cache(maxsize=512)  # bounded: the names come from the log
def _stand_in(module_name: str, qualname: str) -> type[RemoteTaskError]:
    if not _dotted(module_name) or not _dotted(qualname):
        return RemoteTaskError
    name = qualname.rpartition(".")[2]
    return type(name, (RemoteTaskError,), {
        "__module__": module_name, "__qualname__": qualname,
        "exc_type": qualname, "exc_module": module_name,
    })
