"""Modules of the package import each other one way: no import cycle anywhere.

The graph comes from grimp, which reads every ``import`` in the source, those inside
functions too: a function-level import that hides a cycle from the interpreter is
still a cycle in the design, and this test names it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Set
from pathlib import Path

import grimp
import pytest

PACKAGE = "inferstream"
#: Generated protobuf code; it imports nothing of ours and is not ours to shape.
GENERATED = "inferstream._proto"

Edges = Mapping[str, Set[str]]


def import_edges(graph: grimp.ImportGraph) -> dict[str, set[str]]:
    """Module -> the modules it imports directly, generated code left out."""
    ours = {m for m in graph.modules if m != GENERATED and not m.startswith(GENERATED + ".")}
    return {m: graph.find_modules_directly_imported_by(m) & ours for m in ours}


def cycle_through(edges: Edges, start: str) -> list[str] | None:
    """The shortest chain of imports from ``start`` back to itself, if there is one."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        module = queue.popleft()
        for imported in sorted(edges.get(module, ())):
            if imported == start:
                chain = [module]
                while chain[-1] != start:
                    chain.append(came_from[chain[-1]])
                return [*reversed(chain), start]
            if imported not in came_from:
                came_from[imported] = module
                queue.append(imported)
    return None


def find_cycles(edges: Edges) -> list[list[str]]:
    """A shortest cycle through each module that is in one, not repeating a covered module."""
    cycles: list[list[str]] = []
    covered: set[str] = set()
    for module in sorted(edges):
        cycle = None if module in covered else cycle_through(edges, module)
        if cycle:
            cycles.append(cycle)
            covered.update(cycle)
    return cycles


def test_the_package_has_no_import_cycle() -> None:
    edges = import_edges(grimp.build_graph(PACKAGE, cache_dir=None))
    # A graph that lost its edges would have no cycle either: make sure it did not.
    assert "inferstream.pipeline" in edges["inferstream.cli"]
    cycles = [" -> ".join(c) for c in find_cycles(edges)]
    assert not cycles, "import cycles:\n  " + "\n  ".join(cycles)


def test_a_cycle_through_a_function_level_import_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "layered"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "logs.py").write_text("")
    (package / "cli.py").write_text("from layered import api_cli, logs\n")
    (package / "api_cli.py").write_text(
        "from layered import logs\n\ndef serve():\n    from layered.cli import main\n"
    )
    monkeypatch.syspath_prepend(tmp_path)
    edges = import_edges(grimp.build_graph("layered", cache_dir=None))
    assert find_cycles(edges) == [["layered.api_cli", "layered.cli", "layered.api_cli"]]


def test_the_shortest_chain_of_a_long_cycle_is_named() -> None:
    edges = {"a": {"b"}, "b": {"c", "a2"}, "c": {"a"}, "a2": {"c"}}
    assert cycle_through(edges, "a") == ["a", "b", "c", "a"]
    assert cycle_through(edges, "a2") == ["a2", "c", "a", "b", "a2"]
    assert cycle_through({"a": {"b"}, "b": set()}, "a") is None
