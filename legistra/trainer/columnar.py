"""Rows as Arrow: each task's canonical columns, the vectorised check that passes a whole batch, and Arrow files.

A batch either passes the vectorised check as a whole and is converted with Arrow compute, or it goes to the
row-by-row check (`data.check_row`), which names every bad row. The messages therefore have one source, and the
fast path only has to be at least as strict as the slow one: tests/test_data.py feeds both the same rows.
Clause spans are always checked row by row: CUAD-style data is a few hundred long documents, not millions of rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from legistra.api.spec import FieldNames, Task

SPAN = pa.struct([("start", pa.int64()), ("end", pa.int64()), ("label", pa.string())])


@dataclass(frozen=True)
class Canon:
    """What the canonical rows of one run look like: the task, the user's column names, single or multi-label."""

    task: Task
    fields: FieldNames
    multi_label: bool = False

    def schema(self) -> pa.Schema:
        if self.task == "summarization":
            return pa.schema([("text", pa.string()), ("summary", pa.string())])
        if self.task == "risk-classification":
            label = pa.list_(pa.string()) if self.multi_label else pa.string()
            return pa.schema([("text", pa.string()), ("label", label)])
        return pa.schema([("id", pa.string()), ("text", pa.string()), ("spans", pa.list_(SPAN))])

    def key(self) -> dict[str, Any]:
        return {"task": self.task, "fields": self.fields.wire(), "multiLabel": self.multi_label}


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_int(t: pa.DataType) -> bool:
    return pa.types.is_integer(t)


def _all_nonempty(col: pa.ChunkedArray | pa.Array) -> bool:
    """Every string has at least one character (an empty column passes)."""
    return bool(pc.all(pc.greater(pc.utf8_length(col), 0)).as_py() in (True, None))


def _nonblank(col: pa.ChunkedArray | pa.Array) -> bool:
    """Every value present and holding more than whitespace."""
    return _is_text(col.type) and not col.null_count and _all_nonempty(pc.utf8_trim_whitespace(col))


def _as_strings(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return pc.cast(arr, pa.string())


def _label(col: pa.ChunkedArray | pa.Array, multi_label: bool) -> pa.Array | None:
    t = col.type
    if col.null_count or pa.types.is_boolean(t):
        return None
    if _is_text(t) or _is_int(t):
        if _is_text(t) and not _all_nonempty(col):
            return None  # an empty label is a missing one
        values = _as_strings(col)
        if not multi_label:
            return values
        return pa.ListArray.from_arrays(pa.array(np.arange(len(values) + 1, dtype=np.int32)), values)
    if multi_label and (pa.types.is_list(t) or pa.types.is_large_list(t)):
        inner = t.value_type
        arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        flat = pc.list_flatten(arr)
        if flat.null_count or pa.types.is_boolean(inner) or not (_is_text(inner) or _is_int(inner)):
            return None
        return pc.cast(arr, pa.list_(pa.string()))
    return None  # lists without multiLabel, floats, structs: the row-by-row check says what is wrong


def canonical(table: pa.Table, canon: Canon) -> pa.Table | None:
    """`table` in canonical columns when every row passes; None when some row needs the row-by-row check."""
    try:
        out = _canonical(table, canon)
        if out is not None:
            out.validate(full=True)  # Arrow's JSON reader keeps invalid UTF-8; the tokenizer would not
        return out
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None  # bytes Arrow parsed but cannot compute on (invalid UTF-8): the row check says which row


def _canonical(table: pa.Table, canon: Canon) -> pa.Table | None:
    f = canon.fields
    if canon.task == "clause-extraction" or f.text not in table.column_names:
        return None
    text = table.column(f.text)
    if not _nonblank(text):
        return None
    columns: list[pa.Array] = [_as_strings(text)]
    if canon.task == "summarization":
        if f.summary not in table.column_names or not _nonblank(table.column(f.summary)):
            return None
        columns.append(_as_strings(table.column(f.summary)))
    else:
        if f.label not in table.column_names:
            return None
        label = _label(table.column(f.label), canon.multi_label)
        if label is None:
            return None
        columns.append(label)
    return pa.Table.from_arrays(columns, schema=canon.schema())


def from_rows(rows: list[dict[str, Any]], canon: Canon) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=canon.schema())


# Arrow files: the IPC stream format, which `datasets.Dataset.from_file` memory-maps.


def write_arrow(path: Path, schema: pa.Schema | None, tables: Iterable[pa.Table]) -> int:
    """Write `tables` to `path` atomically (a temporary name, then a rename); returns the rows written.
    Without a schema, the first table's is the file's."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    rows = 0
    writer: Any = None
    try:
        with pa.OSFile(str(tmp), "wb") as sink:
            for table in tables:
                if writer is None:
                    schema = schema or table.schema
                    writer = pa.ipc.new_stream(sink, schema)
                if table.num_rows:
                    writer.write_table(table.cast(schema) if table.schema != schema else table, max_chunksize=10_000)
                    rows += table.num_rows
            if writer is None and schema is not None:
                writer = pa.ipc.new_stream(sink, schema)
            if writer is not None:
                writer.close()
    except BaseException:
        tmp.unlink(missing_ok=True)  # a bad row or a kill mid-write leaves no half file behind
        raise
    os.replace(tmp, path)
    return rows


# Tokenized columns: narrow integer types (token ids fit int32; masks are bits) keep the files a third the size.
FEATURE_TYPES = {
    "input_ids": pa.list_(pa.int32()),
    "attention_mask": pa.list_(pa.int8()),
    "length": pa.int32(),
    "doc_index": pa.int32(),
    "offsets": pa.list_(pa.list_(pa.int32())),
}


def features_table(columns: dict[str, list[Any]]) -> pa.Table:
    """A batch of model inputs as Arrow; an attention mask of ones is added when the encoder left it out
    (unpadded sequences attend to every token; the collator pads it with the ids)."""
    arrays = {name: pa.array(values, type=FEATURE_TYPES.get(name)) for name, values in columns.items()}
    if "attention_mask" not in arrays:
        ids = arrays["input_ids"]
        ones = pa.array(np.ones(len(ids.values), dtype=np.int8))
        arrays["attention_mask"] = pa.ListArray.from_arrays(ids.offsets, ones)
    return pa.table(arrays)


def read_arrow(path: Path, batch_rows: int | None = None) -> Iterator[pa.Table]:
    """The file's record batches read into memory one at a time (not memory-mapped: a pass over a large file
    keeps only the current batch resident)."""
    with pa.OSFile(str(path), "rb") as source:
        reader = pa.ipc.open_stream(source)
        for batch in reader:
            table = pa.Table.from_batches([batch])
            if batch_rows is None:
                yield table
            else:
                for start in range(0, table.num_rows, batch_rows):
                    yield table.slice(start, batch_rows)


def open_dataset(path: Path) -> Any:
    """A `datasets.Dataset` memory-mapped from an Arrow file: ranks of a node share the pages, none copies them."""
    import datasets

    return datasets.Dataset.from_file(str(path))


def first_outside(values: pa.Array, names: list[str]) -> int:
    """Index of the first value that is not one of `names`, or -1."""
    return int(pc.index(pc.invert(pc.is_in(values, value_set=pa.array(names, pa.string()))), True).as_py())


def table_of(dataset: Any) -> pa.Table:
    """The rows of a `datasets.Dataset` as one Arrow table (zero-copy for a memory-mapped, unshuffled dataset)."""
    return dataset.with_format("arrow")[:]
