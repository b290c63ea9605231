"""Hostile and malformed manifest files: one bounded reader, one line per problem, every file reported.

Each case here was a traceback, a hang or a silently wrong value before the reader in `legistra/api/loader.py`.
"""

from __future__ import annotations

import codecs
import json
import resource
import time
from pathlib import Path

import pytest
import yaml

from legistra.api.loader import MAX_DEPTH, DocumentError, parse_documents
from legistra.api.validation import SpecError, load_training_run
from legistra.cli.main import main
from tests.conftest import EXAMPLES

GOOD = (EXAMPLES / "risk-classification.yaml").read_text()

# 1.2 KB that PyYAML would expand to 10^9 strings (the "billion laughs"), inside a free-form field.
BOMB = GOOD + "\n".join([
    "---",
    "a: &a [x, x, x, x, x, x, x, x, x, x]",
    *[f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]"
      for p, c in zip("abcdefgh", "bcdefghi")],
])


def _one_line(problem: str) -> None:
    assert "\n" not in problem and "Traceback" not in problem


def test_duplicate_keys_are_refused_with_the_key_and_both_lines() -> None:
    text = "a: 1\nspec:\n  task: x\n  task: y\n"
    with pytest.raises(DocumentError, match=r"line 4: duplicate key 'task' \(first given on line 3\)"):
        parse_documents(text.encode())
    with pytest.raises(DocumentError, match="duplicate key 'task'"):
        parse_documents(b'{"spec": {"task": "x", "task": "y"}}', json_file=True)


def test_an_alias_bomb_is_refused_before_it_expands() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(DocumentError, match="expands to more than 100,000 values"):
        parse_documents(BOMB.encode())
    assert time.monotonic() - started < 2
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: no expansion happened


def test_a_self_referring_alias_is_refused() -> None:
    with pytest.raises(DocumentError, match="refers to a node that contains it"):
        parse_documents(b"a: &x [1, *x]\n")


def test_ordinary_aliases_still_work() -> None:
    docs = parse_documents(b"base: &b {lr: 1}\nrun: *b\nmerged:\n  <<: *b\n  lr: 2\n")
    assert docs == [{"base": {"lr": 1}, "run": {"lr": 1}, "merged": {"lr": 2}}]


@pytest.mark.parametrize("json_file", [False, True])
def test_deep_nesting_is_refused(json_file: bool) -> None:
    depth = 5000 if json_file else MAX_DEPTH + 5
    with pytest.raises(DocumentError, match=f"nested more than {MAX_DEPTH} levels deep"):
        parse_documents(("[" * depth + "]" * depth).encode(), json_file=json_file)


@pytest.mark.parametrize(("data", "message"), [
    (codecs.BOM_UTF16_LE + "kind: TrainingRun\n".encode("utf-16-le"), "file is UTF-16-encoded; save it as UTF-8"),
    (codecs.BOM_UTF32_BE + "kind: x".encode("utf-32-be"), "file is UTF-32-encoded"),
    (b"\x7fELF\x02\x01\x01\x00\x00\x00", "file is binary"),
    ("kind: TrainingRun\nname: Vertragsprüfung\n".encode("latin-1"), "line 2: byte 0xfc is not UTF-8"),
    (b"a: [1, 2\n", "not valid YAML: line 2, column 1"),
])
def test_files_that_are_not_utf8_yaml_get_one_line(data: bytes, message: str) -> None:
    with pytest.raises(DocumentError, match=message) as info:
        parse_documents(data)
    _one_line(str(info.value))


def test_a_utf8_byte_order_mark_is_allowed() -> None:
    assert parse_documents(codecs.BOM_UTF8 + b"a: 1\n") == [{"a": 1}]


@pytest.mark.parametrize(("text", "message"), [
    ('{"a": 1,}', "not valid JSON: line 1, column 9"),
    ('{"a": NaN}', "NaN is not a JSON number"),
    ('{"a": Infinity}', "Infinity is not a JSON number"),
])
def test_json_problems_get_one_line(text: str, message: str) -> None:
    with pytest.raises(DocumentError, match=message):
        parse_documents(text.encode(), json_file=True)


def test_an_oversized_file_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * (5 << 20))
    with pytest.raises(SpecError, match="a manifest may have at most"):
        load_training_run(big)


def test_validate_reports_every_file_and_fails_if_any_is_bad(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    files = {
        "utf16.yaml": codecs.BOM_UTF16_LE + GOOD.encode("utf-16-le"),
        "binary.yaml": bytes(range(256)),
        "dup.yaml": GOOD.replace("  task: risk-classification", "  task: risk-classification\n  task: summarization"
                                 ).encode(),
        "bomb.yaml": BOMB.encode(),
        "deep.json": ("[" * 10_000 + "]" * 10_000).encode(),
        "bad.json": b"{",
        "good.yaml": GOOD.encode(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    started = time.monotonic()
    rc = main(["validate", *(str(tmp_path / n) for n in files)])
    assert time.monotonic() - started < 10
    out, err = capsys.readouterr()
    assert rc == 1
    assert "Traceback" not in err
    for name in files:
        assert str(tmp_path / name) in out + err, f"{name} was not reported"
    assert f"{tmp_path / 'good.yaml'}: ok" in out
    assert "duplicate key 'task'" in err
    assert "expands to more than" in err


def test_render_refuses_a_bomb_without_expanding_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bomb = tmp_path / "bomb.yaml"
    # The bomb inside the TrainingRun itself, under the free-form DeepSpeed config.
    doc = yaml.safe_load(GOOD)
    text = yaml.safe_dump(doc).replace("spec:\n", "spec:\n  deepspeed:\n    config: *i\n", 1)
    bomb.write_text(BOMB.split("---\n")[1] + "\n" + text)
    started = time.monotonic()
    assert main(["render", str(bomb)]) == 2
    assert time.monotonic() - started < 5
    assert "expands to more than" in capsys.readouterr().err


def test_the_trainer_reads_run_json_through_the_same_reader(tmp_path: Path) -> None:
    doc = yaml.safe_load(GOOD)
    config = tmp_path / "run.json"
    config.write_text(json.dumps(doc).replace('"spec": {', '"spec": {"task": "summarization", ', 1))
    with pytest.raises(SpecError, match="duplicate key 'task'"):
        load_training_run(config)


def test_numbers_are_read_as_kubectl_reads_them() -> None:
    # YAML 1.1 (PyYAML) reads 2e-5 as a string; kubectl and the API server read a number, and so do we.
    assert parse_documents(b"lr: 2e-5\nb: -1E3\nc: .5e1\nd: 42\ne: -e5\n") == [
        {"lr": 2e-5, "b": -1000.0, "c": 5.0, "d": 42, "e": "-e5"}]
    doc = yaml.safe_load(GOOD)
    doc["spec"]["training"]["learningRate"] = "REPLACE"
    text = yaml.safe_dump(doc).replace("REPLACE", "1e-4")
    assert parse_documents(text.encode())[0]["spec"]["training"]["learningRate"] == 1e-4


@pytest.mark.parametrize(("text", "message"), [
    (b"when: 2026-13-45\n", "not valid YAML: month must be in 1..12"),
    (b"x: !!python/object:os.system {}\n", "could not determine a constructor"),
    (b"x: !!float abc\n", "could not convert string to float"),
])
def test_scalars_a_tag_cannot_hold_get_one_line(text: bytes, message: str) -> None:
    with pytest.raises(DocumentError, match=message):
        parse_documents(text)


def test_validate_checks_a_training_schedule_and_its_template(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    sample = (EXAMPLES.parent / "manifests" / "samples" / "weekly-retraining.yaml").read_text()
    good = tmp_path / "schedule.yaml"
    good.write_text(sample)
    doc = yaml.safe_load(sample)
    doc["spec"]["template"]["spec"]["training"] = {"seed": True}
    doc["metadata"]["namespace"] = "Team_A"
    bad = tmp_path / "bad-schedule.yaml"
    bad.write_text(yaml.safe_dump(doc))
    assert main(["validate", str(good), str(bad)]) == 1
    out, err = capsys.readouterr()
    assert f"{good}: ok (TrainingSchedule" in out
    assert "spec.template.spec.training.seed: Input should be a valid integer" in err
    assert "metadata.namespace: must be a DNS-1123 label" in err
