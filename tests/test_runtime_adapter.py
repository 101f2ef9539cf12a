"""Every use of Thespian internals (and the bind hardening) sits in ``actors/thespian_adapter.py``;
the rest of the runtime uses ``thespian.actors`` only, and never imports ``memesys``.

A static check of the sources: it names the internals the runtime needs today, and any import
from Thespian other than its public ``thespian.actors`` module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import actors
from actors import system, thespian_adapter

ADAPTER = "thespian_adapter.py"
# Private Thespian names the runtime uses (through the adapter only).
INTERNALS = {
    "_systemBase",
    "_tx_to_actor",
    "_run_transport",
    "bindArgs",
    "bindname",
    "IPBase",
    "IPActorAddress",
    "TransmitTrack",
    "MultiProcAdmin",
}
MODULES = sorted(Path(actors.__file__).parent.glob("*.py"))


def imports(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
    return found


def names(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.alias):
            found.add(node.name.rsplit(".", 1)[-1])
    return found


@pytest.mark.parametrize("path", [p for p in MODULES if p.name != ADAPTER], ids=lambda p: p.name)
def test_only_the_adapter_touches_thespian_internals(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    thespian = [m for m in imports(tree) if m.split(".")[0] == "thespian"]
    assert all(m == "thespian.actors" for m in thespian), (
        f"{path.name} imports Thespian beyond its public API: {thespian}"
    )
    assert not names(tree) & INTERNALS, (
        f"{path.name} uses Thespian internals {sorted(names(tree) & INTERNALS)}: "
        f"move them to actors/{ADAPTER}"
    )


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_the_runtime_never_imports_memesys(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    assert not [m for m in imports(tree) if m.split(".")[0] == "memesys"], path.name


def test_the_adapter_holds_the_internals_and_explains_them() -> None:
    source = (Path(actors.__file__).parent / ADAPTER).read_text()
    tree = ast.parse(source)
    assert {"_systemBase", "_tx_to_actor", "_run_transport", "bindArgs"} <= names(tree)
    doc = ast.get_docstring(tree)
    for name in (
        "harden_bind",
        "context_address",
        "transmit",
        "bindArgs",
        "_systemBase",
        "_tx_to_actor",
        "_run_transport",
        "follow_starter",
        "MultiProcAdmin.run",
    ):
        assert name in doc, f"the adapter's docstring does not explain {name}"
    # the hardening keeps its documented name (docs/security.md: actors.system.harden_bind)
    assert system.harden_bind is thespian_adapter.harden_bind
