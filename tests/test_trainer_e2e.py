"""The trainer end to end on tiny models: torchrun with 2 processes, DeepSpeed ZeRO on gloo (CPU)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from legistra.registry.registry import Registry
from tests.conftest import VENV_BIN, base_run, diverging_model, legistra, write_run

pytestmark = pytest.mark.slow


def train(tmp_path: Path, doc: dict[str, Any], *extra: str, env: dict[str, str] | None = None,
          nproc: int = 2) -> dict[str, Any]:
    run_file = write_run(tmp_path / f"{doc['metadata']['name']}.yaml", doc)
    res = legistra("--state-dir", str(tmp_path / "state"), "train", str(run_file), "--nproc", str(nproc), "--json",
                   *extra, env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    out = res.stdout[res.stdout.index("{"):]
    result: dict[str, Any] = json.loads(out)
    return result


def saved_datasetdict(folder: Path, stem: str) -> Path:
    """The example rows of `stem` as a DatasetDict saved with `save_to_disk` (train and validation splits)."""
    import datasets

    from tests.conftest import DATA

    def rows(split: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (DATA / f"{stem}_{split}.jsonl").read_text().splitlines()]

    datasets.DatasetDict({split: datasets.Dataset.from_list(rows(split)) for split in ("train", "validation")}
                         ).save_to_disk(str(folder))
    return folder


def mlflow_run(tracking_uri: str, run_id: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri).get_run(run_id)


@pytest.mark.parametrize(
    ("task", "model", "metric"),
    [
        ("risk-classification", "bert", "eval_f1_macro"),
        ("clause-extraction", "bert", "eval_precision_at_80_recall"),
        ("summarization", "bart", "eval_rougeL"),
    ],
)
def test_task_end_to_end_with_zero2_on_two_ranks(
    tmp_path: Path, tiny_models: dict[str, Path], task: str, model: str, metric: str
) -> None:
    # Gradient checkpointing on one task: the adapter check below fails if LoRA silently never trained.
    doc = base_run(task, tiny_models[model], f"e2e-{task}", deepspeed={"zeroStage": 2},
                   training={"gradientCheckpointing": task == "clause-extraction"})
    if task == "summarization":  # as the training guide holds its data: a DatasetDict saved with save_to_disk
        doc["spec"]["data"]["train"] = str(saved_datasetdict(tmp_path / "processed_summary", "bills"))
        del doc["spec"]["data"]["validation"]
    result = train(tmp_path, doc)
    assert result["globalStep"] == 6
    assert metric in result["metrics"]
    assert math.isfinite(result["metrics"]["eval_loss"])

    reg = Registry.open(str(tmp_path / "state" / "registry"))
    mv = reg.version(f"e2e-{task}", result["model"]["version"])
    manifest = mv.manifest
    assert manifest["task"] == task
    assert manifest["worldSize"] == 2 and manifest["zeroStage"] == 2
    assert manifest["adapterCheck"]["lora_b_abs_sum"] > 0  # the adapter trained (lora_B starts at zero)
    assert "adapter_model.safetensors" in manifest["files"] and "tokenizer.json" in manifest["files"]
    assert manifest["data"]["train"].split("#sha256=")[1]  # data lineage carries a checksum
    if task == "summarization":
        assert manifest["data"]["validation"].startswith(f"{tmp_path / 'processed_summary'}[validation]#sha256=")
    assert manifest["mlflow"]["runId"] == result["mlflow"]["runId"]

    run = mlflow_run(result["mlflow"]["trackingUri"], result["mlflow"]["runId"])
    assert run.info.status == "FINISHED"
    assert run.data.params["resolved.world_size"] == "2"
    assert run.data.params["resolved.zero_stage"] == "2"
    assert run.data.params["spec.training.learningRate"] == "0.003"
    assert "loss" in run.data.metrics and metric in run.data.metrics
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=result["mlflow"]["trackingUri"])
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == [1, 2, 3, 4, 5, 6]  # per-step training loss, logged once (rank 0)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"training_curves.png", "trainingrun.json", "deepspeed_config.json"} <= artifacts
    if task == "risk-classification":
        # Random 3-way head: the first loss is ~ln 3 on every world size (regression: HF doubled it on 2 ranks).
        assert 0.9 < losses[0].value < 1.35


def test_classification_under_zero3_saves_a_real_adapter_and_head(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    doc = base_run("risk-classification", tiny_models["bert"], "zero3-risk", deepspeed={"zeroStage": 3})
    result = train(tmp_path, doc)
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "state" / "runs" / "zero3-risk" / "model" / "adapter_model.safetensors"))
    heads = [k for k in tensors if "classifier" in k]
    assert heads and all(tensors[k].numel() > 0 for k in heads)
    assert any("lora_B" in k and tensors[k].abs().sum() > 0 for k in tensors)
    assert result["model"]["version"] == 1


def test_interrupted_run_resumes_to_the_same_final_step(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    doc = base_run("risk-classification", tiny_models["bert"], "resumable",
                   training={"maxSteps": 40, "saveSteps": 10, "batchSize": 2},
                   data={"maxSamples": 200}, deepspeed={"zeroStage": 2})
    run_file = write_run(tmp_path / "resumable.yaml", doc)
    state = tmp_path / "state"
    ckpts = state / "runs" / "resumable" / "checkpoints"
    proc = subprocess.Popen([str(VENV_BIN / "legistra"), "--state-dir", str(state), "train", str(run_file),
                             "--nproc", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (ckpts / "checkpoint-10" / "trainer_state.json").exists():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: launcher and both ranks, as a node loss would
    proc.wait()
    assert not (state / "runs" / "resumable" / "result.json").exists(), "the run finished before it was killed"
    done = sorted(int(p.name.split("-")[1]) for p in ckpts.glob("checkpoint-*"))
    assert done and done[-1] < 40

    result = train(tmp_path, doc)
    assert result["globalStep"] == 40
    assert result["resumedFrom"].endswith(f"checkpoint-{done[-1]}")
    manifest = Registry.open(str(state / "registry")).version("resumable", 1).manifest
    assert manifest["tokenizationCached"] is True  # the interrupted attempt's tokenization was reused
    # One MLflow run for the whole TrainingRun, across the restart.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=result["mlflow"]["trackingUri"])
    runs = client.search_runs([result["mlflow"]["experimentId"]])
    assert len(runs) == 1
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")]
    assert max(steps) == 40 and min(steps) == 1

    again = legistra("--state-dir", str(state), "train", str(run_file))
    assert again.returncode == 0 and "already finished" in again.stdout


def test_changed_spec_refuses_to_resume(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    doc = base_run("risk-classification", tiny_models["bert"], "changing")
    train(tmp_path, doc, nproc=1)
    doc["spec"]["training"]["learningRate"] = 0.01
    res = legistra("--state-dir", str(tmp_path / "state"), "train", str(write_run(tmp_path / "c.yaml", doc)))
    assert res.returncode == 2
    assert "with a different spec; rename the run or pass --fresh" in res.stderr


def test_bad_data_row_fails_with_file_row_and_field(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": "low"}\n{"text": "no label here"}\n')
    doc = base_run("risk-classification", tiny_models["bert"], "bad-data", data={"train": str(bad)})
    res = legistra("--state-dir", str(tmp_path / "state"), "train", str(write_run(tmp_path / "b.yaml", doc)))
    assert res.returncode != 0
    assert f"error: {bad}, row 2, field 'label': missing label" in res.stderr


def test_mlflow_server_and_s3_registry_with_promotion_and_wandb_offline(
    tmp_path: Path, tiny_models: dict[str, Path], mlflow_server: str, bucket: str
) -> None:
    """A full run lands in a real MLflow server and in S3; a second run is gated against the first."""
    uri = f"s3://{bucket}/models"
    doc = base_run("risk-classification", tiny_models["bert"], "tracked",
                   registry={"uri": uri, "promotion": {"metric": "eval_loss", "direction": "minimize"}},
                   tracking={"mlflow": {"experiment": "legal-risk"}, "wandb": {"project": "legistra-tests"}})
    env = {"MLFLOW_TRACKING_URI": mlflow_server, "WANDB_MODE": "offline"}
    # The first run reads its data from a DatasetDict saved to S3 (the second from the example jsonl files).
    import boto3

    folder = saved_datasetdict(tmp_path / "risk-dict", "risk")
    for f in folder.rglob("*"):
        if f.is_file():
            boto3.client("s3").upload_file(str(f), bucket, f"data/risk-dict/{f.relative_to(folder)}")
    first_doc = json.loads(json.dumps(doc))
    first_doc["spec"]["data"]["train"] = f"s3://{bucket}/data/risk-dict"
    del first_doc["spec"]["data"]["validation"]
    first = train(tmp_path, first_doc, env=env)
    lineage = Registry.open(uri).version("tracked", 1).manifest["data"]
    assert lineage["validation"].startswith(f"s3://{bucket}/data/risk-dict[validation]#sha256=")
    assert first["mlflow"]["trackingUri"] == mlflow_server
    assert first["mlflow"]["url"].startswith(mlflow_server)
    assert first["model"]["uri"] == f"{uri}/tracked/v1"
    assert first["model"]["alias"] == "champion"
    assert first["promotion"]["reason"] == "no version holds 'champion' yet"

    doc["spec"]["training"]["learningRate"] = 1e-7  # learns nothing: must not take the alias
    doc["metadata"]["name"] = "tracked-2"
    # The second run finds its server through a URI with a password in it (the server ignores it): the
    # password must end up nowhere but in MLflow's own credential variables.
    canary = "CANARY-" + os.urandom(6).hex()
    with_password = mlflow_server.replace("://", f"://alice:{canary}@", 1)
    run_file = write_run(tmp_path / "tracked-2.yaml", doc)
    res = legistra("--state-dir", str(tmp_path / "state"), "train", str(run_file), "--nproc", "2", "--json",
                   env={**env, "MLFLOW_TRACKING_URI": with_password})
    assert res.returncode == 0, res.stderr[-4000:]
    second = json.loads(res.stdout[res.stdout.index("{"):])
    assert second["mlflow"]["trackingUri"] == mlflow_server
    assert canary not in res.stdout + res.stderr
    assert second["model"]["version"] == 2
    decision = second["promotion"]
    assert decision["incumbent_version"] == 1 and decision["candidate"] is not None
    reg = Registry.open(uri)
    assert reg.version("tracked", 2).manifest["promotionGate"] == {"metric": "eval_loss", "direction": "minimize",
                                                                   "alias": "champion"}
    assert reg.resolve("tracked", "champion") == (2 if decision["promote"] else 1)
    if decision["promote"]:
        assert reg.alias("tracked", "champion")["reason"] == decision["reason"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    versions = client.search_model_versions("name = 'tracked'")
    assert sorted(v.tags["legistra.version"] for v in versions) == ["1", "2"]
    assert {v.run_id for v in versions} == {first["mlflow"]["runId"], second["mlflow"]["runId"]}
    champion = client.get_model_version_by_alias("tracked", "champion")
    assert champion.tags["legistra.version"] == str(reg.resolve("tracked", "champion"))
    run = client.get_run(second["mlflow"]["runId"])
    assert run.data.tags["legistra.promotion"] in ("promoted", "rejected")
    assert "tracking.wandb.apiKeySecret" not in run.data.params

    leaks = [str(f) for f in (tmp_path / "state" / "runs" / "tracked-2").rglob("*")
             if f.is_file() and canary.encode() in f.read_bytes()]
    assert not leaks, f"the password reached {leaks}"
    assert canary not in json.dumps(reg.version("tracked", 2).manifest)
    assert canary not in json.dumps([run.data.params, run.data.tags])
    artifacts = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "artifacts")))
    assert not [f for f in artifacts.rglob("*") if f.is_file() and canary.encode() in f.read_bytes()]

    offline = list((tmp_path / "state" / "runs" / "tracked" / "wandb").glob("offline-run-*"))
    assert offline and any(p.suffix == ".wandb" for p in offline[0].iterdir())


def test_mlflow_down_never_loses_the_model(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    from kit.ports import free_port

    doc = base_run("risk-classification", tiny_models["bert"], "no-tracking")
    env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}
    result = train(tmp_path, doc, env=env, nproc=1)
    assert result["model"]["version"] == 1
    assert "MLflow start failed after 3 attempts" in result["mlflow"]["error"]


def test_train_with_tracking_api_on_a_datasetdict(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    import datasets
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from legistra.trainer.notebook import train_with_tracking

    rows = [json.loads(line) for line in (Path(__file__).parent.parent / "examples/data/risk_train.jsonl")
            .read_text().splitlines()[:48]]
    labels = sorted({r["label"] for r in rows})
    ds = datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{"text": r["text"], "label": labels.index(r["label"])} for r in rows[:40]]),
        "validation": datasets.Dataset.from_list([{"text": r["text"], "label": labels.index(r["label"])}
                                                  for r in rows[40:]]),
    })
    tok = AutoTokenizer.from_pretrained(tiny_models["bert"])
    model = AutoModelForSequenceClassification.from_pretrained(tiny_models["bert"], num_labels=len(labels))
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the default MLflow store lives under ./.legistra
    try:
        result = train_with_tracking(model, tok, ds, tmp_path / "nb", use_lora=True, use_wandb=True, use_mlflow=True,
                                     learning_rate=3e-3, num_train_epochs=1, per_device_train_batch_size=8,
                                     logging_steps=1)
    finally:
        os.chdir(cwd)
    assert {"eval_loss", "eval_accuracy", "eval_f1_macro"} <= set(result.metrics)
    assert (tmp_path / "nb" / "model" / "adapter_model.safetensors").exists()
    assert result.mlflow_run_id is not None
    assert any("loss" in h for h in result.history)


def test_merged_model_is_registered_after_a_logit_check(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    doc = base_run("risk-classification", tiny_models["bert"], "merged", registry={"mergeAdapter": True})
    result = train(tmp_path, doc, nproc=1)
    manifest = Registry.open(str(tmp_path / "state" / "registry")).version("merged", 1).manifest
    assert "merged/model.safetensors" in manifest["files"] and "adapter_model.safetensors" in manifest["files"]
    from transformers import AutoModelForSequenceClassification

    merged = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "state" / "registry" / "merged" / "v1" / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert result["model"]["version"] == 1


def test_multi_label_classification(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """LexGLUE unfair_tos style: each clause may carry several unfair-term types (or none of a kind)."""
    rows = [json.loads(line) for line in (Path(__file__).parent.parent / "examples/data/risk_train.jsonl")
            .read_text().splitlines()[:80]]
    data = tmp_path / "multi.jsonl"
    kinds = ["liability", "termination", "jurisdiction"]
    with data.open("w") as fh:
        for i, r in enumerate(rows):
            labels = [k for j, k in enumerate(kinds) if (i >> j) & 1] or ["liability"]
            fh.write(json.dumps({"text": r["text"], "label": labels}) + "\n")
    doc = base_run("risk-classification", tiny_models["bert"], "multi", data={"train": str(data)},
                   classification={"multiLabel": True})
    del doc["spec"]["data"]["validation"]  # held out from train instead
    result = train(tmp_path, doc, nproc=1)
    assert {"eval_accuracy", "eval_f1_macro", "eval_f1_micro"} <= set(result["metrics"])
    labels = json.loads((tmp_path / "state" / "runs" / "multi" / "model" / "legistra.json").read_text())["labels"]
    assert labels == sorted(kinds)


def test_bad_data_is_one_clean_error_before_training(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """Every bad row at once, before torchrun starts: no traceback, no advice to resume; `validate --data` says
    the same."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": "low"}\n{"text": "no label here"}\n{"text": broken\n'
                   '{"text": "fine too", "label": "high"}\n{"text": "", "label": "low"}\n')
    doc = base_run("risk-classification", tiny_models["bert"], "bad-rows", data={"train": str(bad)})
    run_file = write_run(tmp_path / "b.yaml", doc)
    res = legistra("--state-dir", str(tmp_path / "state"), "train", str(run_file))
    assert res.returncode == 2
    for row in (f"{bad}, row 2, field 'label': missing label", f"{bad}, row 3: not valid JSON",
                f"{bad}, row 5, field 'text': missing or empty text"):
        assert row in res.stderr
    assert "Traceback" not in res.stderr and "resume" not in res.stderr and "training '" not in res.stderr
    checked = legistra("--state-dir", str(tmp_path / "state"), "validate", "--data", str(run_file))
    assert checked.returncode == 1 and f"{bad}, row 5, field 'text'" in checked.stderr


def test_a_model_that_does_not_exist_is_not_worth_resuming(tmp_path: Path) -> None:
    doc = base_run("risk-classification", tmp_path / "no-such-model", "no-model")
    res = legistra("--state-dir", str(tmp_path / "state"), "train", str(write_run(tmp_path / "m.yaml", doc)))
    assert res.returncode == 2, res.stderr[-2000:]
    assert f"error: InvalidModel: spec.model.name: cannot load '{tmp_path / 'no-such-model'}'" in res.stderr
    assert "resuming would fail the same way" in res.stderr and "run the same command again" not in res.stderr


@pytest.mark.parametrize("task", ["summarization", "clause-extraction"])
def test_notebook_api_runs_the_task_path_with_its_metrics(tmp_path: Path, tiny_models: dict[str, Path],
                                                         task: str) -> None:
    """The notebook API trains every task through the same path as `legistra train`, with the task's metrics."""
    import datasets
    from transformers import AutoModelForSeq2SeqLM, AutoModelForTokenClassification, AutoTokenizer

    from legistra.trainer.notebook import train_with_tracking

    files = {"summarization": "bills", "clause-extraction": "clauses"}[task]
    rows = [json.loads(line) for line in (Path(__file__).parent.parent / f"examples/data/{files}_train.jsonl")
            .read_text().splitlines()[:24]]
    ds = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:18]),
                               "validation": datasets.Dataset.from_list(rows[18:])})
    if task == "summarization":
        tok = AutoTokenizer.from_pretrained(tiny_models["bart"])
        model = AutoModelForSeq2SeqLM.from_pretrained(tiny_models["bart"])
    else:
        tok = AutoTokenizer.from_pretrained(tiny_models["bert"])
        clause_types = sorted({s["label"] for r in rows for s in r["spans"]})
        model = AutoModelForTokenClassification.from_pretrained(tiny_models["bert"],
                                                                num_labels=1 + 2 * len(clause_types))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = train_with_tracking(model, tok, ds, tmp_path / "nb", use_wandb=False, max_length=64,
                                     max_steps=4, per_device_train_batch_size=4, learning_rate=3e-3)
    finally:
        os.chdir(cwd)
    expected = {"summarization": {"eval_rouge1", "eval_rougeL"}, "clause-extraction": {"eval_f1", "eval_aupr"}}[task]
    assert expected <= set(result.metrics), result.metrics
    assert result.mlflow_run_id is not None and (tmp_path / "nb" / "model" / "adapter_model.safetensors").exists()
    with pytest.raises(TypeError, match=r"unsupported training arguments \['report_to'\]"):
        train_with_tracking(model, tok, ds, tmp_path / "nb2", report_to="all")


def test_notebook_run_identity_is_the_same_in_every_process(tmp_path: Path) -> None:
    """W&B and MLflow find a notebook run again by its key: it must not depend on Python's salted hash()."""
    code = ("import sys; from pathlib import Path; from legistra.trainer.notebook import notebook_run;"
            "from legistra.trainer.train import run_key;"
            "r = notebook_run('risk-classification', 'tiny', Path(sys.argv[1]), labels=None, use_lora=True, lora=None,"
            " use_wandb=True, experiment='e', max_length=64, training_args={'learning_rate': 0.001});"
            "print(run_key(r))")
    keys = {subprocess.run([sys.executable, "-c", code, str(tmp_path / "My Notebook Run")], capture_output=True,
                           text=True, check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
            for seed in ("1", "2", "3")}
    assert len(keys) == 1 and next(iter(keys)).startswith("local-my-notebook-run-")


def test_a_run_that_diverges_fails_as_diverged_and_registers_nothing(tmp_path: Path,
                                                                       tiny_models: dict[str, Path]) -> None:
    """Weights that are NaN from the start train to NaN: exit 2, reason Diverged, no version, no advice to
    resume (before: exit 0 and the NaN model registered as a new version)."""
    poisoned = diverging_model(tiny_models["bert"], tmp_path / "poisoned")
    doc = base_run("risk-classification", poisoned, "diverges")
    run_file = write_run(tmp_path / "d.yaml", doc)
    res = legistra("--state-dir", str(tmp_path / "state"), "train", str(run_file), "--nproc", "1")
    assert res.returncode == 2, res.stderr[-3000:]
    assert "error: Diverged: " in res.stderr and "the run diverged" in res.stderr
    assert "run the same command again to resume" not in res.stderr
    assert Registry.open(str(tmp_path / "state" / "registry")).versions("diverges") == []
    assert not (tmp_path / "state" / "runs" / "diverges" / "result.json").exists()


def test_a_max_length_beyond_the_models_positions_is_refused_before_training(
        tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """The tiny BERT has 256 positions: validate and `legistra train` say so from its config.json before any process
    starts, and the trainer itself (as a pod runs it) refuses before the first step (exit 2, TrainerError in the
    termination message) instead of an index error at the first long batch."""
    doc = base_run("risk-classification", tiny_models["bert"], "too-long", data={"maxLength": 512})
    run_file = write_run(tmp_path / "t.yaml", doc)
    res = legistra("validate", str(run_file))
    assert res.returncode == 1
    assert "error: spec.data.maxLength: 512 tokens is more than" in res.stdout and "(256 positions" in res.stdout
    res = legistra("--state-dir", str(tmp_path / "state"), "train", str(run_file), "--nproc", "1")
    assert res.returncode == 2, res.stderr[-3000:]
    assert "spec.data.maxLength: 512 tokens is more than" in res.stderr
    assert "run the same command again to resume" not in res.stderr
    config = tmp_path / "run.json"
    config.write_text(json.dumps(doc))
    termination = tmp_path / "termination-log"
    pod = subprocess.run([sys.executable, "-m", "legistra.trainer", "--config", str(config), "--output-dir",
                          str(tmp_path / "out"), "--state-dir", str(tmp_path / "pod-state")], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "LEGISTRA_TERMINATION_LOG": str(termination)})
    assert pod.returncode == 2, pod.stderr[-3000:]
    assert termination.read_text().startswith("TrainerError: invalid TrainingRun: spec.data.maxLength: 512 tokens")


def test_trainer_v2_progress_reaches_an_https_endpoint_as_the_trainer_controller_expects(
        tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """Trainer v2's progress API (KEP-2779, feature gate TrainJobStatus): the controller injects
    KUBEFLOW_TRAINER_SERVER_URL / _CA_CERT / _TOKEN into the pod, and transformers' own KubeflowCallback (added by
    TrainingArguments even with report_to "none") POSTs {"trainerStatus": ...} there. Nothing of ours does it, so a
    transformers upgrade or a change of ours could break it unseen: an HTTPS stand-in of the endpoint, with its own
    CA and a bearer token file, receives every report of a real training; each must be a valid trainerStatus of the
    real v2.3 CRD, and the last one says 100%."""
    import http.server
    import ssl
    import threading

    import jsonschema
    import yaml

    from kit.apiserver import SHARED_CANDIDATES
    from kit.ports import free_port

    shared = next((p for p in SHARED_CANDIDATES if (p / "reference").is_dir()), None)
    if shared is None:
        pytest.skip("no shared/reference beside the checkout")
    crd = yaml.safe_load((shared / "reference" / "trainer.kubeflow.org_trainjobs.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"][
        "trainerStatus"]
    # The endpoint's own CA and serving certificate, as the controller's webhook certificates are.
    certs = tmp_path / "certs"
    certs.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=ca",
                    "-keyout", str(certs / "ca.key"), "-out", str(certs / "ca.crt")], check=True, capture_output=True)
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                    "-keyout", str(certs / "tls.key"), "-out", str(certs / "tls.csr")], check=True, capture_output=True)
    (certs / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    subprocess.run(["openssl", "x509", "-req", "-in", str(certs / "tls.csr"), "-CA", str(certs / "ca.crt"),
                    "-CAkey", str(certs / "ca.key"), "-CAcreateserial", "-days", "1", "-extfile",
                    str(certs / "ext.cnf"), "-out", str(certs / "tls.crt")], check=True, capture_output=True)
    token = tmp_path / "token"
    token.write_text("a-projected-service-account-token\n")
    received: list[tuple[str, str, str | None, dict[str, Any]]] = []

    class Endpoint(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append(("POST", self.path, self.headers.get("Authorization"), body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Endpoint)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(str(certs / "tls.crt"), str(certs / "tls.key"))
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    path = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/legal-ml/trainjobs/progress-run/status"
    try:
        doc = base_run("risk-classification", tiny_models["bert"], "progress-run",
                       training={"maxSteps": 6, "batchSize": 4, "loggingSteps": 2})
        result = train(tmp_path, doc, nproc=1, env={
            "KUBEFLOW_TRAINER_SERVER_URL": f"https://127.0.0.1:{port}{path}",
            "KUBEFLOW_TRAINER_SERVER_CA_CERT": str(certs / "ca.crt"),
            "KUBEFLOW_TRAINER_SERVER_TOKEN": str(token)})
    finally:
        server.shutdown()
    assert result["globalStep"] == 6 and result["model"]["version"] == 1  # trained, evaluated and published
    assert len(received) >= 2, received  # the start (forced), then at most one per 5 s, then the end (forced)
    for method, got_path, auth, body in received:
        assert (method, got_path, auth) == ("POST", path, "Bearer a-projected-service-account-token")
        status = body["trainerStatus"]
        jsonschema.validate(status, schema, format_checker=jsonschema.FormatChecker())
        assert "lastUpdatedTime" in status  # the CRD's CEL rule (has(self.lastUpdatedTime))
    assert received[0][3]["trainerStatus"]["progressPercentage"] == 0
    assert received[-1][3]["trainerStatus"]["progressPercentage"] == 100
