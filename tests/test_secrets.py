"""Credentials travel by reference only: never inside a URI, a spec, run.json, status, an event or a log.

The end-to-end canary (a password in MLFLOW_TRACKING_URI reaching no file, no output and nothing in MLflow)
lives in test_trainer_e2e.py's MLflow server test, which trains anyway.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from legistra.api.formats import redact
from legistra.api.validation import parse_training_run
from legistra.contract import move_credentials, run_document, run_key_filter
from legistra.operator.build import build_children
from legistra.operator.config import JobDefaults, OperatorConfig
from legistra.operator.report import MlflowReporter, auth_header
from tests.test_operator_decisions import pytorchjob_schema, run_doc

DEFAULTS = JobDefaults(mlflow_tracking_uri="http://mlflow:5000", mlflow_credentials_secret="mlflow-team",
                       s3_secret="s3-creds")


def env_of(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    return {e["name"]: e for e in container["env"]}


def test_hub_token_and_mlflow_credentials_reach_the_pods_as_secret_refs_only() -> None:
    run = parse_training_run(run_doc(model={"name": "org/private-model",
                                            "tokenSecret": {"name": "hf", "key": "token"}},
                                     tracking={"mlflow": {"credentialsSecret": "mlflow-mine"}}))
    cm, _, job = build_children(run, DEFAULTS)
    jsonschema.validate(job, pytorchjob_schema())
    env = env_of(job)
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
    for name, key in (("MLFLOW_TRACKING_USERNAME", "username"), ("MLFLOW_TRACKING_PASSWORD", "password"),
                      ("MLFLOW_TRACKING_TOKEN", "token")):
        assert env[name] == {"name": name, "valueFrom": {"secretKeyRef": {"name": "mlflow-mine", "key": key,
                                                                          "optional": True}}}
    # run.json names the Secrets, never a value
    assert json.loads(cm["data"]["run.json"]) == run_document(run)
    # the operator's default Secret when the run names none
    _, _, job2 = build_children(parse_training_run(run_doc()), DEFAULTS)
    assert env_of(job2)["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-team"
    assert "HF_TOKEN" not in env_of(job2)


@pytest.mark.parametrize("env", ["LEGISTRA_MLFLOW_TRACKING_URI", "LEGISTRA_REGISTRY_URI", "LEGISTRA_CHECKPOINT_URI",
                                 "LEGISTRA_S3_ENDPOINT"])
def test_the_operator_refuses_a_uri_setting_with_a_password(env: str) -> None:
    value = "s3://AKIA:s3cret@bucket/x" if "URI" in env and "MLFLOW" not in env else "http://alice:s3cret@host"
    with pytest.raises(ValueError, match=f"{env}=.*must not carry a user or password") as info:
        JobDefaults.from_env({env: value})
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize(("raw", "message"), [
    ('{"A": "1", "A": "2"}', "duplicate key 'A'"),
    ('{"A": null}', "A: the value must be a string \\(got null\\)"),
    ('{"A": 1}', "A: the value must be a string \\(got 1\\)"),
    ('{"1BAD": "x"}', "'1BAD' is not an environment variable name"),
    ('{"A=B": "x"}', "'A=B' is not an environment variable name"),
    ('["A"]', "expected a JSON object"),
    ("{", "not valid JSON"),
])
def test_extra_env_is_checked_as_the_api_server_would(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"LEGISTRA_TRAINER_EXTRA_ENV: {message}"):
        JobDefaults.from_env({"LEGISTRA_TRAINER_EXTRA_ENV": raw})
    assert JobDefaults.from_env({"LEGISTRA_TRAINER_EXTRA_ENV": '{"NCCL_DEBUG": "WARN"}'}).extra_env == {
        "NCCL_DEBUG": "WARN"}


def test_the_operators_mlflow_credentials_come_from_mlflows_variables_and_are_never_shown() -> None:
    config = OperatorConfig.from_env(env={"MLFLOW_TRACKING_USERNAME": "op", "MLFLOW_TRACKING_PASSWORD": "s3cret",
                                          "LEGISTRA_MLFLOW_TRACKING_URI": "http://mlflow:5000"})
    assert config.mlflow_auth == {"MLFLOW_TRACKING_USERNAME": "op", "MLFLOW_TRACKING_PASSWORD": "s3cret"}
    assert "s3cret" not in repr(config)
    assert auth_header(config.mlflow_auth) == {"Authorization": "Basic b3A6czNjcmV0"}
    assert auth_header({"MLFLOW_TRACKING_TOKEN": "t", "MLFLOW_TRACKING_USERNAME": "u"}) == {
        "Authorization": "Bearer t"}
    assert auth_header({}) == {}


@pytest.fixture
def recording_server() -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    """A plain HTTP server that answers like MLflow's REST API and records each path and Authorization."""
    seen: list[tuple[str, str | None]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append((self.path, self.headers.get("Authorization")))
            if "experiments/get-by-name" in self.path:
                body = {"experiment": {"experiment_id": "7"}}
            else:
                length = int(self.headers.get("Content-Length") or 0)
                seen.append(("body", self.rfile.read(length).decode()))
                body = {"runs": []}
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()


def test_the_reporter_sends_the_operators_credentials_and_a_checked_filter(
        recording_server: tuple[str, list[tuple[str, str | None]]]) -> None:
    base, seen = recording_server
    reporter = MlflowReporter(base, auth={"MLFLOW_TRACKING_TOKEN": "op-token"})
    assert reporter.read("legal", "0b5c-uid") is None
    assert [auth for path, auth in seen if path != "body"] == ["Bearer op-token", "Bearer op-token"]
    body = json.loads(next(auth for path, auth in seen if path == "body") or "{}")
    assert body["filter"] == "tags.`legistra.run_key` = '0b5c-uid'"
    # A key that could close the quoted string is never sent.
    seen.clear()
    assert reporter.read("legal", "x' OR tags.`legistra.run_key` LIKE '%", fresh=True) is None
    assert not any(path == "body" for path, _ in seen)


@pytest.mark.parametrize("key", ["x' OR '1'='1", "a b", "", "tëam", "a\nb", "-leading"])
def test_run_key_filter_refuses_what_could_change_the_query(key: str) -> None:
    with pytest.raises(ValueError, match="may be used in an MLflow filter"):
        run_key_filter(key)


def test_a_password_in_a_tracking_uri_moves_into_mlflows_variables() -> None:
    env: dict[str, str] = {}
    assert move_credentials("https://alice:p%40ss@mlflow.example.com:443/base", env) == \
        "https://mlflow.example.com:443/base"
    assert env == {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "p@ss"}
    explicit = {"MLFLOW_TRACKING_PASSWORD": "given"}
    move_credentials("http://bob:other@host", explicit)
    assert explicit["MLFLOW_TRACKING_PASSWORD"] == "given"  # what the user set explicitly wins
    assert move_credentials("sqlite:///tmp/x.db", env) == "sqlite:///tmp/x.db"
    assert redact("https://alice:p@host/x") == "https://***@host/x"
