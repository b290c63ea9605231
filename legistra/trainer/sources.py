"""Readers: a data location in any supported format -> chunks of rows, each as Arrow and, on demand, one by one.

The Arrow view is what the vectorised check converts; the row view, numbered as the user counts rows (jsonl lines,
CSV records after the header, 1-based rows otherwise), is what the row-by-row check reports against. A chunk whose
Arrow view cannot be built (a line that is not JSON, a column of mixed types) has only the row view.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from legistra.api.loader import bom_encoding

Row = dict[str, Any]
Numbered = Iterator[tuple[int, "Row | Exception"]]

CHUNK_BYTES = 16 << 20  # text read per chunk: large enough for Arrow's parsers, small enough to bound memory
CHUNK_ROWS = 65_536  # rows per chunk from Arrow-native sources
SAVED_MARKERS = ("dataset_dict.json", "state.json")  # what `save_to_disk` leaves in a DatasetDict / Dataset folder


class RowProblem(ValueError):
    """A line or record that is not a row at all; `data` turns it into a located DataError."""


@dataclass
class Chunk:
    table: pa.Table | None  # the rows as Arrow, when the reader could parse them so
    rows: Callable[[], Numbered]  # the same rows one by one, numbered
    size: int  # bytes (text formats) or rows consumed, for progress


def _table_rows(table: pa.Table, first: int, fix: Callable[[Row], Row] | None) -> Numbered:
    for i, row in enumerate(table.to_pylist(), start=first):
        yield i, fix(row) if fix else row


def saved_kind(folder: Path) -> str | None:
    """'dict' for a saved DatasetDict, 'dataset' for a saved Dataset, None for anything else."""
    if (folder / "dataset_dict.json").is_file():
        return "dict"
    if (folder / "state.json").is_file():
        return "dataset"
    return None


def _jsonl_rows(chunk: bytes, first_line: int) -> Numbered:
    for i, raw in enumerate(chunk.split(b"\n"), start=first_line):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield i, RowProblem("not valid UTF-8")
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield i, RowProblem(f"not valid JSON ({exc.msg})")
            continue
        if not isinstance(obj, dict):
            yield i, RowProblem("each line must be a JSON object")
            continue
        yield i, obj


def jsonl_chunks(path: Path) -> Iterator[Chunk]:
    import pyarrow.json as paj

    line = 1
    with path.open("rb") as fh:
        rest = b""
        while True:
            buf = fh.read(CHUNK_BYTES)
            data = rest + buf
            if not data:
                return
            cut = data.rfind(b"\n") + 1 if buf else len(data)
            if cut == 0:  # one line longer than a chunk: read on
                rest = data
                continue
            chunk, rest = data[:cut], data[cut:]
            try:
                table: pa.Table | None = paj.read_json(
                    pa.py_buffer(chunk), read_options=paj.ReadOptions(block_size=len(chunk) + 1)
                )
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                table = None  # a bad line or mixed types: the row view tells which
            yield Chunk(table, partial(_jsonl_rows, chunk, line), len(chunk))
            line += chunk.count(b"\n")


def _json_cells(row: Row) -> Row:
    # Lists (multi-label, spans) are stored as JSON inside a cell.
    for key, value in row.items():
        if isinstance(value, str) and value[:1] in "[{":
            try:
                row[key] = json.loads(value)
            except json.JSONDecodeError:
                pass
    return row


def encoding_problem(path: Path, scan: bool = True) -> str | None:
    """Why the text file at `path` is not UTF-8, naming what to convert from (and the line); None when it is.
    `scan`: read the whole file in chunks with an incremental decoder (a character may span two chunks); else
    only its byte-order mark."""
    import codecs

    with path.open("rb") as fh:
        name = bom_encoding(fh.read(4))
        if name:
            return f"the file is {name}; convert it to UTF-8 first (iconv -f {name} -t UTF-8)"
        if not scan:
            return None
        fh.seek(0)
        decoder = codecs.getincrementaldecoder("utf-8")()
        line = 1
        while True:
            block = fh.read(CHUNK_BYTES)
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                at = line + block[: exc.start].count(b"\n")
                return (f"line {at}: byte 0x{block[exc.start]:02x} is not UTF-8; the file looks like latin-1 or "
                        "cp1252: convert it to UTF-8 first (iconv -f latin1 -t UTF-8)")
            if not block:
                return None
            line += block.count(b"\n")


class EncodingProblem(ValueError):
    """A text file that is not UTF-8: one message for the whole file, not one per row."""


def csv_chunks(path: Path) -> Iterator[Chunk]:
    """Every cell is read as text (as a spreadsheet holds it); record numbers count the header as row 1."""
    import pyarrow.csv as pacsv

    with path.open(encoding="utf-8", newline="") as fh:
        header = next(csv.reader(fh), [])
    try:
        reader = pacsv.open_csv(
            str(path),
            read_options=pacsv.ReadOptions(block_size=CHUNK_BYTES),
            convert_options=pacsv.ConvertOptions(column_types={name: pa.string() for name in header},
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
        first = 2
        for batch in reader:
            table = pa.Table.from_batches([batch])
            # Cells holding JSON lists make the column a mixture only Python holds: those chunks go row by row.
            jsonish = any(
                pc.any(pc.starts_with(col, "[")).as_py() or pc.any(pc.starts_with(col, "{")).as_py()
                for col in table.columns
            )
            yield Chunk(None if jsonish else table, partial(_table_rows, table, first, _json_cells), table.nbytes)
            first += table.num_rows
    except pa.ArrowInvalid:
        # A ragged record (more cells than the header): Python's csv module reads on and the check names it.
        yield from _csv_python_chunks(path)


def _csv_python_chunks(path: Path) -> Iterator[Chunk]:
    with path.open(encoding="utf-8", newline="") as fh:
        records = enumerate(csv.DictReader(fh), start=2)
        while True:
            block = [(i, _json_cells(dict(rec))) for i, rec in (next(records, (0, None)) for _ in range(CHUNK_ROWS))
                     if rec is not None]
            if not block:
                return
            yield Chunk(None, partial(iter, block), len(block))


def parquet_file(path: Path) -> Any:
    """The parquet file at `path`; EncodingProblem's sibling for a file that is not parquet at all."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise EncodingProblem(f"not a readable parquet file ({str(exc).splitlines()[0]})") from None


def parquet_chunks(path: Path) -> Iterator[Chunk]:
    first = 1
    for batch in parquet_file(path).iter_batches(batch_size=CHUNK_ROWS):
        table = pa.Table.from_batches([batch])
        yield Chunk(table, partial(_table_rows, table, first, None), table.num_rows)
        first += table.num_rows


def rows_chunks(rows: list[tuple[int, Row | Exception]]) -> Iterator[Chunk]:
    """Rows built in Python (CUAD's nested JSON) as one chunk without an Arrow view."""
    yield Chunk(None, partial(iter, rows), len(rows))


def _decode_class_labels(table: pa.Table, features: Any) -> pa.Table:
    """ClassLabel columns (ints with names) become their names: a label is what the data calls it."""
    import datasets

    for name, feature in (features or {}).items():
        if name not in table.column_names:
            continue
        inner = getattr(feature, "feature", None)
        if isinstance(feature, datasets.ClassLabel):
            names = pa.array(feature.names)
            col = table.column(name)
            if pc.min(col).as_py() is None or pc.min(col).as_py() < 0:
                continue  # -1 marks a missing label; the check reports the row
            table = table.set_column(table.column_names.index(name), name, pc.take(names, col))
        elif isinstance(inner, datasets.ClassLabel) or (isinstance(feature, list) and feature
                                                         and isinstance(feature[0], datasets.ClassLabel)):
            label_feature = inner if inner is not None else feature[0]
            col = table.column(name).combine_chunks()
            values = pc.take(pa.array(label_feature.names), pc.list_flatten(col))
            offsets = pc.subtract(col.offsets, col.offsets[0])  # a slice's offsets need not start at 0
            decoded = pa.ListArray.from_arrays(offsets, values)
            table = table.set_column(table.column_names.index(name), name, decoded)
    return table


def dataset_chunks(dataset: Any) -> Iterator[Chunk]:
    """A `datasets.Dataset` (saved, from the hub, or in memory) in Arrow batches."""
    first = 1
    features = dataset.features
    for table in dataset.with_format("arrow").iter(batch_size=CHUNK_ROWS):
        table = _decode_class_labels(table, features)
        yield Chunk(table, partial(_table_rows, table, first, None), table.num_rows)
        first += table.num_rows
