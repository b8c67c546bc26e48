"""Rebuilding a task's exception runs no code the event data could choose."""

from __future__ import annotations

import asyncio
import builtins
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resultlog.errors import ConfigurationError
from resultlog.schemas.event import ExceptionInfo
from resultlog.settings import Settings
from resultlog.views.backend import ResultBackend
from resultlog.views.exceptions import ExceptionRebuilder, RemoteTaskError, rebuild_exception

HERE = __name__
calls: list[str] = []


class CustomError(Exception):
    def __init__(self, message: str, code: int = 0) -> None:
        calls.append("CustomError.__init__")
        super().__init__(message)
        self.code = code


class Outer:
    class InnerError(LookupError):
        pass

    @property
    def prop(self) -> type[Exception]:
        calls.append("Outer.prop")
        return ValueError


class PyNewError(Exception):
    def __new__(cls, *args: object) -> PyNewError:
        calls.append("PyNewError.__new__")
        return super().__new__(cls, *args)


def info(type_: str, module: str = HERE, message: str = "boom") -> ExceptionInfo:
    return ExceptionInfo(type_, module, message)


@pytest.fixture(autouse=True)
def _no_calls() -> Iterator[None]:
    calls.clear()
    yield
    assert calls == [], "rebuilding ran code of the class or module"


@pytest.mark.parametrize("name", ["ValueError", "KeyError", "OSError", "ZeroDivisionError", "TimeoutError"])
def test_builtin_exceptions_are_rebuilt_as_themselves(name: str) -> None:
    exc = rebuild_exception(info(name, "builtins", "bad thing"))
    assert type(exc) is getattr(builtins, name)
    assert exc.args == ("bad thing",)


def test_a_builtin_that_wants_other_arguments_is_still_its_class() -> None:
    exc = rebuild_exception(info("UnicodeDecodeError", "builtins", "bad byte"))
    assert type(exc) is UnicodeDecodeError
    assert exc.args == ("bad byte",)


def test_a_class_of_an_imported_module_is_rebuilt_without_running_init() -> None:
    exc = rebuild_exception(info("CustomError"))
    assert type(exc) is CustomError
    assert str(exc) == "boom" and exc.args == ("boom",)
    assert not hasattr(exc, "code")  # set by __init__, which did not run
    with pytest.raises(CustomError):
        raise exc


def test_a_class_whose_str_needs_its_init_becomes_a_stand_in() -> None:
    # CalledProcessError's __str__ reads returncode, which only its __init__ sets: made
    # without it, str(exc) raised AttributeError in the caller's own handler.
    exc = rebuild_exception(ExceptionInfo("CalledProcessError", "subprocess", "boom"))
    assert isinstance(exc, RemoteTaskError)
    assert (type(exc).__name__, type(exc).__module__, str(exc)) == ("CalledProcessError", "subprocess", "boom")
    assert repr(exc)


def test_nested_qualified_names_resolve() -> None:
    exc = rebuild_exception(info("Outer.InnerError"))
    assert type(exc) is Outer.InnerError


def test_a_python_new_is_not_called() -> None:
    exc = rebuild_exception(info("PyNewError"))
    assert isinstance(exc, RemoteTaskError) and not isinstance(exc, PyNewError)
    assert (exc.exc_type, exc.exc_module, str(exc)) == ("PyNewError", HERE, "boom")


@pytest.mark.parametrize("module, name", [
    ("builtins", "SystemExit"),
    ("builtins", "KeyboardInterrupt"),
    ("builtins", "GeneratorExit"),
    ("asyncio", "CancelledError"),
    ("asyncio.exceptions", "CancelledError"),
])
def test_base_exceptions_that_would_hijack_the_caller_become_stand_ins(module: str, name: str) -> None:
    exc = rebuild_exception(info(name, module))
    assert isinstance(exc, RemoteTaskError)
    assert not isinstance(exc, (SystemExit, KeyboardInterrupt, GeneratorExit, asyncio.CancelledError))
    assert type(exc).__name__ == name and type(exc).__module__ == module


@pytest.mark.parametrize("module, name", [
    ("builtins", "dict"),  # a class, not an exception
    ("os", "system"),  # a function
    (HERE, "Outer.prop"),  # a property: must not be evaluated
    (HERE, "calls"),
    (HERE, "Missing"),
    ("builtins", "ValueError.__class__"),
    (HERE, "Outer.__init__"),
])
def test_anything_that_is_not_an_exception_class_becomes_a_stand_in(module: str, name: str) -> None:
    exc = rebuild_exception(info(name, module))
    assert isinstance(exc, RemoteTaskError) and type(exc).__mro__[1] is RemoteTaskError
    assert (exc.exc_type, exc.exc_module, exc.message) == (name, module, "boom")


@pytest.mark.parametrize("module, name", [
    ("", "ValueError"), ("builtins", ""), ("os path", "X"), ("a..b", "X"), (HERE, "f.<locals>.E"),
    ("1abc", "X"), ("builtins", "ValueError()"), ("__import__('os')", "X"),
])
def test_malformed_names_give_the_plain_stand_in(module: str, name: str) -> None:
    exc = rebuild_exception(info(name, module))
    assert type(exc) is RemoteTaskError
    assert (exc.exc_type, exc.exc_module, str(exc)) == (name, module, "boom")


def test_module_getattr_is_not_consulted(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = types.ModuleType("resultlog_test_lazy")

    def __getattr__(name: str) -> object:
        calls.append(f"module __getattr__({name})")
        return ValueError

    mod.__getattr__ = __getattr__  # type: ignore[method-assign]
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    exc = rebuild_exception(info("Lazy", mod.__name__))
    assert isinstance(exc, RemoteTaskError)


@pytest.fixture
def side_effect_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An importable module (not yet imported) that leaves a mark when imported."""
    name = "resultlog_test_sidefx"
    marker = tmp_path / "imported"
    (tmp_path / f"{name}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "class SideError(Exception):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return marker


def test_modules_are_not_imported_unless_allowed(side_effect_module: Path) -> None:
    exc = rebuild_exception(info("SideError", "resultlog_test_sidefx"))
    assert isinstance(exc, RemoteTaskError) and type(exc).__name__ == "SideError"
    assert not side_effect_module.exists()
    assert "resultlog_test_sidefx" not in sys.modules


def test_allow_listed_modules_are_imported(side_effect_module: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rebuilder = ExceptionRebuilder(import_modules=["resultlog_test_sidefx"])
    exc = rebuilder.rebuild(info("SideError", "resultlog_test_sidefx"))
    assert side_effect_module.exists()
    assert type(exc).__name__ == "SideError" and not isinstance(exc, RemoteTaskError)
    assert type(exc) is sys.modules["resultlog_test_sidefx"].SideError
    # An allow-list entry covers submodules, not look-alike names.
    assert rebuilder._may_import("resultlog_test_sidefx.sub")
    assert not rebuilder._may_import("resultlog_test_sidefx_other")


@pytest.mark.parametrize("bad", ["wave", None, b"wave", {"wave": 1}, 42,
                                 [None], [b"wave"], [""], ["my app"], ["wave."], ["ok", 1]])
def test_import_modules_that_are_no_list_of_module_names_are_refused_up_front(bad: object) -> None:
    """A lone str was one module per character, a bytes one per byte value; None or an
    entry that is no str failed only when a failed task's exception was rebuilt."""
    with pytest.raises(ConfigurationError, match="^import_modules: "):
        ExceptionRebuilder(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="^ResultBackend: import_modules: "):
        ResultBackend(Settings(), import_modules=bad)  # type: ignore[arg-type]


def test_a_lone_module_name_is_refused_with_how_to_pass_it() -> None:
    with pytest.raises(ConfigurationError, match=r"got str 'wave'; for one module pass \['wave'\]"):
        ResultBackend(Settings(), import_modules="wave")
    # Any list, tuple or other iterable of names is taken; none is ().
    assert ResultBackend(Settings(), import_modules=["wave"]).exceptions.import_modules == {"wave"}
    assert ExceptionRebuilder(n for n in ("a.b", "c")).import_modules == {"a.b", "c"}
    assert ExceptionRebuilder(()).import_modules == frozenset()


def test_an_allow_listed_module_that_fails_to_import_gives_a_stand_in() -> None:
    exc = ExceptionRebuilder(["no_such_module_here"]).rebuild(info("E", "no_such_module_here"))
    assert isinstance(exc, RemoteTaskError)


def test_the_remote_traceback_is_attached_as_a_note() -> None:
    exc = rebuild_exception(info("ValueError", "builtins"), "Traceback (most recent call last):\n  x\n")
    assert exc.__notes__ == ["Remote traceback:\nTraceback (most recent call last):\n  x"]
    assert not hasattr(rebuild_exception(info("ValueError", "builtins")), "__notes__")


def test_stand_ins_are_one_class_per_name_and_catchable() -> None:
    a = rebuild_exception(info("NopeError", "nowhere.mod"))
    b = rebuild_exception(info("NopeError", "nowhere.mod", "other"))
    assert type(a) is type(b)
    assert type(a).__qualname__ == "NopeError" and type(a).__module__ == "nowhere.mod"
    with pytest.raises(RemoteTaskError, match="other"):
        raise b


@given(st.text(max_size=40), st.text(max_size=40), st.text(max_size=40))
def test_any_data_gives_an_exception_and_never_raises(type_: str, module: str, message: str) -> None:
    exc = rebuild_exception(ExceptionInfo(type_, module, message))
    assert isinstance(exc, Exception)
    assert exc.args[0] == message
    assert str(exc) is not None and repr(exc)  # what a caller's handler does with it


class TwoArgumentError(Exception):
    def __init__(self, first: str, second: str) -> None:
        super().__init__(first)
        self.second = second


def test_call_class_calls_the_found_class_with_the_message_as_celery_does() -> None:
    rebuilder = ExceptionRebuilder(call_class=True)
    exc = rebuilder.rebuild(info("CustomError", message="boom"), "Traceback...")
    assert type(exc) is CustomError and exc.args == ("boom",)
    assert exc.code == 0 and calls == ["CustomError.__init__"]  # its __init__ ran
    assert exc.__notes__ == ["Remote traceback:\nTraceback..."]
    calls.clear()  # expected here: the autouse fixture checks nothing else ran


def test_call_class_falls_back_as_celery_does_for_a_class_it_cannot_call() -> None:
    exc = ExceptionRebuilder(call_class=True).rebuild(info("TwoArgumentError", message="foo"))
    assert type(exc) is Exception
    assert "TwoArgumentError" in str(exc) and "foo" in str(exc)


def test_call_class_keeps_the_lookup_rules() -> None:
    rebuilder = ExceptionRebuilder(call_class=True)
    assert isinstance(rebuilder.rebuild(info("SystemExit", "builtins")), RemoteTaskError)
    assert isinstance(rebuilder.rebuild(info("Nope", "not.imported.module")), RemoteTaskError)
