"""Every module of ``bench/`` imports, and importing one starts nothing.

The benchmarks and profiling modules run only by hand (``python -m bench.<name>``), so nothing
else would notice when a module they import moves. Importing each here catches that; the
entry points are runnable (``main``), and an import must leave no thread or child process
behind (their work is under ``if __name__ == "__main__"``).
"""

from __future__ import annotations

import importlib
import pkgutil
import threading

import psutil
import pytest

import bench

MODULES = sorted(f"bench.{info.name}" for info in pkgutil.iter_modules(bench.__path__))
LIBRARIES = {"bench.common", "bench.echo", "bench.profile_captions", "bench.profile_hop_actors"}


def test_every_module_is_listed() -> None:
    assert {"bench.run", "bench.pipeline", "bench.llm", "bench.ab"} <= set(MODULES)
    assert any(name.startswith("bench.profile_") for name in MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_module_imports_without_starting_anything(name: str) -> None:
    threads = {t.ident for t in threading.enumerate()}
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    module = importlib.import_module(name)
    assert module.__doc__, f"{name} says what it is for"
    if name not in LIBRARIES:
        assert callable(getattr(module, "main", None)), f"{name} is run as python -m {name}"
    assert {t.ident for t in threading.enumerate()} <= threads, "importing started a thread"
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= children, (
        "importing started a process"
    )
