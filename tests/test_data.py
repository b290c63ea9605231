"""Data readers, row checks with their exact messages, public-format conversion, DeepSpeed configs."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from legistra.api.spec import DeepSpeedSpec, TrainingRunSpec
from legistra.trainer.columnar import table_of
from legistra.trainer.data import DataError, holdout_mask, load_data
from legistra.trainer.dsconfig import deepspeed_config, zero_stage_of
from legistra.trainer.prepare import prepare
from tests.conftest import legistra


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def spec(train: Path | str, task: str = "risk-classification", multi_label: bool = False, seed: int = 0,
         **data: object) -> TrainingRunSpec:
    """A TrainingRun spec around `spec.data` (the data path reads the task, multiLabel and the seed from it)."""
    return TrainingRunSpec.model_validate({
        "task": task, "model": {"name": "unused"}, "data": {"train": str(train), **data},
        "classification": {"multiLabel": multi_label}, "training": {"seed": seed}, "registry": {"modelName": "m"},
    })


def rows_of(dataset: object) -> list[dict[str, object]]:
    return table_of(dataset).to_pylist()


def test_jsonl_csv_parquet_read_the_same(tmp_path: Path) -> None:
    rows = [{"text": f"clause {i}", "label": "high" if i % 2 else "low"} for i in range(10)]
    j = write_jsonl(tmp_path / "d.jsonl", rows)
    c = tmp_path / "d.csv"
    c.write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows))
    p = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), p)
    loaded = [load_data(spec(f, seed=1), tmp_path) for f in (j, c, p)]
    assert rows_of(loaded[0].train) == rows_of(loaded[1].train) == rows_of(loaded[2].train)
    assert len(loaded[0].train) == 9 and len(loaded[0].validation) == 1
    assert loaded[0].fingerprint != loaded[2].fingerprint  # different bytes, different cache key


def test_csv_cells_hold_json_lists(tmp_path: Path) -> None:
    c = tmp_path / "d.csv"
    c.write_text('text,label\n"a clause","[""x"", ""y""]"\n"b clause",x\n')
    data = load_data(spec(c, multi_label=True, validationSplit=0.5), tmp_path)
    assert {"text": "a clause", "label": ["x", "y"]} in rows_of(data.train) + rows_of(data.validation)
    assert {"text": "b clause", "label": ["x"]} in rows_of(data.train) + rows_of(data.validation)


@pytest.mark.parametrize(
    ("task", "row", "message"),
    [
        ("risk-classification", {"text": "ok", "label": None}, "row 2, field 'label': missing label"),
        ("risk-classification", {"text": "", "label": "x"}, "row 2, field 'text': missing or empty text"),
        ("risk-classification", {"text": "ok", "label": 1.5}, "row 2, field 'label': label must be a string or integer, got float"),
        ("summarization", {"text": "ok"}, "row 2, field 'summary': missing or empty summary"),
        ("clause-extraction", {"text": "short", "spans": [{"start": 0, "end": 99, "label": "a"}]},
         "row 2, field 'spans[0]': span [0, 99) is outside the text (length 5)"),
        ("clause-extraction", {"text": "short", "spans": [{"start": 0}]},
         "row 2, field 'spans[0]': each span needs start, end and label"),
        ("clause-extraction", {"text": "short", "spans": "x"}, "row 2, field 'spans': must be a list of {start, end, label}"),
    ],
)
def test_bad_row_names_file_row_and_field(tmp_path: Path, task: str, row: dict[str, object], message: str) -> None:
    good = {"text": "fine", "label": "x", "summary": "s", "spans": []}
    f = write_jsonl(tmp_path / "train.jsonl", [good, row])
    with pytest.raises(DataError) as info:
        load_data(spec(f, task), tmp_path)
    assert str(info.value) == f"{f}, {message}"


def test_invalid_json_line_and_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "t.jsonl"
    f.write_text('{"text": "a", "label": "x"}\n{"text": broken\n')
    with pytest.raises(DataError, match=r"t.jsonl, row 2: not valid JSON"):
        load_data(spec(f), tmp_path)
    with pytest.raises(DataError, match="file not found"):
        load_data(spec(tmp_path / "nope.jsonl"), tmp_path)


def test_csv_row_numbers_count_the_header(tmp_path: Path) -> None:
    c = tmp_path / "d.csv"
    c.write_text("text,label\nfine,x\n,x\n")
    with pytest.raises(DataError) as info:
        load_data(spec(c), tmp_path)
    assert str(info.value) == f"{c}, row 3, field 'text': missing or empty text"


def test_custom_field_names(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "t.jsonl", [{"clause": "a b", "risk": "hi"}, {"clause": "c d", "risk": "lo"}])
    data = load_data(spec(f, fields={"text": "clause", "label": "risk"}, validationSplit=0.5), tmp_path)
    assert sorted(r["label"] for r in rows_of(data.train) + rows_of(data.validation)) == ["hi", "lo"]


def test_holdout_split_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    assert (holdout_mask(100, 0.2, seed=3) == holdout_mask(100, 0.2, seed=3)).all()
    assert holdout_mask(100, 0.2, seed=3).sum() == 20 and holdout_mask(3, 0.01, seed=0).sum() == 1
    f = write_jsonl(tmp_path / "t.jsonl", [{"text": f"clause {i}", "label": "a"} for i in range(100)])
    data = load_data(spec(f, seed=3, validationSplit=0.2), tmp_path)
    train, val = {r["text"] for r in rows_of(data.train)}, {r["text"] for r in rows_of(data.validation)}
    assert len(val) == 20 and len(train) == 80 and not train & val


def test_s3_data_is_downloaded_once_by_etag(tmp_path: Path, s3_endpoint: str) -> None:
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="legal-data")
    body = "".join(json.dumps({"text": f"t{i}", "label": "a" if i % 2 else "b"}) + "\n" for i in range(6))
    s3.put_object(Bucket="legal-data", Key="risk/train.jsonl", Body=body.encode())
    data = load_data(spec("s3://legal-data/risk/train.jsonl"), tmp_path)
    assert len(data.train) + len(data.validation) == 6
    assert data.sources["train"].startswith("s3://legal-data/risk/train.jsonl#sha256=")
    again = load_data(spec("s3://legal-data/risk/train.jsonl"), tmp_path)
    assert again.fingerprint == data.fingerprint
    assert len(list((tmp_path / "s3" / "legal-data").iterdir())) == 1  # cached by ETag, not fetched twice


# -- legistra data prepare ----------------------------------------------------------------------------

CUAD = {
    "version": "aok_v1.0",
    "data": [{
        "title": "ACME_SUPPLY_AGREEMENT",
        "paragraphs": [{
            "context": "This Agreement is governed by the laws of Delaware. Either party may terminate on notice.",
            "qas": [
                {"id": "ACME_SUPPLY_AGREEMENT__Governing Law", "question": "Highlight the parts (if any) of this "
                 "contract related to \"Governing Law\"", "is_impossible": False,
                 "answers": [{"text": "This Agreement is governed by the laws of Delaware.", "answer_start": 0}]},
                {"id": "ACME_SUPPLY_AGREEMENT__Non-Compete", "question": "...", "is_impossible": True, "answers": []},
            ],
        }],
    }],
}


def test_prepare_cuad(tmp_path: Path) -> None:
    src = tmp_path / "CUAD_v1.json"
    src.write_text(json.dumps(CUAD))
    dest = tmp_path / "out" / "cuad.jsonl"
    assert prepare("cuad", src, dest) == 1
    row = json.loads(dest.read_text())
    assert row["id"] == "ACME_SUPPLY_AGREEMENT"
    assert row["spans"] == [{"start": 0, "end": 51, "label": "Governing Law"}]
    assert row["text"][0:51] == "This Agreement is governed by the laws of Delaware."


def test_prepare_ledgar_both_layouts(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "LEDGAR_2016-2019.jsonl", [
        {"provision": "The laws of Texas govern.", "label": ["governing laws"], "source": "x"},
        {"provision": "Notices in writing.", "label": ["notices", "communications"], "source": "y"},
        {"text": "Severability applies.", "label": 7},
    ])
    dest = tmp_path / "ledgar.jsonl"
    assert prepare("ledgar", src, dest) == 3
    rows = [json.loads(line) for line in dest.read_text().splitlines()]
    assert rows[0] == {"text": "The laws of Texas govern.", "label": "governing laws"}
    assert rows[1]["label"] == ["notices", "communications"]
    assert rows[2]["label"] == "7"


def test_prepare_billsum_and_bad_rows(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "us_train_data_final_OFFICIAL.jsonl", [
        {"text": "SECTION 1. ...", "summary": "Amends ...", "title": "A bill", "text_len": 14, "sum_len": 10},
    ])
    assert prepare("billsum", src, tmp_path / "b.jsonl") == 1
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "x", "summary": ""}])
    with pytest.raises(DataError, match=r"bad.jsonl, row 1, field 'summary': missing summary"):
        prepare("billsum", bad, tmp_path / "b2.jsonl")


def test_cli_data_prepare(tmp_path: Path) -> None:
    src = tmp_path / "CUAD_v1.json"
    src.write_text(json.dumps(CUAD))
    res = legistra("data", "prepare", "--format", "cuad", str(src), str(tmp_path / "o.jsonl"))
    assert res.returncode == 0, res.stderr
    assert "wrote 1 rows" in res.stdout
    res = legistra("data", "prepare", "--format", "cuad", str(tmp_path / "missing.json"), str(tmp_path / "o.jsonl"))
    assert res.returncode == 1 and "file not found" in res.stderr


# -- DeepSpeed configs -------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_config_per_stage(stage: int) -> None:
    cfg = deepspeed_config(DeepSpeedSpec(zero_stage=stage))
    assert cfg is not None
    assert zero_stage_of(cfg) == stage
    assert cfg["train_micro_batch_size_per_gpu"] == "auto"
    assert cfg["fp16"]["enabled"] == "auto" and cfg["bf16"]["enabled"] == "auto"
    assert ("stage3_gather_16bit_weights_on_model_save" in cfg["zero_optimization"]) == (stage == 3)
    assert "optimizer" not in cfg


def test_deepspeed_offload_and_raw_and_off() -> None:
    cfg = deepspeed_config(DeepSpeedSpec(zero_stage=3, offload="cpu"))
    assert cfg is not None
    assert cfg["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert cfg["optimizer"]["type"] == "AdamW"
    raw = {"zero_optimization": {"stage": 1}, "train_batch_size": "auto"}
    out = deepspeed_config(DeepSpeedSpec(config=raw))
    assert out == raw and out is not raw
    assert deepspeed_config(DeepSpeedSpec()) is None
    assert zero_stage_of(None) == -1


def test_hub_dataset_code_path_on_a_local_dataset_folder(tmp_path: Path) -> None:
    """`hf://ID[:split]` goes through datasets.load_dataset; here the ID is a local folder (no hub offline)."""
    folder = tmp_path / "unfair_tos"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"text": f"clause {i}", "label": "a" if i % 2 else "b"} for i in range(8)])
    data = load_data(spec(f"hf://{folder}:train", validationSplit=0.25), tmp_path)
    assert len(data.train) == 6 and len(data.validation) == 2
    assert data.sources["train"].startswith(f"hf://{folder}:train#fingerprint=")


def test_model_from_an_s3_prefix_is_downloaded_once(tmp_path: Path, s3_endpoint: str,
                                                     tiny_models: dict[str, Path]) -> None:
    import boto3
    from transformers import AutoConfig

    from legistra.api.spec import ModelSpec
    from legistra.trainer.modeling import ModelError, resolve_model

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="base-models")
    for f in tiny_models["bert"].iterdir():
        s3.upload_file(str(f), "base-models", f"legal/tiny-bert/{f.name}")
    local = resolve_model(ModelSpec(name="s3://base-models/legal/tiny-bert"), tmp_path)
    assert AutoConfig.from_pretrained(local).model_type == "bert"
    assert resolve_model(ModelSpec(name="s3://base-models/legal/tiny-bert/"), tmp_path) == local  # cached
    with pytest.raises(ModelError, match=r"spec\.model\.name: no objects under s3://base-models/nothing"):
        resolve_model(ModelSpec(name="s3://base-models/nothing"), tmp_path)


def test_a_model_that_is_not_there_is_a_model_error_and_a_network_error_is_not(tmp_path: Path) -> None:
    from transformers import AutoConfig

    from legistra.trainer.modeling import ModelError, model_loading

    with pytest.raises(ModelError, match=r"spec\.model\.name: cannot load '/no/such/model'"), \
            model_loading("/no/such/model"):
        AutoConfig.from_pretrained("/no/such/model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="Unrecognized model"), \
            model_loading(str(tmp_path / "empty")):
        AutoConfig.from_pretrained(str(tmp_path / "empty"))
    with pytest.raises(ConnectionError), model_loading("legal/model"):
        raise ConnectionError("connection reset by peer")  # transient: stays retryable


def test_every_bad_row_is_reported_at_once_up_to_twenty(tmp_path: Path) -> None:
    from legistra.trainer.data import MAX_REPORTED, DataProblems, preflight

    rows: list[dict[str, object]] = [{"text": f"clause {i}", "label": "low"} for i in range(60)]
    for i in (3, 11, 40):
        rows[i] = {"text": f"clause {i}"}
    f = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataProblems) as info:
        load_data(spec(f), tmp_path)
    assert [p.row for p in info.value.problems] == [4, 12, 41]
    assert str(info.value).splitlines()[0] == "3 bad row(s):"
    assert f"{f}, row 41, field 'label': missing label" in str(info.value)

    many = write_jsonl(tmp_path / "many.jsonl", [{"text": ""}] * 50)
    with pytest.raises(DataProblems) as info:
        preflight(spec(many), tmp_path)
    assert len(info.value.problems) == MAX_REPORTED and "and more" in str(info.value)


def test_preflight_checks_the_first_rows_only(tmp_path: Path) -> None:
    from legistra.trainer.data import preflight

    rows: list[dict[str, object]] = [{"text": f"clause {i}", "label": "low" if i % 2 else "high"} for i in range(30)]
    rows.append({"text": "past the limit"})  # row 31: no label
    f = write_jsonl(tmp_path / "train.jsonl", rows)
    assert preflight(spec(f), tmp_path, limit=30) == {"train": 30}
    with pytest.raises(DataError, match="row 31, field 'label'"):
        preflight(spec(f), tmp_path, limit=31)


# -- what training would fail on, found by the preflight (`legistra validate --data`, before `legistra train`) --

def preflight_error(spec_: TrainingRunSpec, tmp_path: Path) -> str:
    from legistra.trainer.data import preflight

    with pytest.raises(DataError) as info:
        preflight(spec_, tmp_path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_preflight_refuses_labels_outside_the_label_set_and_a_single_class(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "d.jsonl", [{"text": f"c {i}", "label": ["low", "high"][i % 2]} for i in range(9)])
    outside = TrainingRunSpec.model_validate({**spec(f).wire(), "classification": {"labels": ["low", "medium"]}})
    assert preflight_error(outside, tmp_path) == \
        f"{f}, row 2, field 'label': label 'high' is not in the label set ['low', 'medium']"
    single = write_jsonl(tmp_path / "one.jsonl", [{"text": f"c {i}", "label": "low"} for i in range(9)])
    assert preflight_error(spec(single), tmp_path) == \
        f"{single}, field 'label': risk-classification needs at least two labels (the data has only 'low')"


def test_preflight_names_the_row_with_invalid_utf8(tmp_path: Path) -> None:
    f = tmp_path / "d.jsonl"
    good = [json.dumps({"text": f"c {i}", "label": ["low", "high"][i % 2]}).encode() for i in range(6)]
    f.write_bytes(b"\n".join([*good[:3], b'{"text": "caf\xe9", "label": "low"}', *good[3:]]) + b"\n")
    assert preflight_error(spec(f), tmp_path) == f"{f}, row 4: not valid UTF-8"


@pytest.mark.parametrize(("suffix", "data", "message"), [
    (".csv", "text,label\nVertragsprüfung,low\nb,high\n".encode("latin-1"),
     "line 2: byte 0xfc is not UTF-8; the file looks like latin-1 or cp1252: convert it to UTF-8 first "
     "(iconv -f latin1 -t UTF-8)"),
    (".csv", "text,label\na,low\nb,high\n".encode("utf-16"),
     "the file is UTF-16; convert it to UTF-8 first (iconv -f UTF-16 -t UTF-8)"),
    (".jsonl", '{"text": "a", "label": "low"}\n'.encode("utf-16"), "the file is UTF-16; convert it"),
    (".parquet", b"PAR1 not really parquet PAR1", "not a readable parquet file (Parquet file size is"),
])
def test_preflight_gives_one_line_for_a_file_it_cannot_read(tmp_path: Path, suffix: str, data: bytes,
                                                             message: str) -> None:
    f = tmp_path / f"d{suffix}"
    f.write_bytes(data)
    assert preflight_error(spec(f), tmp_path).startswith(f"{f}: {message}")


def test_a_cuad_answer_without_answer_start_is_a_data_error(tmp_path: Path) -> None:
    doc = {"data": [{"title": "c1", "paragraphs": [{"context": "The licence is exclusive.", "qas": [
        {"id": "c1__Exclusivity", "question": "q", "answers": [{"text": "exclusive"}]}]}]}]}
    f = tmp_path / "cuad.json"
    f.write_text(json.dumps(doc))
    cuad = TrainingRunSpec.model_validate({**spec(f, task="clause-extraction").wire(), "data": {
        "train": str(f), "format": "cuad"}})
    assert preflight_error(cuad, tmp_path) == \
        f"{f}, row 1, field 'answers': an answer to 'c1__Exclusivity' needs an integer answer_start and a text"


def test_validate_data_reports_each_problem_in_one_line(tmp_path: Path) -> None:
    f = tmp_path / "d.csv"
    f.write_bytes("text,label\nVertragsprüfung,low\n".encode("latin-1"))
    run = tmp_path / "run.yaml"
    run.write_text(json.dumps({"apiVersion": "legistra.io/v1alpha1", "kind": "TrainingRun", "metadata": {"name": "r"},
                               "spec": spec(f).wire()}))
    res = legistra("--state-dir", str(tmp_path / "state"), "validate", "--data", str(run))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"error: {f}: line 2: byte 0xfc is not UTF-8" in res.stderr


# -- saved datasets, the Arrow path, one preparer per node --------------------------------------------------

def save_dict(folder: Path, **splits: list[dict[str, object]]) -> Path:
    import datasets

    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(folder))
    return folder


def clauses(n: int, prefix: str = "clause") -> list[dict[str, object]]:
    return [{"text": f"{prefix} {i}", "label": "high" if i % 3 else "low"} for i in range(n)]


def test_a_saved_datasetdict_supplies_train_and_validation(tmp_path: Path) -> None:
    folder = save_dict(tmp_path / "processed_risk", train=clauses(12), validation=clauses(4, "held"))
    data = load_data(spec(folder), tmp_path / "cache")  # format auto: the folder holds dataset_dict.json
    assert [r["text"] for r in rows_of(data.validation)] == [f"held {i}" for i in range(4)]
    assert len(data.train) == 12
    assert data.sources["train"].startswith(f"{folder}[train]#sha256=")
    assert data.sources["validation"].startswith(f"{folder}[validation]#sha256=")
    # The same folder again: the cache is hit, the rows are the same.
    assert load_data(spec(folder), tmp_path / "cache").fingerprint == data.fingerprint


def test_saved_dataset_split_names_fields_and_holdout(tmp_path: Path) -> None:
    import datasets

    rows = [{"clause": f"c {i}", "risk": i % 2} for i in range(10)]
    named = save_dict(tmp_path / "named", fit=rows, dev=rows[:3])
    data = load_data(spec(named, splits={"train": "fit", "validation": "dev"},
                          fields={"text": "clause", "label": "risk"}), tmp_path / "c")
    assert len(data.train) == 10 and len(data.validation) == 3
    assert rows_of(data.validation)[1] == {"text": "c 1", "label": "1"}  # integer labels are labels too
    with pytest.raises(DataError) as info:
        load_data(spec(named), tmp_path / "c")
    assert str(info.value) == (f"{named}, field 'splits.train': the saved DatasetDict has no split 'train' "
                               "(it has ['dev', 'fit']); set spec.data.splits.train")

    only_train = save_dict(tmp_path / "only-train", train=clauses(10))
    data = load_data(spec(only_train, validationSplit=0.2), tmp_path / "c")
    assert (len(data.train), len(data.validation)) == (8, 2)  # no validation split: one is held out

    single = tmp_path / "single"
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["low", "high"])})
    datasets.Dataset.from_dict({"text": ["a", "b", "c", "d"], "label": [0, 1, 1, 0]},
                               features=features).save_to_disk(str(single))
    data = load_data(spec(single, validationSplit=0.25), tmp_path / "c")  # a saved Dataset acts like a file
    assert sorted(r["label"] for r in rows_of(data.train) + rows_of(data.validation)) == [
        "high", "high", "low", "low"]  # ClassLabel ids become their names

    bad = save_dict(tmp_path / "bad", train=[{"text": "fine", "label": "x"}, {"text": " ", "label": "y"}])
    with pytest.raises(DataError, match=r"bad\[train\], row 2, field 'text': missing or empty text"):
        load_data(spec(bad), tmp_path / "c")

    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(DataError, match="a folder, but not one written by save_to_disk"):
        load_data(spec(plain), tmp_path / "c")


def test_a_saved_datasetdict_on_s3_is_downloaded_once(tmp_path: Path, s3_endpoint: str) -> None:
    import boto3

    folder = save_dict(tmp_path / "processed_summary", train=[{"text": f"bill {i}", "summary": f"s {i}"}
                                                              for i in range(6)],
                       validation=[{"text": "bill v", "summary": "s v"}])
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="saved-data")
    for f in folder.rglob("*"):
        if f.is_file():
            s3.upload_file(str(f), "saved-data", f"legal/processed_summary/{f.relative_to(folder)}")
    uri = "s3://saved-data/legal/processed_summary"
    data = load_data(spec(uri, task="summarization"), tmp_path)
    assert (len(data.train), len(data.validation)) == (6, 1)
    assert data.sources["train"].startswith(f"{uri}[train]#sha256=")
    again = load_data(spec(uri + "/", task="summarization"), tmp_path)
    assert rows_of(again.validation) == [{"text": "bill v", "summary": "s v"}]
    assert len(list((tmp_path / "s3" / "saved-data").iterdir())) == 1  # one download, keyed by the ETags
    with pytest.raises(DataError, match=r"no saved dataset .* under this prefix; set spec\.data\.format"):
        load_data(spec("s3://saved-data/legal", task="summarization"), tmp_path)


@pytest.mark.parametrize(
    ("task", "multi", "columns"),
    [
        ("risk-classification", False, {"text": ["a", " b "], "label": ["x", "y"]}),
        ("risk-classification", False, {"text": ["a", "b"], "label": [1, 2]}),
        ("risk-classification", False, {"text": ["a", "b"], "label": ["x", ""]}),
        ("risk-classification", False, {"text": ["a", "b"], "label": ["x", None]}),
        ("risk-classification", False, {"text": ["a", "b"], "label": [True, False]}),
        ("risk-classification", False, {"text": ["a", "b"], "label": [1.0, 2.0]}),
        ("risk-classification", False, {"text": ["a", "b"], "label": [["x"], ["y"]]}),
        ("risk-classification", True, {"text": ["a", "b"], "label": [["x", "y"], []]}),
        ("risk-classification", True, {"text": ["a", "b"], "label": [[1], [2, 3]]}),
        ("risk-classification", True, {"text": ["a", "b"], "label": ["x", "y"]}),
        ("risk-classification", True, {"text": ["a", "b"], "label": [["x", None], ["y"]]}),
        ("risk-classification", False, {"text": ["a", "\t\n"], "label": ["x", "y"]}),
        ("risk-classification", False, {"text": ["a", "\u3000"], "label": ["x", "y"]}),
        ("risk-classification", False, {"text": ["a", None], "label": ["x", "y"]}),
        ("risk-classification", False, {"text": [1, 2], "label": ["x", "y"]}),
        ("risk-classification", False, {"txt": ["a", "b"], "label": ["x", "y"]}),
        ("summarization", False, {"text": ["a", "b"], "summary": ["s", "t"]}),
        ("summarization", False, {"text": ["a", "b"], "summary": ["s", " "]}),
        ("summarization", False, {"text": ["a", "b"]}),
        ("clause-extraction", False, {"text": ["abc"], "spans": [[{"start": 0, "end": 2, "label": "x"}]]}),
    ],
)
def test_the_vectorised_check_is_never_laxer_than_the_row_check(task: str, multi: bool,
                                                                 columns: dict[str, list[object]]) -> None:
    """A batch the vectorised check passes converts to exactly the rows the row-by-row check returns; a batch
    with any row the row check refuses is never passed."""
    from legistra.api.spec import FieldNames
    from legistra.trainer.columnar import Canon, canonical
    from legistra.trainer.data import check_row

    canon = Canon(task, FieldNames(), multi)  # type: ignore[arg-type]
    table = pa.table(columns)
    expected: list[dict[str, object]] | None = []
    for i, row in enumerate(table.to_pylist(), start=1):
        try:
            expected.append(check_row(canon, row, "t", i))  # type: ignore[union-attr]
        except DataError:
            expected = None
            break
    fast = canonical(table, canon)
    if expected is None:
        assert fast is None
    elif fast is not None:
        assert fast.to_pylist() == expected


def test_jsonl_the_arrow_parser_refuses_is_read_line_by_line(tmp_path: Path) -> None:
    f = tmp_path / "mixed.jsonl"
    # Mixed label types (Arrow wants one per column), a blank line, a non-ASCII line separator inside a string.
    f.write_text('{"text": "a", "label": 1}\n\n{"text": "b\u2028c", "label": "one"}\n{"text": "d", "label": 1}\n',
                 encoding="utf-8")
    data = load_data(spec(f, validationSplit=0.34), tmp_path)
    assert sorted(r["label"] for r in rows_of(data.train) + rows_of(data.validation)) == ["1", "1", "one"]
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"text": "a", "label": "x"}\n{"text": "caf\xe9", "label": "y"}\n')
    with pytest.raises(DataError, match=r"latin1.jsonl, row 2: not valid UTF-8"):
        load_data(spec(bad), tmp_path)


def test_one_process_per_node_prepares_the_others_map_its_files(tmp_path: Path) -> None:
    """Three ranks start at once on the same cache: one converts the data, all three map the same file."""
    import subprocess
    import sys

    f = write_jsonl(tmp_path / "train.jsonl", clauses(5000))
    code = (
        "import json, logging, sys; from pathlib import Path; logging.basicConfig(level=logging.INFO)\n"
        "from tests.test_data import spec; from legistra.trainer.data import load_data\n"
        "d = load_data(spec(sys.argv[1]), Path(sys.argv[2]))\n"
        "print(json.dumps([d.train.cache_files[0]['filename'], len(d.train), len(d.validation)]))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(f), str(tmp_path / "cache")], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).parent.parent)
             for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert len({o[0] for o in outs}) == 1  # the same file, the same row counts
    assert json.loads(outs[0][0])[1:] == [4500, 500]
    assert sum("stored as Arrow" in o[1] for o in outs) == 1  # converted once


def test_token_ids_are_the_tokenizers_own(tiny_models: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    from legistra.trainer.tasks.base import token_ids

    texts = ["The Licensee shall indemnify the Licensor.", "x " * 300, "Governing law: Delaware; notice in 30 days."]
    for name in ("bert", "bart"):
        tok = AutoTokenizer.from_pretrained(tiny_models[name])
        assert token_ids(tok, texts, 32) == tok(texts, truncation=True, max_length=32)["input_ids"]


def test_prepare_writes_a_saved_datasetdict(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "billsum.jsonl", [{"text": f"SECTION {i}.", "summary": f"Amends {i}."}
                                                   for i in range(10)])
    dest = tmp_path / "processed_summary"
    res = legistra("data", "prepare", "--format", "billsum", "--to", "saved-dataset", "--validation-split", "0.2",
                   str(src), str(dest))
    assert res.returncode == 0, res.stderr
    data = load_data(spec(dest, task="summarization"), tmp_path / "cache")
    assert (len(data.train), len(data.validation)) == (8, 2)


def test_the_tokenization_pass_gets_the_tokenizer_threads_and_gives_them_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from legistra.trainer.train import tokenizer_threads

    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # as pods and `legistra train` set it
    with tokenizer_threads():
        assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"  # data-loader workers fork with it off
    monkeypatch.delenv("TOKENIZERS_PARALLELISM")
    with tokenizer_threads():
        pass
    assert "TOKENIZERS_PARALLELISM" not in os.environ
