"""Reading training data: jsonl / csv / parquet / CUAD JSON / saved `datasets` folders, from a path, s3:// or a
hub dataset id, into memory-mapped Arrow files in the run's cache.

Rows are checked against the task before anything is tokenized, so a bad row is reported with its file,
row number and field instead of surfacing as a shape error deep inside a collator. Each location is read once
per node: the first rank to take the location's lock converts it to canonical Arrow rows, the other ranks wait
and then map the same file, so no rank holds a Python copy of the data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from legistra import s3
from legistra.api.spec import DataSpec, TrainingRunSpec
from legistra.registry.registry import sha256_file
from legistra.trainer import sources
from legistra.trainer.columnar import (
    Canon,
    canonical,
    first_outside,
    from_rows,
    open_dataset,
    read_arrow,
    write_arrow,
)
from legistra.trainer.sources import Chunk

log = logging.getLogger(__name__)

Row = dict[str, Any]
CACHE_VERSION = "1"  # bump when the canonical files change shape
EXTENSIONS = ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".csv", "csv"), (".parquet", "parquet"), (".json", "cuad"))


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
    train: Any  # datasets.Dataset of canonical rows (memory-mapped)
    validation: Any
    fingerprint: str  # changes whenever the bytes of any input change
    sources: dict[str, str]  # role -> location with checksum, for the registry manifest
    files: dict[str, tuple[Path, int]]  # role -> (Arrow file, rows used from its start), for streaming passes

    def batches(self, role: str, rows: int) -> Iterator[pa.Table]:
        """The rows of `role` in batches read from its file, not through the memory map: a pass over them
        (tokenization) keeps one batch resident instead of leaving every page it touched mapped."""
        path, total = self.files[role]
        left = total
        for table in read_arrow(path, rows):
            if left <= 0:
                return
            yield table.slice(0, left)
            left -= table.num_rows


def canon_of(spec: TrainingRunSpec) -> Canon:
    return Canon(spec.task, spec.data.fields, spec.task == "risk-classification" and spec.classification.multi_label)


# Checking one row: the reference the vectorised check (columnar.canonical) is held to.


def check_row(canon: Canon, row: Row, label: str, line: int) -> Row:
    """Validate one row for the task and return it in canonical field names."""
    f = canon.fields
    text = row.get(f.text)
    if not isinstance(text, str) or not text.strip():
        raise DataError(label, line, f.text, "missing or empty text")
    if canon.task == "risk-classification":
        value = row.get(f.label)
        if isinstance(value, bool) or value is None or value == "":
            raise DataError(label, line, f.label, "missing label")
        if isinstance(value, list):
            if not canon.multi_label:
                raise DataError(label, line, f.label, "lists of labels need spec.classification.multiLabel")
            if not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
                raise DataError(label, line, f.label, "multi-label lists must hold strings or integers")
            return {"text": text, "label": [str(v) for v in value]}
        if not isinstance(value, (str, int)):
            raise DataError(label, line, f.label, f"label must be a string or integer, got {type(value).__name__}")
        return {"text": text, "label": [str(value)] if canon.multi_label else str(value)}
    if canon.task == "summarization":
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


def canonical_tables(chunks: Iterator[Chunk], canon: Canon, label: str, limit: int | None = None,
                     progress: Any = None) -> Iterator[pa.Table]:
    """Canonical Arrow tables of every chunk. A chunk that passes the vectorised check is converted whole; any
    other is checked row by row. Every bad row (up to MAX_REPORTED) is raised together, after the scan."""
    bad: list[DataError] = []
    seen = 0
    for chunk in chunks:
        if limit is not None and seen >= limit:
            break
        table = chunk.table
        if table is not None and limit is not None and seen + table.num_rows > limit:
            table = table.slice(0, limit - seen)
        fast = canonical(table, canon) if table is not None else None
        if fast is not None:
            seen += fast.num_rows
            if not bad:
                yield fast
        else:
            good: list[Row] = []
            for line, row in chunk.rows():
                if limit is not None and seen >= limit:
                    break
                seen += 1
                try:
                    if isinstance(row, Exception):
                        raise DataError(label, line, None, str(row))
                    good.append(check_row(canon, row, label, line))
                except DataError as exc:
                    if len(bad) == MAX_REPORTED:
                        raise DataProblems(bad, more=True) from None
                    bad.append(exc)
            if good and not bad:
                yield from_rows(good, canon)
        if progress is not None:
            progress.update(chunk.size)
    if len(bad) == 1:
        raise bad[0]
    if bad:
        raise DataProblems(bad)


# Locations: where the bytes are, and what they are.


@dataclass(frozen=True)
class Source:
    location: str  # as the spec wrote it
    fmt: str  # jsonl | csv | parquet | cuad | saved-dataset | hub
    path: Path | None  # the local file or folder (None for a hub id)
    identity: str  # changes whenever the bytes change

    def digest(self) -> str:
        """The manifest's checksum: of the file, or of every file of a saved dataset folder."""
        assert self.path is not None
        if self.path.is_file():
            return "sha256=" + sha256_file(self.path)
        h = hashlib.sha256()
        for f in _files(self.path):
            h.update(f"{f.relative_to(self.path)}\0{sha256_file(f)}\n".encode())
        return "sha256=" + h.hexdigest()


def _files(path: Path) -> list[Path]:
    """The file itself, or every file under a folder, in a stable order."""
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def _is_hub(location: str) -> bool:
    """A hub dataset id (`hf://ID`, or anything that is neither s3:// nor a local path)."""
    return location.startswith("hf://") or not (s3.is_s3(location) or _is_local(location))


def _is_local(location: str) -> bool:
    return location.startswith(("/", "./", "../", "file://")) or Path(location).exists()


def _by_extension(location: str) -> str | None:
    name = location.lower().split("?", 1)[0]
    return next((fmt for ext, fmt in EXTENSIONS if name.endswith(ext)), None)


def _stat_identity(path: Path) -> str:
    parts = [f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in _files(path)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


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


def fetch_prefix(location: str, cache_dir: Path) -> Path | None:
    """A saved dataset under an s3:// prefix, downloaded once into the cache (keyed by the objects' ETags);
    None when the prefix holds no saved dataset."""
    bucket, prefix = s3.parse_s3_uri(location)
    prefix = prefix.rstrip("/") + "/"
    s3c = s3.client()
    objects: list[tuple[str, str]] = []
    try:
        for page in s3c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            objects += [(o["Key"], str(o["ETag"]).strip('"')) for o in page.get("Contents", [])]
    except Exception as exc:  # as above
        raise DataError(location, None, None, f"cannot list S3 prefix: {exc}") from None
    names = {key[len(prefix):] for key, _ in objects}
    if not names & set(sources.SAVED_MARKERS):
        return None
    digest = hashlib.sha256(json.dumps(sorted(objects)).encode()).hexdigest()[:20]
    target = cache_dir / "s3" / bucket / f"{digest}-{Path(prefix.rstrip('/')).name}"
    if not target.exists():
        tmp = target.with_name(f"{target.name}.part-{os.getpid()}")
        for key, _ in objects:
            dest = tmp / key[len(prefix):]
            dest.parent.mkdir(parents=True, exist_ok=True)
            s3c.download_file(bucket, key, str(dest))
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished the same download first
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve(location: str, declared: str, cache_dir: Path) -> Source:
    """Where `location`'s bytes are locally (downloading them once) and which format they are in."""
    if _is_hub(location):
        return Source(location, "hub", None, location)
    fmt = declared if declared != "auto" else _by_extension(location)
    if s3.is_s3(location) and fmt in (None, "saved-dataset"):
        folder = fetch_prefix(location, cache_dir)
        if folder is None:
            raise DataError(location, None, None, "cannot tell the format: no known file extension and no saved "
                            "dataset (dataset_dict.json or state.json) under this prefix; set spec.data.format")
        return Source(location, "saved-dataset", folder, _stat_identity(folder))
    path = fetch(location, cache_dir)
    if not path.exists():
        raise DataError(location, None, None, "file not found")
    if path.is_dir():
        if sources.saved_kind(path) is None:
            raise DataError(location, None, None, "a folder, but not one written by save_to_disk (no "
                            "dataset_dict.json or state.json); point at a file or a saved dataset")
        return Source(location, "saved-dataset", path, _stat_identity(path))
    if fmt == "saved-dataset":
        raise DataError(location, None, None, "spec.data.format is saved-dataset, but this is a file; point at "
                        "the folder that save_to_disk wrote")
    if fmt is None:
        raise DataError(location, None, None, "cannot tell the format from the extension; set spec.data.format")
    return Source(location, fmt, path, _stat_identity(path))


def _split_of(source: Source, role: str, data: DataSpec) -> tuple[Any, str] | None:
    """The saved or hub dataset for `role` and its label in messages; None when a DatasetDict lacks that split."""
    import datasets

    if source.fmt == "hub":
        name, _, split = source.location.removeprefix("hf://").partition(":")
        return datasets.load_dataset(name, split=split or "train"), source.location
    assert source.path is not None
    loaded = datasets.load_from_disk(str(source.path))
    if not isinstance(loaded, datasets.DatasetDict):
        if role == "validation" and data.validation is None:
            return None  # a single saved Dataset is the training data: hold validation out of it
        return loaded, source.location
    split = data.splits.train if role == "train" else data.splits.validation
    if split not in loaded:
        if role == "validation" and data.validation is None:
            return None  # the training DatasetDict has no validation split: hold one out
        raise DataError(source.location, None, f"splits.{role}",
                        f"the saved DatasetDict has no split {split!r} (it has {sorted(loaded)}); "
                        f"set spec.data.splits.{role}")
    return loaded[split], f"{source.location}[{split}]"


def _chunks(source: Source, role: str, data: DataSpec) -> tuple[Iterator[Chunk], str, int, str] | None:
    """The chunks of `role`'s rows, their label in messages, their size (bytes or rows, for progress) and an
    identity of the part read (a split of a DatasetDict). None: a DatasetDict without the validation split."""
    if source.fmt in ("hub", "saved-dataset"):
        found = _split_of(source, role, data)
        if found is None:
            return None
        dataset, label = found
        fingerprint = getattr(dataset, "_fingerprint", "") if source.fmt == "hub" else label
        return sources.dataset_chunks(dataset), label, len(dataset), fingerprint
    assert source.path is not None
    try:
        return _file_chunks(source, source.path)
    except sources.EncodingProblem as exc:
        raise DataError(source.location, None, None, str(exc)) from None


def _file_chunks(source: Source, path: Path) -> tuple[Iterator[Chunk], str, int, str]:
    size = path.stat().st_size
    if source.fmt in ("jsonl", "csv"):
        # One line for the file, before any row is read: Arrow's and Python's CSV readers each fail on a non-UTF-8
        # file in their own way (so a CSV is scanned whole), and a UTF-16 jsonl file would fail on every line, one
        # report per row (its mark says so; a jsonl file with a few latin-1 lines keeps its per-row reports).
        problem = sources.encoding_problem(path, scan=source.fmt == "csv")
        if problem:
            raise sources.EncodingProblem(problem)
    if source.fmt == "jsonl":
        return sources.jsonl_chunks(path), source.location, size, ""
    if source.fmt == "csv":
        return sources.csv_chunks(path), source.location, size, ""
    if source.fmt == "parquet":
        rows_total = sources.parquet_file(path).metadata.num_rows
        return sources.parquet_chunks(path), source.location, rows_total, ""
    if source.fmt == "cuad":
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:  # read whole anyway: the scan that names the line runs only on failure
            raise sources.EncodingProblem(str(sources.encoding_problem(path))) from None
        except json.JSONDecodeError as exc:
            raise DataError(source.location, None, None, f"not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise DataError(source.location, None, None, "not valid CUAD JSON (nested too deeply)") from None
        rows: list[tuple[int, Row | Exception]] = list(enumerate(cuad_to_rows(doc, source.location), start=1))
        return sources.rows_chunks(rows), source.location, len(rows), ""
    raise DataError(source.location, None, None, f"unsupported format {source.fmt!r}")

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
                    start, text = ans.get("answer_start") if isinstance(ans, dict) else None, \
                        ans.get("text") if isinstance(ans, dict) else None
                    if isinstance(start, bool) or not isinstance(start, int) or not isinstance(text, str):
                        raise DataError(label, di, "answers", f"an answer to {qid or clause!r} needs an integer "
                                        "answer_start and a text")
                    spans.append({"start": start, "end": start + len(text), "label": clause})
            rows.append({"id": entry.get("title", f"doc-{di}"), "text": context, "spans": spans})
    return rows



# The cache: canonical rows per location, built once per node under a lock.


@dataclass(frozen=True)
class Prepared:
    path: Path  # canonical rows, an Arrow stream file
    rows: int
    source: str  # location with checksum, for the registry manifest
    key: str  # changes whenever the rows could


def cache_lock(cache_dir: Path, name: str) -> Any:
    """A lock shared by the processes of a node that use `cache_dir` (ranks, and other runs on the node)."""
    from filelock import FileLock

    locks = cache_dir / "data" / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    return FileLock(str(locks / f"{hashlib.sha256(name.encode()).hexdigest()[:24]}.lock"))


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str).encode()).hexdigest()[:24]


def _cached(cache_dir: Path, key: str) -> Prepared | None:
    meta = cache_dir / "data" / key / "meta.json"
    if not meta.exists():
        return None
    m = json.loads(meta.read_text())
    return Prepared(meta.parent / "rows.arrow", int(m["rows"]), str(m["source"]), key)


def _store(cache_dir: Path, key: str, canon: Canon, tables: Iterator[pa.Table], source: str,
           label: str) -> Prepared:
    """Write the canonical rows and then their meta.json, which marks the entry complete."""
    folder = cache_dir / "data" / key
    folder.mkdir(parents=True, exist_ok=True)
    rows = write_arrow(folder / "rows.arrow", canon.schema(), tables)
    if not rows:
        raise DataError(label, None, None, "no rows")
    tmp = folder / f"meta.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"rows": rows, "source": source, "schema": canon.key()}))
    os.replace(tmp, folder / "meta.json")
    return Prepared(folder / "rows.arrow", rows, source, key)


def _progress(total: int, unit: str, desc: str) -> Any:
    from tqdm.auto import tqdm

    # disable=None: a bar on a terminal, nothing in a pod's log (the summary line below is enough there).
    return tqdm(total=total, unit=unit, unit_scale=True, desc=desc, disable=None, leave=False)


def prepare(location: str, role: str, data: DataSpec, canon: Canon, cache_dir: Path) -> Prepared | None:
    """The canonical rows of `role` ('train' or 'validation') read from `location`, from the cache when the
    bytes, the task and the column names are unchanged. One process per cache converts; the others wait.
    None: `location` is a DatasetDict without the validation split (the caller holds one out)."""
    with cache_lock(cache_dir, json.dumps([location, role, canon.key(), data.format, data.splits.wire()])):
        source = resolve(location, data.format, cache_dir)
        opened = _chunks(source, role, data)
        if opened is None:
            return None
        chunks, label, size, part = opened
        key = _key(source.identity, part, role, canon.key())
        hit = _cached(cache_dir, key)
        if hit is not None:
            return hit
        started = time.monotonic()
        unit = "B" if source.fmt in ("jsonl", "csv") else "rows"
        with _progress(size, unit, f"reading {label}") as bar:
            where = (f"{label}#fingerprint={part}" if source.fmt == "hub"
                     else f"{label}#{source.digest()}")
            prepared = _store(cache_dir, key, canon, canonical_tables(chunks, canon, label, progress=bar), where,
                              label)
        log.info("%s: %d rows checked and stored as Arrow in %.1fs", label, prepared.rows, time.monotonic() - started)
        return prepared


def prepare_dataset(dataset: Any, label: str, canon: Canon, cache_dir: Path) -> Prepared:
    """Canonical rows of an in-memory `datasets.Dataset` (the notebook API), checked exactly as file rows are."""
    key = _key("in-memory", dataset._fingerprint, canon.key())
    with cache_lock(cache_dir, key):
        hit = _cached(cache_dir, key)
        if hit is not None:
            return hit
        return _store(cache_dir, key, canon, canonical_tables(sources.dataset_chunks(dataset), canon, label),
                      f"{label}#fingerprint={dataset._fingerprint}", label)


def holdout_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    """Which of `n` rows are held out for validation: a seeded shuffle, the first `fraction` of it (at least 1)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = np.zeros(n, dtype=bool)
    held[order[: max(1, round(n * fraction))]] = True
    return held


def holdout(train: Prepared, fraction: float, seed: int, canon: Canon, cache_dir: Path) -> tuple[Prepared, Prepared]:
    """Train and validation parts of `train`, written once (a streaming pass per part, a batch in memory)."""
    keys = (_key(train.key, fraction, seed, "train"), _key(train.key, fraction, seed, "validation"))
    with cache_lock(cache_dir, keys[0]):
        hits = [_cached(cache_dir, k) for k in keys]
        if hits[0] is not None and hits[1] is not None:
            return hits[0], hits[1]
        held = holdout_mask(train.rows, fraction, seed)

        def part(keep: bool) -> Iterator[pa.Table]:
            at = 0
            for table in read_arrow(train.path):
                mask = held[at: at + table.num_rows]
                at += table.num_rows
                yield table.filter(pa.array(mask if keep else ~mask))

        where = f"{fraction:g} of train (seed {seed})"
        return (_store(cache_dir, keys[0], canon, part(False), train.source, "train"),
                _store(cache_dir, keys[1], canon, part(True), where, "validation"))


def load_data(spec: TrainingRunSpec, cache_dir: Path) -> LoadedData:
    canon, d = canon_of(spec), spec.data
    train = prepare(d.train, "train", d, canon, cache_dir)
    assert train is not None  # only a validation role can be missing
    validation = None
    if d.validation or may_hold_splits(d.train, d):
        validation = prepare(d.validation or d.train, "validation", d, canon, cache_dir)
    if validation is None:
        train, validation = holdout(train, d.validation_split, spec.training.seed, canon, cache_dir)
    return loaded(train, validation, d.max_samples)


def may_hold_splits(location: str, data: DataSpec) -> bool:
    """Whether `location` may hold a validation split of its own (a saved DatasetDict)."""
    if _is_hub(location):
        return False
    return data.format == "saved-dataset" or (data.format == "auto" and _by_extension(location) is None)


def loaded(train: Prepared, validation: Prepared, max_samples: int | None) -> LoadedData:
    train_ds = open_dataset(train.path)
    if max_samples is not None and max_samples < len(train_ds):
        train_ds = train_ds.select(range(max_samples))  # contiguous: a zero-copy slice of the mapped file
    fp = _key(train.key, validation.key, max_samples)[:16]
    return LoadedData(train_ds, open_dataset(validation.path), fp,
                      {"train": train.source, "validation": validation.source},
                      {"train": (train.path, len(train_ds)), "validation": (validation.path, validation.rows)})


def checked_labels(given: list[str] | None, splits: list[tuple[str, pa.Table]]) -> list[str]:
    """The label set of a classification run: `given`, else every label of the first split (train), sorted.
    Raises DataError for the first row whose label is outside it, and for a set of fewer than two labels: the
    model's head, the loss and the metrics all need two classes at least."""
    def flat(table: pa.Table) -> tuple[pa.Array, pa.Array | None]:
        col = table.column("label").combine_chunks()
        if pa.types.is_list(col.type):
            return pc.list_flatten(col), pc.list_parent_indices(col)
        return col, None

    labels = list(given) if given else sorted(str(v) for v in pc.unique(flat(splits[0][1])[0]).to_pylist())
    for split, table in splits:
        values, rows = flat(table)
        at = first_outside(values, labels)
        if at >= 0:
            row = at if rows is None else rows[at].as_py()
            raise DataError(split, row + 1, "label", f"label {values[at].as_py()!r} is not in the label set {labels}")
    if len(labels) < 2:
        found = f" (the data has only {labels[0]!r})" if labels else ""
        raise DataError(splits[0][0], None, "label", f"risk-classification needs at least two labels{found}")
    return labels


def preflight(spec: TrainingRunSpec, cache_dir: Path, limit: int = PREFLIGHT_ROWS) -> dict[str, int]:
    """Check the first `limit` rows of each data location (all of a smaller file) before any process group or
    GPU is started; raises DataError/DataProblems naming every bad row. Returns rows checked per role.
    Nothing is written to the cache: this runs where the training will not (the CLI, before launching)."""
    canon, d = canon_of(spec), spec.data
    checked: dict[str, int] = {}
    roles = [("train", d.train)] + ([("validation", d.validation)] if d.validation else [])
    if not d.validation and may_hold_splits(d.train, d):
        roles.append(("validation", d.train))
    read: list[tuple[str, pa.Table]] = []
    for role, location in roles:
        opened = _chunks(resolve(location, d.format, cache_dir), role, d)
        if opened is None:
            continue
        chunks, label, _, _ = opened
        tables = list(canonical_tables(chunks, canon, label, limit))  # at most `limit` rows
        n = sum(t.num_rows for t in tables)
        if not n:
            raise DataError(label, None, None, "no rows")
        checked[role] = n
        read.append((label, pa.concat_tables(tables)))
    if spec.task == "risk-classification":
        # What the trainer's label check (fit_labels) would refuse, on the rows read here.
        checked_labels(spec.classification.labels, read)
    return checked
