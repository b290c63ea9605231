"""Property tests of hostile manifests: any TrainingRun built from the schema's own types, with hostile strings
and numbers mixed in, is either refused with a field path or validates and renders within bounds; never a
traceback, never a hang.

Each document starts from a real example and has a few fields (any of the CRD's leaves) replaced by values of
the field's type, of another type, or chosen to hurt (NaN, 2^63, a password in a URI, '../', NUL, 10 KB). The
document goes through the whole path a user's file takes: YAML text, the bounded reader, the schema, then both
job builders, whose output is checked against the real Kubeflow CRDs.
"""

from __future__ import annotations

import copy
import json
import math
from collections import Counter
from functools import cache
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from legistra.api.crd import training_run_crd
from legistra.api.loader import DocumentError, parse_documents
from legistra.api.validation import SpecError, parse_training_run
from legistra.contract import run_document
from legistra.operator.build import build_children
from legistra.operator.config import JobDefaults
from tests.conftest import EXAMPLES
from tests.test_operator_decisions import crd_schema

# At most 200 examples per property and 2 s each (the budget: under 60 s in all).
PROPERTY = settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
RENDERED_LIMIT = 1 << 20
INT64 = 2**63 - 1

BASES = [yaml.safe_load(p.read_text()) for p in sorted(EXAMPLES.glob("*.yaml"))]
BASES = [d for d in BASES if isinstance(d, dict) and d.get("kind") == "TrainingRun"]

HOSTILE_STRINGS = ["", " ", "../../etc/passwd", "/etc/shadow", "http://alice:s3cret@host:5000", "s3://k:s@b/p",
                   "a\x00b", "x" * 10_000, "${HOME}", "$(id)", "`id`", "'; DROP TABLE runs; --", "tags.x = 'y' OR 1=1",
                   "\u202e\u0645\u0631\u062d\u0628\u0627", "C:\\Windows\\system32", "*", "~", "NaN", "true", "1e309"]
HOSTILE_NUMBERS = [math.nan, math.inf, -math.inf, 2**31, 2**32, 2**63, 2**64, -(2**63) - 1, 10**31, -1, 0, 1e308,
                   5e-324, True, False]


def leaves(schema: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """(path, schema) of every field of the CRD's spec, objects and arrays included (they can be replaced too)."""
    out = [(path, schema)] if path else []
    for name, sub in (schema.get("properties") or {}).items():
        out += leaves(sub, (*path, name))
    return out


SPEC_SCHEMA = training_run_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
FIELDS = leaves(SPEC_SCHEMA)


def value_of(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A value of the field's own type (in and out of its bounds), of another type, or a hostile one."""
    kind = schema.get("type")
    own: st.SearchStrategy[Any]
    if "enum" in schema:
        own = st.sampled_from(schema["enum"])
    elif kind == "integer" or schema.get("x-kubernetes-int-or-string"):
        own = st.integers(min_value=schema.get("minimum", -(2**70)), max_value=schema.get("maximum", 2**70)) \
            | st.integers()
    elif kind == "number":
        own = st.floats(allow_nan=True, allow_infinity=True) | st.integers()
    elif kind == "string":
        own = st.text(max_size=40) | st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True)
    elif kind == "boolean":
        own = st.booleans()
    elif kind == "array":
        own = st.lists(value_of(schema.get("items", {})), max_size=3)
    else:
        own = st.dictionaries(st.text(max_size=10), st.text(max_size=10) | st.integers() | st.floats(), max_size=3)
    # Mostly the field's own type, so that many documents get through to the renderers.
    return st.one_of(own, own, own, st.sampled_from(HOSTILE_STRINGS), st.sampled_from(HOSTILE_NUMBERS), st.none())


@st.composite
def manifests(draw: st.DrawFn) -> str:
    doc = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        path, schema = draw(st.sampled_from(FIELDS))
        node = doc["spec"]
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = draw(value_of(schema))
    if draw(st.integers(min_value=0, max_value=3)) == 0:
        doc["metadata"]["namespace"] = draw(st.sampled_from(["team-a", *HOSTILE_STRINGS[:8]]))
    return yaml.safe_dump(doc, allow_unicode=True)


@cache
def validator(file: str, version: str) -> jsonschema.protocols.Validator:
    schema = crd_schema(file, version)
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def within_bounds(value: Any, where: str = "") -> None:
    """Every number a renderer wrote is finite and fits the API server's int64; every string is bounded."""
    if isinstance(value, dict):
        for k, v in value.items():
            within_bounds(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            within_bounds(v, f"{where}[{i}]")
    elif isinstance(value, float):
        assert math.isfinite(value), where
    elif isinstance(value, int):
        assert -INT64 - 1 <= value <= INT64, where


def test_any_manifest_is_refused_with_a_field_path_or_renders_within_bounds() -> None:
    outcomes: Counter[str] = Counter()

    @PROPERTY
    @given(manifests())
    def check(text: str) -> None:
        try:
            docs = parse_documents(text.encode())
            run = parse_training_run(docs[0])
        except (SpecError, DocumentError) as exc:
            problems = getattr(exc, "problems", [str(exc)])
            assert problems
            for problem in problems:
                assert problem.split(":")[0].split("[")[0].split(" ")[0].startswith(
                    ("spec.", "metadata.", "apiVersion", "kind", "document", "line ")), problem
                assert "s3cret" not in problem and "\n" not in problem
            outcomes["refused"] += 1
            return
        document = run_document(run)
        assert parse_training_run(json.loads(json.dumps(document))) == run  # run.json reads back as the same run
        placed = run.model_copy(update={"metadata": run.metadata.model_copy(update={
            "uid": "0b5c9d3e-1111-2222-3333-444455556666", "namespace": run.metadata.namespace or "team-a"})})
        for backend, (file, version) in (("pytorchjob", ("kubeflow.org_pytorchjobs.yaml", "v1")),
                                         ("trainjob", ("trainer.kubeflow.org_trainjobs.yaml", "v1alpha1"))):
            objects = build_children(placed, JobDefaults(), backend=backend)  # type: ignore[arg-type]
            rendered = json.dumps(objects, allow_nan=False)
            assert len(rendered) < RENDERED_LIMIT
            within_bounds(objects)
            validator(file, version).validate(objects[-1])
        outcomes["rendered"] += 1

    check()
    print(f"hostile manifests: {dict(outcomes)}")
    # The generator is not vacuous: both outcomes are exercised, many times.
    assert outcomes["rendered"] >= 20 and outcomes["refused"] >= 20, outcomes


@PROPERTY
@given(st.binary(max_size=2000) | st.text(max_size=500).map(str.encode))
def test_any_bytes_are_read_or_refused_in_one_line(data: bytes) -> None:
    for json_file in (False, True):
        try:
            parse_documents(data, json_file=json_file)
        except DocumentError as exc:
            assert "\n" not in str(exc)


@PROPERTY
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
                    max_leaves=60),
       st.integers(min_value=1, max_value=3))
def test_aliases_and_nesting_never_expand_unbounded(value: Any, copies: int) -> None:
    """A structure referenced through anchors `copies` levels deep: read if small, refused if it would explode."""
    text = yaml.safe_dump({"base": value}, allow_unicode=True).replace("base:", "base: &b", 1)
    for level in range(copies):
        refs = ", ".join(["*b" if level == 0 else f"*l{level - 1}"] * 10)
        text += f"l{level}: &l{level} [{refs}]\n"
    try:
        parse_documents(text.encode())
    except DocumentError as exc:
        assert "expands to more than" in str(exc) or "nested more than" in str(exc)


pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
