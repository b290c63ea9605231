"""Reading training data: jsonl / csv / parquet / CUAD JSON, from a path, s3:// or a hub dataset id.

Rows are checked against the task before anything is tokenized, so a bad row is reported with its file,
row number and field instead of surfacing as a shape error deep inside a collator.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from legistra import s3
from legistra.api.spec import DataSpec, Task
from legistra.registry.registry import sha256_file

Row = dict[str, Any]


class DataError(ValueError):
    """A problem in a data file, located by file, 1-based row number and field."""

    def __init__(self, file: str, row: int | None, field: str | None, message: str) -> None:
        self.file, self.row, self.field = file, row, field
        where = file + (f", row {row}" if row is not None else "") + (f", field '{field}'" if field else "")
        super().__init__(f"{where}: {message}")


class DataProblems(DataError):
    """Every bad row found (up to MAX_REPORTED), reported at once rather than one per attempt."""

    def __init__(self, problems: list[DataError], more: bool = False) -> None:
        self.problems = problems
        first = problems[0]
        self.file, self.row, self.field = first.file, first.row, first.field
        lines = [str(p) for p in problems] + (["... and more (only the first bad rows are listed)"] if more else [])
        ValueError.__init__(self, f"{len(problems)}{'+' if more else ''} bad row(s):\n  " + "\n  ".join(lines))


MAX_REPORTED = 20  # bad rows listed before giving up
PREFLIGHT_ROWS = 10_000  # rows checked before a GPU is spent (all of a smaller file)


@dataclass(frozen=True)
class LoadedData:
    train: list[Row]
    validation: list[Row]
    fingerprint: str  # changes whenever the bytes of any input change
    sources: dict[str, str]  # role -> location with checksum, for the registry manifest


def _detect_format(location: str, declared: str) -> str:
    if declared != "auto":
        return declared
    name = location.lower().split("?", 1)[0]
    for ext, fmt in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".csv", "csv"), (".parquet", "parquet")):
        if name.endswith(ext):
            return fmt
    if name.endswith(".json"):
        return "cuad"
    raise DataError(location, None, None, "cannot tell the format from the extension; set spec.data.format")


def _is_local(location: str) -> bool:
    return location.startswith(("/", "./", "../", "file://")) or Path(location).exists()


def fetch(location: str, cache_dir: Path) -> Path:
    """A local path for `location`, downloading s3:// objects once into the cache (keyed by ETag)."""
    if location.startswith("file://"):
        return Path(location[len("file://") :])
    if not s3.is_s3(location):
        return Path(location)
    bucket, key = s3.parse_s3_uri(location)
    s3c = s3.client()
    try:
        head = s3c.head_object(Bucket=bucket, Key=key)
    except Exception as exc:  # boto raises a family of ClientErrors; report them all the same way
        raise DataError(location, None, None, f"cannot read S3 object: {exc}") from None
    etag = str(head["ETag"]).strip('"')
    target = cache_dir / "s3" / bucket / f"{etag}-{Path(key).name}"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".part")
        s3c.download_file(bucket, key, str(tmp))
        os.replace(tmp, target)
    return target


def _read_jsonl(path: Path, label: str) -> Iterator[tuple[int, Row | DataError]]:
    """Rows, or the DataError of a line that is not a row (the reader goes on past it)."""
    with path.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield i, DataError(label, i, None, f"not valid JSON ({exc.msg})")
                continue
            if not isinstance(obj, dict):
                yield i, DataError(label, i, None, "each line must be a JSON object")
                continue
            yield i, obj


def _read_csv(path: Path, label: str) -> Iterator[tuple[int, Row | DataError]]:
    with path.open(encoding="utf-8", newline="") as fh:
        # Row numbers count the header as row 1, as spreadsheets do.
        for i, rec in enumerate(csv.DictReader(fh), start=2):
            row: Row = dict(rec)
            for key, value in row.items():
                # Lists (multi-label, spans) are stored as JSON inside a cell.
                if isinstance(value, str) and value[:1] in "[{":
                    try:
                        row[key] = json.loads(value)
                    except json.JSONDecodeError:
                        pass
            yield i, row


def _read_parquet(path: Path, label: str) -> Iterator[tuple[int, Row | DataError]]:
    import pyarrow.parquet as pq

    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):  # a preflight stops after its rows
        for row in batch.to_pylist():
            n += 1
            yield n, row


def cuad_to_rows(doc: Any, label: str) -> list[Row]:
    """CUAD v1 (SQuAD 2.0 layout) -> one row per contract with character spans per clause type."""
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(label, None, "data", "CUAD JSON must have a top-level 'data' list")
    rows: list[Row] = []
    for di, entry in enumerate(doc["data"], start=1):
        for paragraph in entry.get("paragraphs", []):
            context = paragraph.get("context")
            if not isinstance(context, str):
                raise DataError(label, di, "context", "missing contract text")
            spans = []
            for qa in paragraph.get("qas", []):
                qid = str(qa.get("id", ""))
                clause = qid.split("__", 1)[1] if "__" in qid else str(qa.get("question", ""))
                for ans in qa.get("answers", []):
                    start = int(ans["answer_start"])
                    spans.append({"start": start, "end": start + len(ans["text"]), "label": clause})
            rows.append({"id": entry.get("title", f"doc-{di}"), "text": context, "spans": spans})
    return rows


def iter_rows(path: Path, fmt: str, label: str) -> Iterator[tuple[int, Row | DataError]]:
    if fmt == "jsonl":
        return _read_jsonl(path, label)
    if fmt == "csv":
        return _read_csv(path, label)
    if fmt == "parquet":
        return _read_parquet(path, label)
    if fmt == "cuad":
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(label, None, None, f"not valid JSON ({exc.msg})") from None
        return iter(list(enumerate(cuad_to_rows(doc, label), start=1)))
    raise DataError(label, None, None, f"unsupported format {fmt!r}")


def checked_rows(task: Task, rows: Iterator[tuple[int, Row | DataError]], spec: DataSpec, label: str,
                 limit: int | None = None) -> list[Row]:
    """Canonical rows; every bad one (up to MAX_REPORTED) is collected and raised together as DataProblems."""
    good: list[Row] = []
    bad: list[DataError] = []
    for n, (line, row) in enumerate(rows, start=1):
        if limit is not None and n > limit:
            break
        try:
            if isinstance(row, DataError):
                raise row
            good.append(check_row(task, row, spec, label, line))
        except DataError as exc:
            if len(bad) == MAX_REPORTED:
                raise DataProblems(bad, more=True) from None
            bad.append(exc)
    if len(bad) == 1:
        raise bad[0]
    if bad:
        raise DataProblems(bad)
    return good


def check_row(task: Task, row: Row, spec: DataSpec, label: str, line: int) -> Row:
    """Validate one row for `task` and return it in canonical field names."""
    f = spec.fields
    text = row.get(f.text)
    if not isinstance(text, str) or not text.strip():
        raise DataError(label, line, f.text, "missing or empty text")
    if task == "risk-classification":
        value = row.get(f.label)
        if isinstance(value, bool) or value is None or value == "":
            raise DataError(label, line, f.label, "missing label")
        if isinstance(value, list):
            if not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
                raise DataError(label, line, f.label, "multi-label lists must hold strings or integers")
            return {"text": text, "label": [str(v) for v in value]}
        if not isinstance(value, (str, int)):
            raise DataError(label, line, f.label, f"label must be a string or integer, got {type(value).__name__}")
        return {"text": text, "label": str(value)}
    if task == "summarization":
        summary = row.get(f.summary)
        if not isinstance(summary, str) or not summary.strip():
            raise DataError(label, line, f.summary, "missing or empty summary")
        return {"text": text, "summary": summary}
    spans = row.get(f.spans)
    if spans is None:
        spans = []
    if not isinstance(spans, list):
        raise DataError(label, line, f.spans, "must be a list of {start, end, label}")
    clean = []
    for j, sp in enumerate(spans):
        where = f"{f.spans}[{j}]"
        if not isinstance(sp, dict) or not {"start", "end", "label"} <= sp.keys():
            raise DataError(label, line, where, "each span needs start, end and label")
        start, end = sp["start"], sp["end"]
        if not isinstance(start, int) or not isinstance(end, int) or not 0 <= start < end <= len(text):
            raise DataError(label, line, where, f"span [{start}, {end}) is outside the text (length {len(text)})")
        clean.append({"start": start, "end": end, "label": str(sp["label"])})
    return {"id": str(row.get("id", line)), "text": text, "spans": clean}


def _load_location(task: Task, location: str, spec: DataSpec, cache_dir: Path,
                   limit: int | None = None) -> tuple[list[Row], str]:
    if location.startswith("hf://") or not (s3.is_s3(location) or _is_local(location)):
        return _load_hub(task, location, spec, limit)
    path = fetch(location, cache_dir)
    if not path.exists():
        raise DataError(location, None, None, "file not found")
    fmt = _detect_format(location, spec.format)
    rows = checked_rows(task, iter_rows(path, fmt, location), spec, location, limit)
    if not rows:
        raise DataError(location, None, None, "no rows")
    return rows, f"{location}#sha256={sha256_file(path)}"


def _load_hub(task: Task, location: str, spec: DataSpec, limit: int | None = None) -> tuple[list[Row], str]:
    """A hub dataset id, optionally `id:split` (default split train)."""
    import datasets

    ident = location.removeprefix("hf://")
    name, _, split = ident.partition(":")
    ds = datasets.load_dataset(name, split=split or "train")
    rows = checked_rows(task, ((i, dict(r)) for i, r in enumerate(ds, start=1)), spec, location, limit)
    return rows, f"{location}#fingerprint={ds._fingerprint}"


def preflight(task: Task, spec: DataSpec, cache_dir: Path, limit: int = PREFLIGHT_ROWS) -> dict[str, int]:
    """Check the first `limit` rows of each data location (all of a smaller file) before any process group or
    GPU is started; raises DataError/DataProblems naming every bad row. Returns rows checked per role."""
    checked = {"train": len(_load_location(task, spec.train, spec, cache_dir, limit)[0])}
    if spec.validation:
        checked["validation"] = len(_load_location(task, spec.validation, spec, cache_dir, limit)[0])
    return checked


def load_data(task: Task, spec: DataSpec, cache_dir: Path, seed: int) -> LoadedData:
    train, train_src = _load_location(task, spec.train, spec, cache_dir)
    sources = {"train": train_src}
    if spec.validation:
        validation, val_src = _load_location(task, spec.validation, spec, cache_dir)
        sources["validation"] = val_src
    else:
        train, validation = split_holdout(train, spec.validation_split, seed)
        sources["validation"] = f"{spec.validation_split:g} of train (seed {seed})"
    if spec.max_samples is not None:
        train = train[: spec.max_samples]
    fp = hashlib.sha256(json.dumps([sources, spec.max_samples], sort_keys=True).encode()).hexdigest()[:16]
    return LoadedData(train, validation, fp, sources)


def split_holdout(rows: list[Row], fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    import random

    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(rows) * fraction))
    held = set(order[:n_val])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]
