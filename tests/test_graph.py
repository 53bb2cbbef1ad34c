"""The dependency-graph functions, against brute-force references on small graphs.

Small random graphs check every answer; long chains and cycles check that no
walk recurses (a thousand nodes used to pass Python's recursion limit).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from hypothesis import given
from hypothesis import strategies as st

from gateway.core.graph import depths, find_cycles, strongly_connected, topological_order

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

NODES = [f"n{i}" for i in range(8)]
LONG = 20_000  # twenty times the default recursion limit

Edges = dict[str, list[str]]


@st.composite
def graphs(draw: st.DrawFn) -> Edges:
    """Up to 8 nodes in any order, edges anywhere (self-loops, repeats, unknown nodes)."""
    nodes = draw(st.lists(st.sampled_from(NODES), unique=True, max_size=len(NODES)))
    targets = st.sampled_from([*NODES, "unknown"])
    return {node: draw(st.lists(targets, max_size=4)) for node in nodes}


def reachable(edges: Mapping[str, Sequence[str]], start: str) -> set[str]:
    """Every node a path of one edge or more leads to from ``start``."""
    seen: set[str] = set()
    todo = [t for t in edges[start] if t in edges]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo += [t for t in edges[node] if t in edges]
    return seen


def knots(edges: Mapping[str, Sequence[str]]) -> list[set[str]]:
    """The components that hold a cycle, by brute force."""
    reach = {node: reachable(edges, node) for node in edges}
    found: list[set[str]] = []
    for node in edges:
        component = {other for other in edges if node in reach[other] and other in reach[node]}
        if component and component not in found:
            found.append(component)
    return found


def longest_chain(edges: Mapping[str, Sequence[str]], node: str) -> int:
    """Brute force, for an acyclic part: the most edges on a path down from ``node``."""
    targets = [t for t in edges[node] if t in edges]
    return max((1 + longest_chain(edges, t) for t in targets), default=0)


def chain(length: int) -> Edges:
    """n0 <- n1 <- ... listed last node first, so a walk from the first goes deepest."""
    return {f"n{i}": [f"n{i - 1}"] if i else [] for i in reversed(range(length))}


# --- against brute force ------------------------------------------------------------


@given(graphs())
def test_strongly_connected_components_partition_the_nodes(edges: Edges) -> None:
    components = strongly_connected(edges)
    assert sorted(node for c in components for node in c) == sorted(edges)
    reach = {node: reachable(edges, node) | {node} for node in edges}
    for component in components:
        for node in component:
            assert {o for o in edges if node in reach[o] and o in reach[node]} == set(component)


@given(graphs())
def test_components_come_after_the_ones_they_depend_on(edges: Edges) -> None:
    position = {node: i for i, c in enumerate(strongly_connected(edges)) for node in c}
    for node, targets in edges.items():
        for target in targets:
            if target in edges:
                assert position[target] <= position[node]


@given(graphs())
def test_one_real_cycle_per_knot(edges: Edges) -> None:
    cycles = find_cycles(edges)
    all_knots = knots(edges)
    holding = [[k for k in all_knots if set(cycle) <= k] for cycle in cycles]
    assert all(len(found) == 1 for found in holding), "each cycle lies in one knot"
    assert sorted(map(sorted, all_knots)) == sorted(sorted(found[0]) for found in holding)
    for cycle in cycles:
        assert cycle[0] == cycle[-1]
        assert len(set(cycle[:-1])) == len(cycle) - 1, "a cycle passes each node once"
        for node, target in itertools.pairwise(cycle):
            assert target in edges[node]


@given(graphs())
def test_each_cycle_starts_at_its_knots_first_node_and_is_shortest(edges: Edges) -> None:
    order = list(edges)
    cycles = find_cycles(edges)
    firsts = [min(knot, key=order.index) for knot in knots(edges)]
    assert [cycle[0] for cycle in cycles] == sorted(firsts, key=order.index)
    for cycle in cycles:
        assert len(cycle) - 1 == shortest_cycle_length(edges, cycle[0])


def shortest_cycle_length(edges: Mapping[str, Sequence[str]], start: str) -> int:
    """The fewest edges on a way from ``start`` back to itself, by breadth first search."""
    frontier, steps, seen = {start}, 0, set()
    while frontier:
        steps += 1
        nxt = {t for node in frontier for t in edges[node] if t in edges}
        if start in nxt:
            return steps
        seen |= frontier
        frontier = nxt - seen
    raise AssertionError(f"{start} is on no cycle")


@given(graphs())
def test_topological_order_leaves_out_exactly_what_a_cycle_holds_up(edges: Edges) -> None:
    order = topological_order(edges)
    on_cycle = set().union(*knots(edges))
    held_up = {n for n in edges if n in on_cycle or reachable(edges, n) & on_cycle}
    assert sorted(order) == sorted(set(edges) - held_up)
    position = {node: i for i, node in enumerate(order)}
    for node in order:
        assert all(position[t] < position[node] for t in edges[node] if t in edges)


@given(graphs())
def test_depths_are_the_longest_chains(edges: Edges) -> None:
    found = depths(edges)
    assert set(found) == set(topological_order(edges))
    for node, depth in found.items():
        assert depth == longest_chain(edges, node)


# --- examples -----------------------------------------------------------------------


def test_every_cycle_is_found_not_just_the_first() -> None:
    edges = {
        "a": ["b"],
        "b": ["a"],
        "c": ["c"],
        "d": ["e", "missing"],
        "e": ["f"],
        "f": ["d"],
        "g": ["a", "d"],  # depends on two cycles, is on none
    }
    assert find_cycles(edges) == [["a", "b", "a"], ["c", "c"], ["d", "e", "f", "d"]]


def test_a_knot_with_several_loops_is_reported_once() -> None:
    edges = {"a": ["b", "c"], "b": ["a"], "c": ["a", "c"]}
    assert find_cycles(edges) == [["a", "b", "a"]]


def test_an_acyclic_graph_has_no_cycle() -> None:
    assert find_cycles({"a": ["b", "b"], "b": ["c"], "c": [], "d": ["c", "x"]}) == []


def test_depth_counts_edges_on_the_longest_chain() -> None:
    edges = {"top": ["mid", "base"], "mid": ["base"], "base": [], "loop": ["loop"]}
    assert depths(edges) == {"base": 0, "mid": 1, "top": 2}


# --- long graphs: no recursion, no quadratic step -----------------------------------


def test_a_long_chain_listed_last_first() -> None:
    edges = chain(LONG)
    assert find_cycles(edges) == []
    assert topological_order(edges) == [f"n{i}" for i in range(LONG)]
    assert depths(edges)[f"n{LONG - 1}"] == LONG - 1


def test_a_long_cycle() -> None:
    edges = chain(LONG)
    edges["n0"] = [f"n{LONG - 1}"]
    [cycle] = find_cycles(edges)
    assert len(cycle) == LONG + 1
    assert cycle[:3] == [f"n{LONG - 1}", f"n{LONG - 2}", f"n{LONG - 3}"]
    assert topological_order(edges) == []
    assert depths(edges) == {}


def test_many_cycles() -> None:
    edges = {f"n{i}": [f"n{i ^ 1}"] for i in range(LONG)}
    cycles = find_cycles(edges)
    assert len(cycles) == LONG // 2
    assert cycles[1] == ["n2", "n3", "n2"]


def test_a_wide_graph() -> None:
    edges: Edges = {
        "root": [f"n{i}" for i in range(LONG)],
        **{f"n{i}": ["base"] for i in range(LONG)},
        "base": [],
    }
    assert depths(edges)["root"] == 2
    assert find_cycles(edges) == []
