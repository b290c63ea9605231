"""`legistra data prepare`: public legal datasets' released files -> our jsonl, or a saved `datasets` DatasetDict."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from legistra.trainer.data import DataError, Row, cuad_to_rows

FORMATS = ("cuad", "ledgar", "billsum")
OUTPUTS = ("jsonl", "saved-dataset")


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    yield i, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(str(path), i, None, f"not valid JSON ({exc.msg})") from None


def convert_ledgar(path: Path) -> list[Row]:
    """LEDGAR release (`provision`, `label` list) or LexGLUE export (`text`, `label`)."""
    rows = []
    for i, obj in _jsonl(path):
        text = obj.get("provision", obj.get("text"))
        label = obj.get("label")
        if not isinstance(text, str) or not text.strip():
            raise DataError(str(path), i, "provision", "missing provision text")
        if isinstance(label, list):
            if not label:
                raise DataError(str(path), i, "label", "empty label list")
            label = label[0] if len(label) == 1 else [str(x) for x in label]
        if label is None:
            raise DataError(str(path), i, "label", "missing label")
        rows.append({"text": text, "label": label if isinstance(label, list) else str(label)})
    return rows


def convert_billsum(path: Path) -> list[Row]:
    rows = []
    for i, obj in _jsonl(path):
        for key in ("text", "summary"):
            if not isinstance(obj.get(key), str) or not obj[key].strip():
                raise DataError(str(path), i, key, f"missing {key}")
        rows.append({"text": obj["text"], "summary": obj["summary"], "title": obj.get("title", "")})
    return rows


def convert_cuad(path: Path) -> list[Row]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(str(path), None, None, f"not valid JSON ({exc.msg})") from None
    return cuad_to_rows(doc, str(path))


def prepare(fmt: str, src: Path, dest: Path, to: str = "jsonl", validation_split: float = 0.0,
            seed: int = 42) -> int:
    """Convert `src` into jsonl at `dest`, or into a DatasetDict saved at `dest` with `save_to_disk` (a `train`
    split, and a seeded `validation` split of that fraction when asked); returns the number of rows written."""
    converters = {"cuad": convert_cuad, "ledgar": convert_ledgar, "billsum": convert_billsum}
    if fmt not in converters:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}")
    if to not in OUTPUTS:
        raise ValueError(f"--to must be one of {', '.join(OUTPUTS)}")
    if not 0 <= validation_split < 1:
        raise ValueError("--validation-split must be at least 0 and below 1")
    if not src.exists():
        raise DataError(str(src), None, None, "file not found")
    rows = converters[fmt](src)
    if to == "saved-dataset":
        return _save_dataset_dict(rows, dest, validation_split, seed)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


def _save_dataset_dict(rows: list[Row], dest: Path, validation_split: float, seed: int) -> int:
    import datasets

    if any(isinstance(r.get("label"), list) for r in rows):  # one Arrow type per column: all lists then
        rows = [{**r, "label": r["label"] if isinstance(r["label"], list) else [r["label"]]} for r in rows]
    train = datasets.Dataset.from_list(rows)
    splits = {"train": train}
    if validation_split:
        parts = train.train_test_split(test_size=validation_split, seed=seed)
        splits = {"train": parts["train"], "validation": parts["test"]}
    datasets.DatasetDict(splits).save_to_disk(str(dest))
    return len(rows)
