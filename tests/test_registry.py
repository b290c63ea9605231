"""The model registry on a local folder and on S3 (moto server over HTTP)."""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from kit.ports import free_port
from legistra.registry.promotion import decide
from legistra.registry.registry import ChecksumMismatch, Registry, RegistryError
from tests.conftest import legistra


def model_dir(root: Path, tag: str = "a", files: int = 3, size: int = 64) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"part-{i}.bin").write_bytes((tag * size)[:size].encode() + bytes([i]))
    (root / "tokenizer").mkdir(exist_ok=True)
    (root / "tokenizer" / "tokenizer.json").write_text(json.dumps({"tag": tag}))
    return root


@pytest.fixture(params=["local", "s3"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Registry:
    if request.param == "local":
        return Registry.open(str(tmp_path / "registry"))
    bucket = request.getfixturevalue("bucket")
    return Registry.open(f"s3://{bucket}/models")


def test_push_list_show_download(registry: Registry, tmp_path: Path) -> None:
    src = model_dir(tmp_path / "m")
    v1 = registry.push("clause-risk", src, {"task": "risk-classification", "metrics": {"eval_f1": 0.5}})
    v2 = registry.push("clause-risk", model_dir(tmp_path / "m2", "b"), {"metrics": {"eval_f1": 0.6}})
    assert (v1.version, v2.version) == (1, 2)
    assert [v.version for v in registry.versions("clause-risk")] == [1, 2]
    shown = registry.version("clause-risk", 1).manifest
    assert shown["task"] == "risk-classification"
    assert set(shown["files"]) == {"part-0.bin", "part-1.bin", "part-2.bin", "tokenizer/tokenizer.json"}
    assert all(len(f["sha256"]) == 64 for f in shown["files"].values())
    dest = tmp_path / "dl"
    registry.download("clause-risk", "v1", dest)
    assert (dest / "part-1.bin").read_bytes() == (src / "part-1.bin").read_bytes()
    assert json.loads((dest / "manifest.json").read_text())["version"] == 1
    assert registry.models() == ["clause-risk"]


def test_missing_things_are_one_line_errors(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="model 'nope' not found"):
        registry.version("nope", 1)
    registry.push("m", model_dir(tmp_path / "m"))
    with pytest.raises(RegistryError, match="model 'm' has no version 9"):
        registry.version("m", 9)
    with pytest.raises(RegistryError, match="model 'm' has no alias 'champion'"):
        registry.resolve("m", "champion")
    with pytest.raises(RegistryError, match="must match"):
        registry.push("Bad Name", tmp_path / "m")


def test_aliases_move_and_roll_back_with_history(registry: Registry, tmp_path: Path) -> None:
    for tag in "abc":
        registry.push("m", model_dir(tmp_path / tag, tag))
    registry.set_alias("m", "champion", 1)
    registry.set_alias("m", "champion", 3, reason="better")
    assert registry.resolve("m", "champion") == 3
    assert registry.alias("m", "champion")["history"][-1]["version"] == 1
    back = registry.rollback("m", "champion")
    assert back["version"] == 1 and registry.resolve("m", "champion") == 1
    with pytest.raises(RegistryError, match="no earlier version"):
        registry.rollback("m", "champion")
    with pytest.raises(RegistryError, match="no version 7"):
        registry.set_alias("m", "staging", 7)
    assert registry.aliases("m") == {"champion": 1}


def test_checksum_mismatch_on_download_is_an_error(registry: Registry, tmp_path: Path) -> None:
    registry.push("m", model_dir(tmp_path / "m"))
    # Corrupt the stored object behind the registry's back, as a bad disk or a bad actor would.
    registry.store.put("m/v1/part-0.bin", b"tampered")
    with pytest.raises(ChecksumMismatch, match=r"checksum mismatch for part-0\.bin"):
        registry.download("m", 1, tmp_path / "dl")


def test_versions_are_immutable(registry: Registry, tmp_path: Path) -> None:
    registry.push("m", model_dir(tmp_path / "m"))
    before = registry.version("m", 1).manifest
    registry.push("m", model_dir(tmp_path / "n", "z"))
    assert registry.version("m", 1).manifest == before


def test_concurrent_pushes_in_threads_get_distinct_versions(registry: Registry, tmp_path: Path) -> None:
    dirs = [model_dir(tmp_path / f"m{i}", chr(97 + i)) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        versions = list(pool.map(lambda d: registry.push("m", d).version, dirs))
    assert sorted(versions) == list(range(1, 9))


class ConditionsDropped(http.server.BaseHTTPRequestHandler):
    """An S3-compatible store that ignores conditional writes: moto behind a proxy that drops If-None-Match and
    If-Match from every request (as an old MinIO or a plain file gateway would never look at them)."""

    upstream = ("127.0.0.1", 0)
    protocol_version = "HTTP/1.1"

    def forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        dropped = ("if-none-match", "if-match", "host", "connection")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_store_that_ignores_conditional_writes_is_refused_before_the_upload(
        bucket: str, s3_endpoint: str, tmp_path: Path) -> None:
    upstream = urllib.parse.urlsplit(s3_endpoint)
    handler = type("Handler", (ConditionsDropped,), {"upstream": (upstream.hostname, upstream.port)})
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        env = {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{proxy.server_address[1]}"}
        res = legistra("registry", "--registry", f"s3://{bucket}/reg", "push", str(model_dir(tmp_path / "m")),
                       "--model", "m", env=env)
    finally:
        proxy.shutdown()
    assert res.returncode == 1, res.stderr
    assert (f"s3://{bucket}/reg: the store ignores conditional writes (If-None-Match and If-Match)"
            in res.stderr), res.stderr
    assert "Traceback" not in res.stderr
    direct = Registry.open(f"s3://{bucket}/reg")  # straight to moto, which honours them
    assert direct.store.list_keys("") == []  # nothing uploaded, the check's own key removed
    direct.push("m", model_dir(tmp_path / "m2"))  # the same push against a store that honours them
    assert [v.version for v in direct.versions("m")] == [1]


def test_sixteen_concurrent_cli_pushes_to_s3(bucket: str, tmp_path: Path) -> None:
    """16 processes push the same model at once: v1..v16, none lost, each manifest matches its folder."""
    uri = f"s3://{bucket}/reg"
    dirs = [model_dir(tmp_path / f"m{i}", f"{i:02d}", files=4, size=4096) for i in range(16)]
    t0 = time.monotonic()
    procs = [
        subprocess.Popen([str(Path(sys.executable).parent / "legistra"), "registry", "--registry", uri, "--json",
                          "push", str(d), "--model", "contested"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for d in dirs
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    elapsed = time.monotonic() - t0
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    got = sorted(json.loads(o[0])["version"] for o in outs)
    assert got == list(range(1, 17))
    reg = Registry.open(uri)
    by_tag = {}
    for mv in reg.versions("contested"):
        tok = reg.store.get(f"contested/v{mv.version}/tokenizer/tokenizer.json")[0]
        by_tag[json.loads(tok)["tag"]] = mv.version
    assert sorted(by_tag) == [f"{i:02d}" for i in range(16)]  # every push landed, none overwrote another
    print(f"16 concurrent pushes: {elapsed:.2f}s wall")


KILLABLE = """
import sys
from pathlib import Path
from legistra.registry.registry import Registry
Registry.open(sys.argv[1]).push("m", Path(sys.argv[2]))
"""


@pytest.mark.parametrize("where", ["local", "s3"])
def test_push_killed_mid_upload_leaves_no_version(where: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    uri = f"s3://{request.getfixturevalue('bucket')}/reg" if where == "s3" else str(tmp_path / "reg")
    reg = Registry.open(uri)
    reg.push("m", model_dir(tmp_path / "first"))
    big = model_dir(tmp_path / "big", "x", files=60, size=1 << 20)
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, uri, str(big)], env=dict(os.environ))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any("/.staging-" in k for k in reg.store.list_keys("m")):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    staged = [k for k in reg.store.list_keys("m") if "/.staging-" in k]
    assert staged, "the push was not caught mid-upload"
    assert len(staged) < 61
    assert [v.version for v in reg.versions("m")] == [1]
    assert reg.push("m", model_dir(tmp_path / "next", "n")).version == 2


def test_claimed_but_unfinished_version_is_skipped(registry: Registry, tmp_path: Path) -> None:
    registry.push("m", model_dir(tmp_path / "a"))
    registry.store.put("m/v2/.claim", b"{}", if_none_match=True)  # a push that died after claiming
    assert [v.version for v in registry.versions("m")] == [1]
    assert registry.push("m", model_dir(tmp_path / "b", "b")).version == 3


def test_cli_registry_commands(tmp_path: Path) -> None:
    reg = str(tmp_path / "reg")
    src = model_dir(tmp_path / "m")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"task": "summarization", "metrics": {"eval_rougeL": 0.31}}))
    res = legistra("registry", "--registry", reg, "push", str(src), "--model", "bills", "--metadata", str(meta))
    assert res.returncode == 0, res.stderr
    assert "v1" in res.stdout
    legistra("registry", "--registry", reg, "push", str(src), "--model", "bills")
    res = legistra("registry", "--registry", reg, "--json", "list", "bills")
    listed = json.loads(res.stdout)
    assert [v["version"] for v in listed["versions"]] == [1, 2]
    res = legistra("registry", "--registry", reg, "list", "bills")
    assert res.stdout.splitlines()[0].split() == ["VERSION", "CREATED", "TASK", "ALIASES", "METRICS"]
    assert "rougeL=0.31" in res.stdout
    res = legistra("registry", "--registry", reg, "promote", "bills", "2", "--alias", "champion")
    assert res.returncode == 0 and "champion" in res.stdout
    legistra("registry", "--registry", reg, "promote", "bills", "1", "--alias", "champion")
    res = legistra("registry", "--registry", reg, "--json", "rollback", "bills", "--alias", "champion")
    assert json.loads(res.stdout)["version"] == 2
    res = legistra("registry", "--registry", reg, "show", "bills", "champion")
    assert json.loads(res.stdout)["version"] == 2
    res = legistra("registry", "--registry", reg, "download", "bills", "champion", str(tmp_path / "out"))
    assert res.returncode == 0 and (tmp_path / "out" / "part-0.bin").exists()
    for args in (["show", "bills", "9"], ["list", "ghost"], ["download", "bills", "staging", str(tmp_path / "x")]):
        res = legistra("registry", "--registry", reg, *args)
        assert res.returncode == 1
        assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("error: ")


def test_registry_uri_from_environment(tmp_path: Path) -> None:
    reg = tmp_path / "env-reg"
    res = legistra("registry", "push", str(model_dir(tmp_path / "m")), "--model", "x",
                   env={"LEGISTRA_REGISTRY_URI": str(reg)})
    assert res.returncode == 0, res.stderr
    assert (reg / "x" / "v1" / "manifest.json").exists()


# -- promotion gate (pure) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("direction", "cand", "inc", "inc_version", "promote", "reason"),
    [
        ("maximize", 0.8, None, None, True, "no version holds 'champion' yet"),
        ("maximize", 0.8, 0.7, 3, True, "eval_f1 0.8 beats v3's 0.7 (maximize)"),
        ("maximize", 0.7, 0.7, 3, False, "eval_f1 0.7 does not beat v3's 0.7 (maximize)"),
        ("maximize", 0.6, 0.7, 3, False, "eval_f1 0.6 does not beat v3's 0.7 (maximize)"),
        ("minimize", 0.6, 0.7, 3, True, "eval_f1 0.6 beats v3's 0.7 (minimize)"),
        ("minimize", 0.8, 0.7, 3, False, "eval_f1 0.8 does not beat v3's 0.7 (minimize)"),
        ("maximize", None, 0.7, 3, False, "candidate has no finite value for eval_f1"),
        ("maximize", 0.5, None, 3, True, "v3 (holding 'champion') has no value for eval_f1"),
        ("maximize", float("nan"), 0.7, 3, False, "candidate has no finite value for eval_f1"),
    ],
)
def test_promotion_gate(direction: str, cand: float | None, inc: float | None, inc_version: int | None,
                        promote: bool, reason: str) -> None:
    cm = {} if cand is None else {"eval_f1": cand}
    im = None if inc is None else {"eval_f1": inc}
    d = decide("eval_f1", direction, "champion", cm, im, inc_version)  # type: ignore[arg-type]
    assert (d.promote, d.reason) == (promote, reason)
    finite = cand is not None and math.isfinite(cand)
    assert d.as_dict()["candidate"] == (cand if finite else None) and d.as_dict()["incumbent"] == inc


def test_promotion_gate_accepts_metric_without_eval_prefix() -> None:
    d = decide("f1_macro", "maximize", "champion", {"eval_f1_macro": 0.9}, {"eval_f1_macro": 0.8}, 1)
    assert d.promote and d.candidate == 0.9 and d.incumbent == 0.8


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_concurrent_promotions_always_end_on_the_best(registry: Registry, tmp_path: Path, seed: int) -> None:
    """8 runs of one model publish at once with distinct metrics: whatever the interleaving, the alias ends on
    the best, every version exists, and each move in the alias history was an improvement."""
    import random

    rnd = random.Random(seed)
    scores = [round(0.1 + 0.1 * i, 2) for i in range(8)]
    rnd.shuffle(scores)
    delays = [rnd.random() * 0.05 for _ in scores]

    def publish(i: int) -> tuple[int, bool]:
        mv = registry.push("gated", model_dir(tmp_path / f"g{seed}-{i}", chr(97 + i)),
                           {"metrics": {"eval_f1": scores[i]}})
        time.sleep(delays[i])  # vary who reaches the gate first
        return mv.version, registry.promote_if_better("gated", "champion", mv.version, "eval_f1", "maximize").promote

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(publish, range(8)))
    versions = {v: registry.version("gated", v).manifest["metrics"]["eval_f1"] for v, _ in outcomes}
    assert sorted(versions) == list(range(1, 9))
    best = max(versions, key=lambda v: versions[v])
    record = registry.alias("gated", "champion")
    assert record["version"] == best
    holders = [h["version"] for h in record["history"]] + [record["version"]]
    assert [versions[v] for v in holders] == sorted(versions[v] for v in holders)  # every move improved
    assert len(set(holders)) == len(holders)
    assert {v for v, promoted in outcomes if promoted} == set(holders)  # a "promoted" answer is in the history


def test_a_conditional_write_retried_after_it_landed_is_still_ours(registry: Registry) -> None:
    """Under load a conditional PUT can land while its answer is lost; the client's retry then gets 412 from our
    own first write. Reading back tells ours (same bytes) from someone else's."""
    key = "m/v1/.claim"
    assert registry._create(key, b'{"by": "me"}')
    assert registry._create(key, b'{"by": "me"}')  # the retry of a write that landed
    assert not registry._create(key, b'{"by": "someone else"}')
    assert registry.store.get(key)[0] == b'{"by": "me"}'


# -- a hostile manifest, model folder or metadata file (each of these escaped, leaked or crashed before) -------
def _tamper_manifest(registry: Registry, version: int, change: Any) -> None:
    """Rewrite a stored manifest behind the registry's back, as someone with write access to the store could."""
    key = f"m/v{version}/manifest.json"
    manifest = json.loads(registry.store.get(key)[0])
    change(manifest)
    registry.store.put(key, json.dumps(manifest).encode())


@pytest.mark.parametrize("name", ["../../escaped.txt", "/tmp/absolute.txt", "a/../../b.txt", "C:/win.txt",
                                  "a\\..\\b", "nul\x00.txt", "./a", ""])
def test_download_never_writes_outside_its_destination(registry: Registry, tmp_path: Path, name: str) -> None:
    registry.push("m", model_dir(tmp_path / "m"))
    payload = b"planted"
    digest = hashlib.sha256(payload).hexdigest()
    _tamper_manifest(registry, 1, lambda m: m["files"].update({name: {"sha256": digest, "size": len(payload)}}))
    dest = tmp_path / "deep" / "er" / "dl"
    before = {p for p in tmp_path.rglob("*")}
    with pytest.raises(RegistryError, match="in the manifest"):
        registry.download("m", 1, dest)
    assert {p for p in tmp_path.rglob("*")} - before <= {dest, dest.parent, dest.parent.parent}
    assert not Path("/tmp/absolute.txt").exists()


def test_a_checksum_mismatch_leaves_nothing_behind(registry: Registry, tmp_path: Path) -> None:
    registry.push("m", model_dir(tmp_path / "m"))
    registry.store.put("m/v1/tokenizer/tokenizer.json", b"tampered")  # sorted after part-*.bin
    dest = tmp_path / "dl"
    with pytest.raises(ChecksumMismatch, match="nothing was kept"):
        registry.download("m", 1, dest)
    assert [p for p in dest.rglob("*") if p.is_file()] == []


def test_push_refuses_links_that_leave_the_folder(registry: Registry, tmp_path: Path) -> None:
    secret = tmp_path / "credentials"
    secret.write_text("aws_secret_access_key = s3cret")
    outside = tmp_path / "elsewhere"
    model_dir(outside, "o")
    for name, target in (("creds.txt", secret), ("linked-folder", outside)):
        src = model_dir(tmp_path / f"m-{name}")
        (src / name).symlink_to(target)
        with pytest.raises(RegistryError, match="outside"):
            registry.push("m", src)
    assert registry.versions("m") == []
    assert not any(b"s3cret" in registry.store.get(k)[0] for k in registry.store.list_keys(""))


def test_push_keeps_links_inside_the_folder_and_nested_manifests(registry: Registry, tmp_path: Path) -> None:
    src = model_dir(tmp_path / "m")
    (src / "alias.bin").symlink_to(src / "part-0.bin")
    (src / "tok").symlink_to(src / "tokenizer", target_is_directory=True)
    (src / "tokenizer" / "manifest.json").write_text("{}")  # a file of the model's own, not ours
    (src / "manifest.json").write_text('{"version": 99}')  # a downloaded version's: replaced by the new one
    files = set(registry.push("m", src).manifest["files"])
    assert {"alias.bin", "tok/tokenizer.json", "tokenizer/manifest.json"} <= files
    assert "manifest.json" not in files


def test_push_refuses_a_fifo_instead_of_dropping_it(registry: Registry, tmp_path: Path) -> None:
    src = model_dir(tmp_path / "m")
    os.mkfifo(src / "pipe")
    with pytest.raises(RegistryError, match="not a regular file"):
        registry.push("m", src)


@pytest.mark.parametrize(("metadata", "message"), [
    ({"version": 99}, "metadata may not set version"),
    ({"model": "other", "createdAt": "1970"}, "metadata may not set createdAt, model"),
    ({"files": {}}, "metadata may not set files"),
    ({"schemaVersion": 7}, "metadata may not set schemaVersion"),
    ({"metrics": {"eval_f1": "high"}}, "metric 'eval_f1' must be a finite number"),
    ({"metrics": {"eval_f1": math.nan}}, "metric 'eval_f1' must be a finite number"),
    ({"metrics": [1]}, "metrics must be an object"),
])
def test_metadata_may_add_keys_but_never_replace_the_manifests_identity(
        registry: Registry, tmp_path: Path, metadata: dict[str, Any], message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        registry.push("m", model_dir(tmp_path / "m"), metadata)
    assert registry.push("m", model_dir(tmp_path / "m"), {"team": "legal", "metrics": {"eval_f1": 0.5}}
                         ).manifest["team"] == "legal"


def test_list_and_show_survive_a_hand_written_manifest(tmp_path: Path) -> None:
    reg = str(tmp_path / "reg")
    registry = Registry.open(reg)
    registry.push("m", model_dir(tmp_path / "m"))
    registry.push("m", model_dir(tmp_path / "m"))
    registry.push("m", model_dir(tmp_path / "m"))
    _tamper_manifest(registry, 1, lambda m: m.update(metrics={"eval_f1": "high", "eval_acc": None}))
    registry.store.put("m/v2/manifest.json", b"{not json")
    registry.store.put("m/aliases/champion.json", b'{"version": "two"}')
    res = legistra("registry", "--registry", reg, "list", "m")
    assert res.returncode == 0 and "Traceback" not in res.stderr
    assert "f1='high'" in res.stdout and "v3" in res.stdout
    for args, message in ((["show", "m", "2"], "m v2: manifest.json is not valid JSON"),
                          (["show", "m", "champion"], "alias 'champion' of 'm' is not a valid alias record")):
        res = legistra("registry", "--registry", reg, *args)
        assert res.returncode == 1 and res.stderr.strip() == f"error: {message}", res.stderr


def test_the_folder_store_follows_the_umask_and_leaves_no_probe_or_staging(tmp_path: Path) -> None:
    root = tmp_path / "reg"
    old = os.umask(0o022)
    try:
        registry = Registry.open(str(root))
        registry.push("m", model_dir(tmp_path / "m"))
        registry.set_alias("m", "champion", 1)
    finally:
        os.umask(old)
    modes = {p.relative_to(root).as_posix(): p.stat().st_mode & 0o777 for p in root.rglob("*") if p.is_file()}
    assert modes["m/v1/manifest.json"] == modes["m/v1/.claim"] == modes["m/aliases/champion.json"] == 0o644
    assert set(modes.values()) == {0o644}
    left = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    assert not [p for p in left if p.startswith((".conditional-write-check", "m/.staging")) or ".tmp-" in p], left


def test_cli_metadata_file_is_read_through_the_bounded_reader(tmp_path: Path) -> None:
    src = model_dir(tmp_path / "m")
    for name, data, message in (("dup.json", b'{"a": 1, "a": 2}', "duplicate key 'a'"),
                                ("list.json", b"[1, 2]", "must hold one JSON (or YAML) object"),
                                ("reserved.json", b'{"version": 5}', "metadata may not set version")):
        (tmp_path / name).write_bytes(data)
        res = legistra("registry", "--registry", str(tmp_path / "reg"), "push", str(src), "--model", "m",
                       "--metadata", str(tmp_path / name))
        assert res.returncode == 1 and message in res.stderr and "Traceback" not in res.stderr, res.stderr
