"""YAML text to data, refusing what PyYAML would accept but a configuration must not.

PyYAML keeps the last of two equal keys without a word (a second ``mqtt:``
silently replaced the first, ``tls`` and all), and expands aliases without
limit (a "billion laughs" document of 540 bytes ran past 60 s and 1.8 GB).
This module refuses both, and reads no files: ``gateway.config`` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

MAX_ALIAS_GROWTH = 1_000_000
"""How much bigger aliases may make a document, in nodes.

A scalar weighs one node per ``SCALAR_CHUNK`` characters, so an alias of a long
string counts for its length. Device templates (``<<: *defaults``) for 10,000
devices stay far below this; a document of nested aliases built to explode
goes past it at once.
"""
SCALAR_CHUNK = 64
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlError(Exception):
    """The text is not a document we accept; ``problems`` says why (no file name)."""

    def __init__(self, problems: Sequence[str]) -> None:
        """Keep every problem."""
        super().__init__("\n".join(problems))
        self.problems = list(problems)


class _Checks:
    """What the loaders below add to PyYAML's safe loaders.

    Construction is Python in both, so this works on libyaml's parser too. The
    ``type: ignore`` comments: mypy cannot see the loader that follows this
    class in the method resolution order.
    """

    def init_checks(self) -> None:
        self.duplicates: list[str] = []
        self._keys_checked: set[int] = set()

    def get_single_node(self) -> yaml.Node | None:
        node: yaml.Node | None = super().get_single_node()  # type: ignore[misc]
        if node is not None:
            check_alias_growth(node)
        return node

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # Called on every mapping before its construction, and on every mapping
        # merged into another (``<<: *base``) before that merge changes its
        # entries: so the keys checked here are the ones the text wrote.
        if id(node) not in self._keys_checked:
            self._keys_checked.add(id(node))
            self.duplicates += self._duplicate_keys(node)
        super().flatten_mapping(node)  # type: ignore[misc]

    def _duplicate_keys(self, node: yaml.MappingNode) -> list[str]:
        seen: set[object] = set()
        found = []
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue  # a merge may override keys; complex keys are PyYAML's to refuse
            key = self.construct_object(key_node)  # type: ignore[attr-defined]
            if key in seen:
                found.append(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
            seen.add(key)
        return found


class _PythonLoader(_Checks, yaml.SafeLoader):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.init_checks()


# libyaml's parser, when PyYAML was built with it, reads a large device list
# about ten times faster than the pure-Python one.
if hasattr(yaml, "CSafeLoader"):

    class _CLoader(_Checks, yaml.CSafeLoader):
        def __init__(self, text: str) -> None:
            super().__init__(text)
            self.init_checks()

    _Loader: type[_PythonLoader | _CLoader] = _CLoader
else:  # pragma: no cover - PyYAML without libyaml
    _Loader = _PythonLoader


def load(text: str) -> Any:  # noqa: ANN401 - whatever the document holds
    """The document in ``text``; raise ``YamlError`` naming every duplicate key.

    Never quotes the text: a line may hold a password.
    """
    loader = _Loader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise YamlError([f"invalid YAML{_position(exc)}"]) from None
    except (ValueError, TypeError, RecursionError) as exc:  # e.g. a date like 2001-02-30
        raise YamlError([f"invalid YAML value: {type(exc).__name__}"]) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise YamlError(loader.duplicates)
    return data


def _position(exc: yaml.YAMLError) -> str:
    """Where and what, without PyYAML's quote of the line (it may hold a secret)."""
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return ""
    mark = exc.problem_mark
    return f" at line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"


def check_alias_growth(root: yaml.Node, limit: int = MAX_ALIAS_GROWTH) -> None:
    """Raise ``YamlError`` if expanding every alias would add more than ``limit`` nodes.

    Counted on the composed nodes, where an alias is one more reference to its
    anchor's node, each node's expanded size computed once: linear in the
    text, however large the expansion would be.
    """
    expanded: dict[int, int] = {}
    written = 0  # the size without expansion: each node once
    open_nodes: set[int] = set()  # the node being sized and its ancestors
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_sized = stack.pop()
        if children_sized:
            open_nodes.discard(id(node))
            expanded[id(node)] = _weight(node) + sum(expanded[id(c)] for c in _children(node))
            written += _weight(node)
        elif id(node) in open_nodes:
            line = node.start_mark.line + 1
            raise YamlError([f"an alias inside its own anchor at line {line}"])
        elif id(node) not in expanded:
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))
    if expanded[id(root)] - written > limit:
        raise YamlError([f"aliases expand the document by more than {limit:,} nodes"])


def _children(node: yaml.Node) -> Iterator[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield key
            yield value
    elif isinstance(node, yaml.SequenceNode):
        yield from node.value


def _weight(node: yaml.Node) -> int:
    """A scalar's length counts: an alias of a long string costs as much as its copies."""
    if isinstance(node, yaml.ScalarNode):
        return 1 + len(node.value) // SCALAR_CHUNK
    return 1
