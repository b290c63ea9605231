"""Shared fixtures: tiny models, and real MLflow and S3 (moto) servers on loopback."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kit.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DATA = EXAMPLES / "data"
VENV_BIN = Path(sys.executable).parent

# Two xdist workers share the machine's cores, and every torch process (an in-process test, a torchrun rank, the
# docs' `legistra train`) would start one OpenMP thread per core: oversubscribed, those threads spin-wait on each
# other. Two `legistra train examples/risk-classification.yaml` side by side on the 2-core machine: 494 s with
# torch's default, 94 s with one thread each (one alone: 62 s).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Tests never talk to a hub or a real cloud.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")


def wait_http(url: str, timeout: float = 90.0, proc: subprocess.Popen[bytes] | None = None) -> bool:
    """Wait until `url` answers: True; False as soon as `proc` (the server) has exited instead."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except Exception:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not come up in {timeout}s")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    sys.path.insert(0, str(Path(__file__).parent))
    import tiny

    root = tmp_path_factory.mktemp("models")
    texts = tiny.corpus(DATA)
    return {
        "bert": tiny.build_tiny_bert(root / "tiny-bert", texts),
        "bart": tiny.build_tiny_bart(root / "tiny-bart", texts),
    }


def base_run(task: str, model: Path, name: str, **spec_overrides: Any) -> dict[str, Any]:
    data = {
        "risk-classification": ("risk_train.jsonl", "risk_validation.jsonl"),
        "clause-extraction": ("clauses_train.jsonl", "clauses_validation.jsonl"),
        "summarization": ("bills_train.jsonl", "bills_validation.jsonl"),
    }[task]
    doc: dict[str, Any] = {
        "apiVersion": "legistra.io/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name},
        "spec": {
            "task": task,
            "model": {"name": str(model)},
            "data": {"train": str(DATA / data[0]), "validation": str(DATA / data[1]), "maxLength": 64,
                     "maxTargetLength": 32, "stride": 16, "maxSamples": 64},
            "training": {"epochs": 1, "maxSteps": 6, "batchSize": 4, "learningRate": 0.003, "saveSteps": 3,
                         "loggingSteps": 1, "dataloaderWorkers": 0, "evaluation": "epoch"},
            "generation": {"maxNewTokens": 8},
            "lora": {"r": 4, "alpha": 8},
            "registry": {"modelName": name},
        },
    }
    merge(doc["spec"], spec_overrides)
    return doc


def merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            merge(into[k], v)
        else:
            into[k] = copy.deepcopy(v)


def write_run(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def diverging_model(model: Path, dest: Path) -> Path:
    """A copy of the model folder `model` at `dest` whose word embeddings are NaN: training it diverges."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(model, dest)
    weights = dest / "model.safetensors"
    tensors = load_file(str(weights))
    name = next(k for k in tensors if k.endswith("embeddings.word_embeddings.weight"))
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(weights), metadata={"format": "pt"})
    return dest


def legistra(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
             timeout: float = 600) -> subprocess.CompletedProcess[str]:
    # The console script where pip installed one; the module itself on the GPU machine, which has none.
    script = VENV_BIN / "legistra"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "legistra.cli.main"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, cwd=cwd,
    )


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` with a sqlite backend and a local artifact store."""
    root = tmp_path_factory.mktemp("mlflow")
    log = root / "server.log"

    def tail() -> str:
        return log.read_text(errors="replace")[-3000:]

    # free_port() is outside the range the kernel gives outgoing connections, so no client takes it meanwhile.
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT,
            cwd=root,  # anything it writes relative to its working directory stays out of the checkout
            # No GenAI job runner: its huey consumers are processes the tests never use, and each server left
            # its store behind in /dev/shm (memory), one folder per test session.
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        up = wait_http(f"{url}/health", timeout=120, proc=proc)
    except TimeoutError as exc:
        proc.kill()
        raise TimeoutError(f"{exc}; mlflow server log:\n{tail()}") from None
    if not up:
        raise RuntimeError(f"mlflow server exited at start (code {proc.returncode}); its log:\n{tail()}")
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto in server mode: a real HTTP S3 endpoint on loopback, answering one request at a time.

    S3 applies a conditional write (If-None-Match: *) atomically; moto checks for the key, then writes it. Under
    moto's threaded server two racing creates of the same key both got 200 (two of sixteen concurrent registry
    pushes claimed v10). Served one at a time, moto's check and write cannot interleave, as on S3. Its thread
    shares this process's interpreter lock anyway, so little concurrency is lost."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    port = free_port()
    server = make_server("127.0.0.1", port, DomainDispatcherApplication(create_backend_app), threaded=False,
                         request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, name="moto-s3", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL_S3": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.shutdown()
        thread.join()


@pytest.fixture()
def bucket(s3_endpoint: str) -> str:
    import uuid

    import boto3

    name = f"reg-{uuid.uuid4().hex[:16]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def apiserver() -> Iterator[Any]:
    """A real kube-apiserver + etcd for the session (kit/apiserver.py); give each test its own namespace."""
    from kit import apiserver as envtest

    yield from envtest.start()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Heaviest test file first (kit/durations.py says why); the order inside each file is kept."""
    from kit.durations import heaviest_first, load

    seconds = load()
    items.sort(key=lambda item: heaviest_first(item.nodeid.split("::", 1)[0], seconds))


def pytest_sessionstart(session: pytest.Session) -> None:
    from tests.test_docs_commands import SUMMARY_FILE

    if not hasattr(session.config, "workerinput"):  # the controller (or a plain run): forget a last session's
        SUMMARY_FILE.unlink(missing_ok=True)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """What the docs-command test ran and what it could not run here, with the reasons (from whichever
    process ran it)."""
    from tests.test_docs_commands import SUMMARY_FILE

    if SUMMARY_FILE.exists():
        for line in SUMMARY_FILE.read_text().splitlines():
            terminalreporter.write_line(line)
