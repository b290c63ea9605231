"""Loading TrainingRun documents with errors that name the field and what is wrong."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from legistra.api.formats import DESCRIBED, redact
from legistra.api.loader import DocumentError, read_documents
from legistra.api.schedule import TrainingSchedule
from legistra.api.spec import ObjectMeta, TrainingRun


class SpecError(ValueError):
    """A TrainingRun that cannot be used; `problems` holds one `field.path: message` line each."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "invalid TrainingRun:\n  " + "\n  ".join(problems))


def _field_path(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":  # pydantic's marker for a bad dict key: the key itself is the previous part
            out += " (key)"
        else:
            out += f".{part}" if out else str(part)
    return out


def _message(err: Mapping[str, Any]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()))
        shown = f"{bound:g}" if isinstance(bound, float) else bound
        return f"must be {op} {shown} (got {err.get('input')!r})"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')} (got {err.get('input')!r})"
    if kind == "string_pattern_mismatch":
        described = DESCRIBED.get(str(ctx.get("pattern")))
        if described:
            return f"must be {described} (got {err.get('input')!r})"
        return f"must match {ctx.get('pattern')} (got {err.get('input')!r})"
    if kind == "too_short" and isinstance(err.get("input"), list):
        n = ctx.get("min_length")
        return "must not be empty" if n == 1 else f"must have at least {n} entries"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    return str(err["msg"]).removeprefix("Value error, ")


# pydantic names the alternative of a union (`batchSize: 8 | auto`) in the error's location.
def _union_member(part: int | str) -> bool:
    return isinstance(part, str) and (part.startswith(("function-", "constrained-", "literal[")) or part in ("int",
                                                                                                          "str"))


def problems_of(exc: ValidationError) -> list[str]:
    problems = []
    unions: set[str] = set()
    for err in exc.errors():
        if isinstance(err.get("input"), str):
            # Messages quote the value; a URI's password must not reach the terminal, the status or an event.
            err = {**err, "input": redact(err["input"])}
        msg = _message(err)
        tagged = bool(err["loc"]) and _union_member(err["loc"][-1])
        loc = [p for p in err["loc"] if not _union_member(p)]
        path = _field_path(loc)
        if tagged:
            # One line per field: the number's bound for a number, the keywords for anything else.
            is_number = isinstance(err.get("input"), int) and not isinstance(err.get("input"), bool)
            if path in unions or (err["type"] == "literal_error") == is_number:
                continue
            unions.add(path)
            if not is_number:
                msg = f"must be a whole number or one of {(err.get('ctx') or {}).get('expected')} " \
                      f"(got {err.get('input')!r})"
        # Cross-field rules already name their own path(s) in the message.
        if msg.startswith("spec.") or not path:
            problems.append(msg)
        else:
            problems.append(f"{path}: {msg}")
    return problems


def parse_training_run(doc: Any, source: str = "") -> TrainingRun:
    if not isinstance(doc, Mapping):
        raise SpecError(["document: must be a mapping with apiVersion, kind, metadata and spec"], source)
    try:
        return TrainingRun.model_validate(doc)
    except ValidationError as exc:
        raise SpecError(problems_of(exc), source) from None


def parse_training_schedule(doc: Any, source: str = "") -> TrainingSchedule:
    """A TrainingSchedule document; its template's spec is checked as any TrainingRun's."""
    if not isinstance(doc, Mapping):
        raise SpecError(["document: must be a mapping with apiVersion, kind, metadata and spec"], source)
    problems: list[str] = []
    try:
        ObjectMeta.model_validate(doc.get("metadata"))
    except ValidationError as exc:
        # ObjectMeta's own paths (name, namespace, ...) and, for a missing or non-mapping metadata, none.
        problems += [f"metadata.{p}" if ": " in p else f"metadata: {p}" for p in problems_of(exc)]
    try:
        schedule = TrainingSchedule.model_validate(doc)
    except ValidationError as exc:
        problems += [p for p in problems_of(exc) if not p.startswith("metadata")]
    if problems:
        raise SpecError(problems, source)
    return schedule


def load_documents(path: str | Path) -> list[Any]:
    """The documents of a manifest file, through the one bounded reader (`legistra.api.loader`)."""
    try:
        return read_documents(path)
    except DocumentError as exc:
        raise SpecError([str(exc)], str(path)) from None


def _training_run_of(found: list[Any], source: str) -> TrainingRun:
    docs = [d for d in found if isinstance(d, Mapping) and d.get("kind") == "TrainingRun"]
    if len(docs) != 1:
        if len(found) == 1:
            return parse_training_run(found[0], source)
        raise SpecError([f"document: expected exactly one TrainingRun, found {len(docs)}"], source)
    return parse_training_run(docs[0], source)


def load_training_run(path: str | Path) -> TrainingRun:
    """The single TrainingRun in `path` (YAML or JSON)."""
    return _training_run_of(load_documents(path), str(path))


def load_manifest(path: str | Path) -> TrainingRun | TrainingSchedule:
    """The TrainingSchedule a file holds alone, else its single TrainingRun (`legistra validate` takes both)."""
    found = load_documents(path)
    if len(found) == 1 and isinstance(found[0], Mapping) and found[0].get("kind") == "TrainingSchedule":
        return parse_training_schedule(found[0], str(path))
    return _training_run_of(found, str(path))
