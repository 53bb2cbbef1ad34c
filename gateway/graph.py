"""Dependency graphs (devices' ``depends_on``, steps' ``after``): pure functions."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


def find_cycle(edges: Mapping[str, Sequence[str]]) -> list[str] | None:
    """One cycle as ``[a, b, a]`` if there is any; edges to unknown nodes are ignored."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done or node not in edges:
            return None
        path.append(node)
        for target in edges[node]:
            if found := visit(target):
                return found
        path.pop()
        done.add(node)
        return None

    for start in edges:
        if found := visit(start):
            return found
    return None
