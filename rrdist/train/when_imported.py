"""Run a function on a module right after it is imported, without importing it here.

Ray's worker_process_setup_hook runs in every Ray process of a job: Ray Train's controller, its
placement-group cleaner and synchronization actor, the idle workers Ray keeps ready, the training
workers. Importing Ray Train (with Ray Data and pandas) and torch there cost each of those
processes 2-3 s of CPU at its start, on the cores the training workers start on. The hook's
changes to Ray Train's classes are made instead when, and where, those classes are loaded.
"""

from __future__ import annotations

import importlib.abc
import sys
from typing import Callable

_waiting: dict[str, list[Callable]] = {}  # module name -> functions to call once it is loaded


def when_imported(name: str, fn: Callable) -> None:
    """fn(module) now if `name` is loaded, else right after it is (once; the same fn is kept once)."""
    module = sys.modules.get(name)
    if module is not None:
        fn(module)
        return
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    waiting = _waiting.setdefault(name, [])
    if fn not in waiting:
        waiting.append(fn)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a waited-for module, wraps the loader the other finders return."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _waiting:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = None if finder is self or find is None else find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _ThenCall(spec.loader, _waiting.pop(fullname))
        return spec


class _ThenCall(importlib.abc.Loader):
    def __init__(self, loader, functions: list[Callable]) -> None:
        self.loader, self.functions = loader, functions

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        # The module keeps its own loader (source lookups, resources), as if it had not been wrapped.
        module.__loader__ = module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        for fn in self.functions:
            fn(module)

    def __getattr__(self, name):
        return getattr(self.loader, name)
