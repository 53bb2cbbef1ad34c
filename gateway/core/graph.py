"""Dependency graphs (devices' ``depends_on``, steps' ``after``): pure functions.

A graph maps each node to the nodes it depends on; edges to nodes that are not
keys are ignored (the callers report those as unknown). Every walk here is
iterative and linear in nodes plus edges: a graph comes from a configuration
file or an MQTT command, and a chain of a thousand nodes must cost a
millisecond, not Python's recursion limit.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence


def strongly_connected(edges: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """The strongly connected components, each after those it depends on (Tarjan)."""
    return _Tarjan(edges).components()


class _Tarjan:
    """Tarjan's algorithm with an explicit stack of (node, edges left) for recursion."""

    def __init__(self, edges: Mapping[str, Sequence[str]]) -> None:
        self.edges = edges
        self.index: dict[str, int] = {}
        self.low: dict[str, int] = {}
        self.stack: list[str] = []
        self.on_stack: set[str] = set()
        self.work: list[tuple[str, Iterator[str]]] = []
        self.found: list[list[str]] = []

    def components(self) -> list[list[str]]:
        for root in self.edges:
            if root not in self.index:
                self.enter(root)
                self.walk()
        return self.found

    def enter(self, node: str) -> None:
        self.index[node] = self.low[node] = len(self.index)
        self.stack.append(node)
        self.on_stack.add(node)
        self.work.append((node, iter(self.edges[node])))

    def walk(self) -> None:
        while self.work:
            node, targets = self.work[-1]
            for target in targets:
                if target not in self.edges:
                    continue
                if target not in self.index:
                    self.enter(target)
                    break  # deeper first; this node's other edges wait in its iterator
                if target in self.on_stack:
                    self.low[node] = min(self.low[node], self.index[target])
            else:
                self.leave(node)

    def leave(self, node: str) -> None:
        self.work.pop()
        if self.work:
            parent = self.work[-1][0]
            self.low[parent] = min(self.low[parent], self.low[node])
        if self.low[node] == self.index[node]:
            component: list[str] = []
            while not component or component[-1] != node:
                member = self.stack.pop()
                self.on_stack.discard(member)
                component.append(member)
            self.found.append(component)


def find_cycles(edges: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """One cycle per knot of the graph, each as ``[a, b, a]``.

    A knot is a strongly connected component of more than one node, or a node
    that depends on itself. Each cycle starts at the knot's node listed first in
    ``edges`` and is a shortest way back to it; the cycles come in that order.
    """
    position = {node: i for i, node in enumerate(edges)}
    cycles = []
    for component in strongly_connected(edges):
        start = min(component, key=position.__getitem__)
        if len(component) > 1 or start in edges[start]:
            cycles.append(_shortest_cycle(edges, start, set(component)))
    return sorted(cycles, key=lambda cycle: position[cycle[0]])


def _shortest_cycle(
    edges: Mapping[str, Sequence[str]], start: str, component: set[str]
) -> list[str]:
    """A shortest path from ``start`` back to itself inside its component (breadth first)."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for target in edges[node]:
            if target == start:
                return [*_path_to(came_from, start, node), start]
            if target in component and target not in came_from:
                came_from[target] = node
                queue.append(target)
    msg = f"{start!r} is on no cycle"  # unreachable: a knot always leads back
    raise ValueError(msg)


def _path_to(came_from: Mapping[str, str], start: str, node: str) -> list[str]:
    path = [node]
    while node != start:
        node = came_from[node]
        path.append(node)
    return path[::-1]


def topological_order(edges: Mapping[str, Sequence[str]]) -> list[str]:
    """Every node after all it depends on, ties in ``edges`` order (Kahn's algorithm).

    Nodes on a cycle, and nodes depending on one, have no such place and are
    left out.
    """
    waiting = {node: len({t for t in targets if t in edges}) for node, targets in edges.items()}
    dependents: dict[str, list[str]] = {node: [] for node in edges}
    for node, targets in edges.items():
        for target in dict.fromkeys(targets):  # each distinct edge once, as counted above
            if target in edges:
                dependents[target].append(node)
    ready = deque(node for node, count in waiting.items() if count == 0)
    order = []
    while ready:
        node = ready.popleft()
        order.append(node)
        for dependent in dependents[node]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                ready.append(dependent)
    return order


def depths(edges: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Each node's longest chain of dependencies: 0 for a node that depends on none.

    Nodes on or behind a cycle have no depth and are left out.
    """
    depth: dict[str, int] = {}
    for node in topological_order(edges):
        depth[node] = max((depth[t] + 1 for t in edges[node] if t in edges), default=0)
    return depth
