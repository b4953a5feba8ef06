"""Reading ``params.yaml`` as careless or hostile input: the one YAML reader of params.

PyYAML's ``SafeLoader`` builds no objects, but it still expands aliases (a "billion laughs"
file of a few hundred bytes holds 10^9 values once hashed or dumped), silently keeps the last
of two equal keys (a second ``objectives:`` block drops the first), reads ``yes``/``1``/``~``
as keys that are no names, recurses once per nesting level, and decodes any bytes it is
given. This reader refuses each of them with one line naming the file and the line, before a
stage (or Snakemake's DAG) sees a value:

- a file over :data:`MAX_BYTES` (1 MiB; the shipped params.yaml is about 10 KB);
- bytes that are not UTF-8;
- nesting deeper than :data:`MAX_DEPTH` levels;
- more than :data:`MAX_VALUES` values once every alias is expanded (counted while composing,
  nothing is ever expanded), or an alias inside its own anchor (a cycle);
- a mapping key given twice (both lines named), or a key YAML reads as no string.

What it returns expands to at most :data:`MAX_VALUES` values, so hashing or copying it
(``dag.file_hash``, ``deep_merge``) is bounded too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_BYTES = 1 << 20  # 1 MiB
MAX_DEPTH = 32  # the shipped file nests 5 deep (profiles.sd15.rewards.sources.aesthetic.head)
MAX_VALUES = 100_000  # every scalar, list and mapping, aliases expanded; the shipped file ~800

STR = "tag:yaml.org,2002:str"
MERGE = "tag:yaml.org,2002:merge"
_KINDS = {  # what YAML made of a key that is no string, in the message
    "tag:yaml.org,2002:int": "a number",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "a date",
}


class ParamsFileError(ValueError):
    """What is wrong with the file, with its line (``config.ConfigError`` adds the path)."""


def _at(node_or_mark: Any, message: str) -> ParamsFileError:
    mark = getattr(node_or_mark, "start_mark", node_or_mark)
    return ParamsFileError(f"line {mark.line + 1}: {message}")


class _Loader(yaml.SafeLoader):
    """``SafeLoader`` that measures while it composes: depth, expanded size, keys."""

    def __init__(self, text: str):
        super().__init__(text)
        self._depth = 0
        self._open: list[str] = []  # anchors of the collections being composed (cycles)
        self._size: dict[int, int] = {}  # id(node) -> its values, aliases expanded
        self._nodes: list[Node] = []  # keeps every node alive, so no id() is reused
        self._total = 0  # the document's values so far, aliases expanded

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            if event.anchor in self._open:
                raise _at(event, f"alias *{event.anchor} inside its own anchor (a cycle)")
            node = super().compose_node(parent, index)
            self._count(self._size[id(node)], event, f"alias *{event.anchor}")
            return node
        event = self.peek_event()
        if self._depth >= MAX_DEPTH:
            raise _at(event, f"nested more than {MAX_DEPTH} levels deep")
        anchor = getattr(event, "anchor", None)
        self._depth += 1
        self._open.append(anchor)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open.pop()
        self._nodes.append(node)
        self._size[id(node)] = 1 + sum(self._size[id(n)] for n in _children(node))
        self._count(1, node, "this value")
        return node

    def _count(self, n: int, where: Any, what: str) -> None:
        self._total += n
        if self._total > MAX_VALUES:
            raise _at(
                where,
                f"{what} takes the file past {MAX_VALUES:,} values (aliases expanded): an "
                "alias bomb, or far more than params need",
            )

    def compose_mapping_node(self, anchor: str | None) -> MappingNode:
        node = super().compose_mapping_node(anchor)
        seen: dict[str, int] = {}
        for key, _ in node.value:
            if key.tag == MERGE:
                continue
            if not isinstance(key, ScalarNode) or key.tag != STR:
                kind = _KINDS.get(key.tag, "no string") if isinstance(key, ScalarNode) else None
                shown = f"{key.value!r}" if isinstance(key, ScalarNode) else "a list or mapping"
                quote = f"; quote it ('{key.value}')" if kind else ""
                raise _at(key, f"key {shown} is read by YAML as {kind or 'no name'}{quote}")
            if key.value in seen:
                raise _at(key, f"duplicate key {key.value!r} (first at line {seen[key.value] + 1})")
            seen[key.value] = key.start_mark.line
        return node


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def parse(text: str) -> Any:
    """The YAML document ``text``, refused as :class:`ParamsFileError` (with its line) when
    it breaks a limit above or is not valid YAML."""
    loader = None
    try:
        loader = _Loader(text)  # a str: the reader checks every character here
        return loader.get_single_data()
    except yaml.reader.ReaderError as e:  # a control character: its position, not a mark
        line = text[: e.position].count("\n") + 1
        raise ParamsFileError(
            f"line {line}: not valid YAML: control character #x{e.character:04x} "
            "(special characters are not allowed)"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        if mark is None:
            raise ParamsFileError(f"not valid YAML: {problem}") from None
        raise _at(mark, f"not valid YAML: {problem}") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_text(path: Path) -> str:
    """The file's text: at most :data:`MAX_BYTES`, UTF-8 (a byte-order mark is fine)."""
    with path.open("rb") as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ParamsFileError(
            f"over {MAX_BYTES:,} bytes (1 MiB), the limit of a params file: is it the right file?"
        )
    try:
        return decode_utf8(data)
    except NotUTF8 as e:
        raise ParamsFileError(str(e)) from None


class NotUTF8(ValueError):
    """Bytes that are not UTF-8; the message names the line (from 1) and the first bad byte."""


def decode_utf8(data: bytes) -> str:
    """UTF-8 text (a byte-order mark is fine), for every text file diffpref reads."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise NotUTF8(
            f"line {line}: not UTF-8 (byte 0x{data[e.start]:02x}); save the file as UTF-8"
        ) from None


def load(path: Path) -> Any:
    """:func:`read_text` then :func:`parse`."""
    return parse(read_text(path))
