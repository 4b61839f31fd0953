"""One exception tree: every exception the package defines derives from the root and is drawn."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import sandboxer
from sandboxer import errors


def package_exceptions() -> set[type[BaseException]]:
    found: set[type[BaseException]] = set()
    for module_info in pkgutil.walk_packages(sandboxer.__path__, "sandboxer."):
        module = importlib.import_module(module_info.name)
        if getattr(module, "STANDALONE_SCRIPT", False):
            continue  # run as a script with the standard library alone: it cannot import errors
        for _name, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__.startswith("sandboxer"):
                found.add(value)
    return found


def test_every_exception_derives_from_the_root_and_lives_in_errors_py() -> None:
    exceptions = package_exceptions()
    assert errors.SandboxerError in exceptions
    for exc in exceptions:
        assert issubclass(exc, errors.SandboxerError), exc
        assert exc.__module__ == "sandboxer.errors", exc


def test_the_drawn_tree_names_every_class() -> None:
    assert errors.__doc__ is not None
    for exc in package_exceptions():
        assert f" {exc.__name__} " in errors.__doc__ or f"{exc.__name__}\n" in errors.__doc__, exc
