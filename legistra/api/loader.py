"""The one reader of TrainingRun / TrainingSchedule files: bounded in size, depth and alias expansion.

Every command (`validate`, `render`, `train`, `plan`, `submit`) and the notebook API read manifests through
here. A manifest may come from anyone who can open a pull request against a GitOps repository, so it is
treated as hostile: duplicate keys are refused (kubectl and the API server refuse them too, where PyYAML
would silently keep the last one), an alias bomb is refused before it is expanded, and anything that is not
UTF-8 YAML or JSON gets one line that says what the file is instead of a traceback.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from legistra.api.formats import scalars

# etcd refuses objects over 1.5 MiB; a manifest file several times larger is not a manifest.
MAX_FILE_BYTES = 4 << 20
# Nodes a file may expand to once aliases are followed (a real TrainingRun has a few hundred).
MAX_NODES = 100_000
# Nesting of mappings and sequences (a TrainingRun with a raw DeepSpeed config is about 8 deep).
MAX_DEPTH = 64

# UTF-32 first: its little-endian mark starts with UTF-16's.
_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF16_LE, "UTF-16"),
         (codecs.BOM_UTF16_BE, "UTF-16"))


def bom_encoding(head: bytes) -> str | None:
    """UTF-16 or UTF-32 when `head` (a file's first bytes) opens with that encoding's byte-order mark."""
    return next((name for bom, name in _BOMS if head.startswith(bom)), None)


class DocumentError(ValueError):
    """A file that cannot be read as manifests: one line, naming what is wrong (the caller names the file)."""


def decode(data: bytes) -> str:
    """The text of a manifest file: UTF-8 (a UTF-8 byte-order mark is allowed), nothing else."""
    if len(data) > MAX_FILE_BYTES:
        raise DocumentError(f"file is {len(data):,} bytes; a manifest may have at most {MAX_FILE_BYTES:,}")
    name = bom_encoding(data)
    if name:
        raise DocumentError(f"file is {name}-encoded; save it as UTF-8 (e.g. iconv -f {name} -t UTF-8)")
    if b"\x00" in data:
        raise DocumentError("file is binary (it holds NUL bytes), not YAML or JSON")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DocumentError(f"line {line}: byte 0x{data[exc.start]:02x} is not UTF-8; save the file as UTF-8 "
                            "(e.g. iconv -f latin1 -t UTF-8)") from None


def _measure(node: Node, depth: int, seen: dict[int, tuple[int, int]], path: set[int]) -> tuple[int, int]:
    """(values, height) of `node` with aliases followed, each shared node counted once per use; refuses a file
    that nests deeper than MAX_DEPTH, refers to itself, or expands past MAX_NODES."""
    key = id(node)
    if key in path:
        raise DocumentError(f"line {node.start_mark.line + 1}: an alias refers to a node that contains it")
    if key not in seen:
        total, height = 1, 0
        if isinstance(node, (SequenceNode, MappingNode)):
            path.add(key)
            children = node.value if isinstance(node, SequenceNode) else [n for pair in node.value for n in pair]
            for child in children:
                count, below = _measure(child, depth + 1, seen, path)
                total, height = total + count, max(height, below + 1)
                if total > MAX_NODES:
                    raise DocumentError(f"line {node.start_mark.line + 1}: expands to more than {MAX_NODES:,} "
                                        "values once its aliases are followed")
            path.discard(key)
        seen[key] = (total, height)
    if depth + seen[key][1] > MAX_DEPTH:
        raise DocumentError(f"line {node.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep")
    return seen[key]


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping, naming it and both lines, and reads numbers
    as kubectl does (YAML 1.2): `learningRate: 2e-5` is a number there, while YAML 1.1 makes it a string."""

    _depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        # Stop at the limit instead of at Python's recursion limit: a 1,000-deep file took 0.8 s to unwind.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH + 1:
                mark = self.peek_event().start_mark
                raise DocumentError(f"line {mark.line + 1}: nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        if isinstance(node, MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if isinstance(key_node, ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    key = key_node.value
                    line = key_node.start_mark.line + 1
                    if key in seen:
                        raise DocumentError(f"line {line}: duplicate key {key!r} (first given on line {seen[key]})")
                    seen[key] = line
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?([0-9][0-9_]*(\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),  # 1e-4, 2.5E3: YAML 1.1 misses
    list("-+0123456789."),
)


def _yaml_documents(text: str) -> list[Any]:
    try:
        loader = _Loader(text)  # the reader checks every character here
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        raise DocumentError(f"not valid YAML: line {line}: character #x{exc.character:04x} is not allowed") from None
    out: list[Any] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            _measure(node, 0, {}, set())
            doc = loader.construct_document(node)
            if doc is not None:
                out.append(doc)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise DocumentError(f"not valid YAML: {where}{exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise DocumentError("not valid YAML: " + " ".join(str(exc).split())) from None
    except RecursionError:
        raise DocumentError(f"nested more than {MAX_DEPTH} levels deep") from None
    except DocumentError:
        raise  # ours, already one line
    except (ValueError, TypeError, OverflowError) as exc:  # a scalar its tag cannot hold: 2026-13-45
        raise DocumentError(f"not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    return out


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads' object_pairs_hook that refuses a key given twice (json keeps the last one silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DocumentError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _constant(name: str) -> float:
    raise DocumentError(f"{name} is not a JSON number")


def _json_document(text: str) -> list[Any]:
    try:
        doc = json.loads(text, object_pairs_hook=no_duplicate_keys, parse_constant=_constant)
        for _ in scalars(doc, MAX_DEPTH):
            pass
    except DocumentError:
        raise  # a duplicate key or a NaN, from the hooks
    except json.JSONDecodeError as exc:
        raise DocumentError(f"not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except (RecursionError, ValueError):  # json's own recursion limit, or scalars' depth
        raise DocumentError(f"nested more than {MAX_DEPTH} levels deep") from None
    return [doc]


def parse_documents(data: bytes, json_file: bool = False) -> list[Any]:
    """The non-empty documents of a manifest file's bytes (YAML, or JSON when `json_file`)."""
    text = decode(data)
    return _json_document(text) if json_file else _yaml_documents(text)


def read_documents(path: str | Path) -> list[Any]:
    """The non-empty documents of the file at `path`; `.json` files are read as JSON. Raises OSError for a
    file that cannot be opened, DocumentError for one that is not a manifest file."""
    with open(path, "rb") as fh:
        data = fh.read(MAX_FILE_BYTES + 1)
    return parse_documents(data, json_file=str(path).endswith(".json"))
