"""Data readers, row checks with their exact messages, public-format conversion, DeepSpeed configs."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from legistra.api.spec import DataSpec, DeepSpeedSpec
from legistra.trainer.data import DataError, load_data, split_holdout
from legistra.trainer.dsconfig import deepspeed_config, zero_stage_of
from legistra.trainer.prepare import prepare
from tests.conftest import legistra


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def spec(train: Path | str, **kw: object) -> DataSpec:
    return DataSpec.model_validate({"train": str(train), **kw})


def test_jsonl_csv_parquet_read_the_same(tmp_path: Path) -> None:
    rows = [{"text": f"clause {i}", "label": "high" if i % 2 else "low"} for i in range(10)]
    j = write_jsonl(tmp_path / "d.jsonl", rows)
    c = tmp_path / "d.csv"
    c.write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows))
    p = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), p)
    loaded = [load_data("risk-classification", spec(f), tmp_path, seed=1) for f in (j, c, p)]
    assert loaded[0].train == loaded[1].train == loaded[2].train
    assert len(loaded[0].train) == 9 and len(loaded[0].validation) == 1
    assert loaded[0].fingerprint != loaded[2].fingerprint  # different bytes, different cache key


def test_csv_cells_hold_json_lists(tmp_path: Path) -> None:
    c = tmp_path / "d.csv"
    c.write_text('text,label\n"a clause","[""x"", ""y""]"\n"b clause",x\n')
    data = load_data("risk-classification", spec(c, validationSplit=0.5), tmp_path, seed=0)
    assert {"text": "a clause", "label": ["x", "y"]} in data.train + data.validation


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
        load_data(task, spec(f), tmp_path, seed=0)  # type: ignore[arg-type]
    assert str(info.value) == f"{f}, {message}"


def test_invalid_json_line_and_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "t.jsonl"
    f.write_text('{"text": "a", "label": "x"}\n{"text": broken\n')
    with pytest.raises(DataError, match=r"t.jsonl, row 2: not valid JSON"):
        load_data("risk-classification", spec(f), tmp_path, seed=0)
    with pytest.raises(DataError, match="file not found"):
        load_data("risk-classification", spec(tmp_path / "nope.jsonl"), tmp_path, seed=0)


def test_csv_row_numbers_count_the_header(tmp_path: Path) -> None:
    c = tmp_path / "d.csv"
    c.write_text("text,label\nfine,x\n,x\n")
    with pytest.raises(DataError) as info:
        load_data("risk-classification", spec(c), tmp_path, seed=0)
    assert str(info.value) == f"{c}, row 3, field 'text': missing or empty text"


def test_custom_field_names(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "t.jsonl", [{"clause": "a b", "risk": "hi"}, {"clause": "c d", "risk": "lo"}])
    data = load_data("risk-classification", spec(f, fields={"text": "clause", "label": "risk"}, validationSplit=0.5),
                     tmp_path, seed=0)
    assert sorted(r["label"] for r in data.train + data.validation) == ["hi", "lo"]


def test_holdout_split_is_deterministic_and_disjoint() -> None:
    rows = [{"i": i} for i in range(100)]
    a_train, a_val = split_holdout(rows, 0.2, seed=3)
    _, b_val = split_holdout(rows, 0.2, seed=3)
    assert a_val == b_val and len(a_val) == 20 and len(a_train) == 80
    assert not {r["i"] for r in a_val} & {r["i"] for r in a_train}


def test_s3_data_is_downloaded_once_by_etag(tmp_path: Path, s3_endpoint: str) -> None:
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="legal-data")
    body = "".join(json.dumps({"text": f"t{i}", "label": "a" if i % 2 else "b"}) + "\n" for i in range(6))
    s3.put_object(Bucket="legal-data", Key="risk/train.jsonl", Body=body.encode())
    data = load_data("risk-classification", spec("s3://legal-data/risk/train.jsonl"), tmp_path, 0)
    assert len(data.train) + len(data.validation) == 6
    assert data.sources["train"].startswith("s3://legal-data/risk/train.jsonl#sha256=")
    again = load_data("risk-classification", spec("s3://legal-data/risk/train.jsonl"), tmp_path, 0)
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
    data = load_data("risk-classification", spec(f"hf://{folder}:train", validationSplit=0.25), tmp_path, seed=0)
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
        load_data("risk-classification", spec(f), tmp_path, seed=0)
    assert [p.row for p in info.value.problems] == [4, 12, 41]
    assert str(info.value).splitlines()[0] == "3 bad row(s):"
    assert f"{f}, row 41, field 'label': missing label" in str(info.value)

    many = write_jsonl(tmp_path / "many.jsonl", [{"text": ""}] * 50)
    with pytest.raises(DataProblems) as info:
        preflight("risk-classification", spec(many), tmp_path)
    assert len(info.value.problems) == MAX_REPORTED and "and more" in str(info.value)


def test_preflight_checks_the_first_rows_only(tmp_path: Path) -> None:
    from legistra.trainer.data import preflight

    rows: list[dict[str, object]] = [{"text": f"clause {i}", "label": "low"} for i in range(30)]
    rows.append({"text": "past the limit"})  # row 31: no label
    f = write_jsonl(tmp_path / "train.jsonl", rows)
    assert preflight("risk-classification", spec(f), tmp_path, limit=30) == {"train": 30}
    with pytest.raises(DataError, match="row 31, field 'label'"):
        preflight("risk-classification", spec(f), tmp_path, limit=31)
