"""The model registry: immutable versions, atomic numbering, aliases with history.

Layout under the root (a folder or s3://bucket/prefix):

    <model>/.staging-<upload-id>/...   files of a push in progress (never read as a version)
    <model>/v<N>/.claim                 version number N taken (create-if-absent)
    <model>/v<N>/<files>                adapter, tokenizer, optional merged/
    <model>/v<N>/manifest.json          written last, create-if-absent: the version exists iff this does
    <model>/aliases/<alias>.json        {"version": N, "history": [...]}, moved by compare-and-swap

A push uploads everything to staging first (the slow, crash-prone part), then claims the next free number,
copies server-side and writes the manifest. A crash before the claim leaves only staging garbage; a crash
after it leaves a claimed number without a manifest, which readers skip and the next push steps over.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from legistra.registry.promotion import GateDecision, decide
from legistra.registry.store import NotFound, PreconditionFailed, Store, open_store

MANIFEST = "manifest.json"
CLAIM = ".claim"
# The manifest's own identity: set by the registry, never by metadata a push is given.
RESERVED = ("schemaVersion", "model", "version", "createdAt", "files")
VERSION_DIR = re.compile(r"^v(\d+)$")
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
ALIAS = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


class RegistryError(Exception):
    """A registry request that cannot be served; the message is one line for the CLI."""


class ChecksumMismatch(RegistryError):
    pass


@dataclass(frozen=True)
class ModelVersion:
    model: str
    version: int
    uri: str
    manifest: dict[str, Any]


def safe_relative(rel: Any) -> PurePosixPath:
    """A file path from a manifest as a plain relative path that stays inside the folder it is joined to: no
    absolute path, drive letter, backslash, '..', '.', empty part or NUL (a manifest may be hostile)."""
    if not isinstance(rel, str) or not rel or "\x00" in rel or "\\" in rel:
        raise RegistryError(f"file name {rel!r} in the manifest is not a relative path")
    path = PurePosixPath(rel)
    if path.is_absolute() or re.match(r"^[A-Za-z]:", rel) or any(p in ("", ".", "..") for p in rel.split("/")):
        raise RegistryError(f"file name {rel!r} in the manifest leaves its folder; refusing to write it")
    return path


def model_files(src: Path) -> list[tuple[str, Path]]:
    """(name in the version, file to read) for every file under `src`, links followed only inside it.

    A link to a file or folder outside `src` is refused (it could register a credentials file), and so is
    anything that is neither a file nor a folder; nothing is dropped silently. The top-level manifest.json of a
    downloaded version is the one thing skipped: the registry writes its own."""
    root = src.resolve()
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(src, followlinks=True):
        folder = Path(dirpath)
        if root not in folder.resolve().parents and folder.resolve() != root:
            raise RegistryError(f"{folder}: a link leads outside {src}; refusing to register what it points to")
        for name in sorted(dirnames + filenames):
            path = folder / name
            target = path.resolve()
            if root not in target.parents:
                raise RegistryError(f"{path}: a link to {target}, outside {src}; refusing to register it")
            if name in dirnames:
                continue
            if not target.is_file():
                raise RegistryError(f"{path}: not a regular file; refusing to register it")
            rel = path.relative_to(src).as_posix()
            if rel != MANIFEST:
                out.append((rel, target))
    return sorted(out)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class Registry:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._conditional_writes_checked = False

    @classmethod
    def open(cls, uri: str) -> Registry:
        return cls(open_store(uri))

    @property
    def uri(self) -> str:
        return self.store.uri

    def _check_conditional_writes(self) -> None:
        """Before this registry's first write: refuse a store that ignores conditional writes.

        Version numbers and aliases rest on If-None-Match and If-Match. S3 honours both, and so do recent
        S3-compatible stores; one that ignores them answers 200 to every racing claim, and two concurrent pushes
        then fill the same version with each other's files. Three small writes under the registry's root, once
        per Registry (a push or a CLI command opens one), tell: a create over an existing key and a swap with a
        wrong ETag must both be refused."""
        if self._conditional_writes_checked:
            return
        key = f".conditional-write-check-{uuid.uuid4().hex}"  # a name of its own: nothing shared is left behind
        ignored: list[str] = []
        self.store.put(key, b"first", if_none_match=True)
        try:
            for header, kwargs in (("If-None-Match", {"if_none_match": True}), ("If-Match", {"if_match": "0" * 32})):
                try:
                    self.store.put(key, b"second", **kwargs)
                    ignored.append(header)
                except PreconditionFailed:
                    pass
        finally:
            self.store.delete_prefix(key)  # the key and its lock
        if ignored:
            raise RegistryError(
                f"{self.uri}: the store ignores conditional writes ({' and '.join(ignored)}); the registry needs them "
                "so that concurrent pushes never take the same version and aliases move atomically (S3 and recent "
                "S3-compatible stores such as MinIO honour both)")
        self._conditional_writes_checked = True

    # -- versions -----------------------------------------------------------------------------------
    def _claimed_numbers(self, model: str) -> list[int]:
        return sorted(int(m.group(1)) for d in self.store.list_dirs(model) if (m := VERSION_DIR.match(d)))

    def push(
        self,
        model: str,
        src: Path,
        metadata: Mapping[str, Any] | None = None,
    ) -> ModelVersion:
        """Register the files under `src` as the next version of `model`."""
        if not NAME.match(model):
            raise RegistryError(f"model name {model!r} must match {NAME.pattern}")
        if not src.is_dir():
            raise RegistryError(f"{src}: not a directory")
        extra = checked_metadata(metadata or {})
        files = model_files(src)
        if not files:
            raise RegistryError(f"{src}: no files to register")
        self._check_conditional_writes()  # before the upload, the slow part
        staging = f"{model}/.staging-{uuid.uuid4().hex}"  # removed whole, push or fail
        checksums: dict[str, dict[str, Any]] = {}
        try:
            for rel, path in files:
                checksums[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
                self.store.put_file(f"{staging}/{rel}", path)
            version = self._claim(model)
            prefix = f"{model}/v{version}"
            for rel in checksums:
                self.store.copy(f"{staging}/{rel}", f"{prefix}/{rel}")
            manifest = {**extra, "schemaVersion": 1, "model": model, "version": version, "createdAt": _now(),
                        "files": checksums}
            if not self._create(f"{prefix}/{MANIFEST}", _dumps(manifest)):
                # Only possible if someone wrote into our claimed slot by hand.
                raise RegistryError(f"{model} v{version}: manifest already exists; refusing to overwrite")
        finally:
            self.store.delete_prefix(staging)
        return ModelVersion(model, version, self.store.url(prefix), manifest)

    def _create(self, key: str, data: bytes) -> bool:
        """Write `key` only if it does not exist; whether it now holds `data` as written by us.

        A conditional PUT is not idempotent: when an attempt lands but its answer is lost (a timeout under load),
        the client's retry is refused with 412 by our own first write. Reading back tells ours (same bytes:
        claims carry a unique token) from another writer's. S3 may also refuse a conditional write racing
        another one in flight (409) that then fails: the key stays free, and is tried again."""
        for _ in range(3):
            try:
                self.store.put(key, data, if_none_match=True)
                return True
            except PreconditionFailed:
                try:
                    return self.store.get(key)[0] == data
                except NotFound:
                    continue
        return False

    def _claim(self, model: str) -> int:
        existing = self._claimed_numbers(model)
        candidate = (existing[-1] if existing else 0) + 1
        token = json.dumps({"claimedAt": _now(), "by": uuid.uuid4().hex}).encode()
        for _ in range(10_000):
            if self._create(f"{model}/v{candidate}/{CLAIM}", token):
                return candidate
            candidate += 1
        raise RegistryError(f"{model}: could not claim a version number")

    def versions(self, model: str) -> list[ModelVersion]:
        out = []
        for n in self._claimed_numbers(model):
            try:
                out.append(self.version(model, n))
            except RegistryError:
                continue  # claimed but incomplete: not a version
        return out

    def models(self) -> list[str]:
        return [d for d in self.store.list_dirs("") if NAME.match(d)]

    def version(self, model: str, version: int) -> ModelVersion:
        prefix = f"{model}/v{version}"
        try:
            data, _ = self.store.get(f"{prefix}/{MANIFEST}")
        except NotFound:
            if not self._claimed_numbers(model):
                raise RegistryError(f"model {model!r} not found in {self.uri}") from None
            raise RegistryError(f"model {model!r} has no version {version}") from None
        return ModelVersion(model, version, self.store.url(prefix), _manifest(data, f"{model} v{version}"))

    def resolve(self, model: str, ref: str | int) -> int:
        """A version number from 7, "7", "v7" or an alias name."""
        text = str(ref)
        m = re.fullmatch(r"v?(\d+)", text)
        if m:
            return int(m.group(1))
        return int(self.alias(model, text)["version"])

    def download(self, model: str, ref: str | int, dest: Path) -> ModelVersion:
        """The version's files under `dest`, each checked before it takes its name: fetched to a temporary
        name beside it, verified, then renamed. A file that does not match is removed, and so is every file this
        download placed; a manifest that names a path outside `dest` is refused before anything is written."""
        mv = self.version(model, self.resolve(model, ref))
        prefix = f"{model}/v{mv.version}"
        files = {rel: safe_relative(rel) for rel in mv.manifest["files"]}
        dest.mkdir(parents=True, exist_ok=True)
        placed: list[Path] = []
        try:
            for rel, meta in mv.manifest["files"].items():
                target = dest.joinpath(*files[rel].parts)
                tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
                try:
                    self.store.get_file(f"{prefix}/{rel}", tmp)
                    actual = sha256_file(tmp)
                    if actual != meta["sha256"]:
                        raise ChecksumMismatch(
                            f"{model} v{mv.version}: checksum mismatch for {rel} (expected {meta['sha256'][:12]}…, "
                            f"got {actual[:12]}…); nothing was kept")
                    os.replace(tmp, target)
                    placed.append(target)
                finally:
                    tmp.unlink(missing_ok=True)
        except BaseException:
            for path in placed:
                path.unlink(missing_ok=True)
            raise
        (dest / MANIFEST).write_text(json.dumps(mv.manifest, indent=2), encoding="utf-8")
        return mv

    # -- aliases ------------------------------------------------------------------------------------
    def _alias_key(self, model: str, alias: str) -> str:
        if not ALIAS.match(alias):
            raise RegistryError(f"alias {alias!r} must match {ALIAS.pattern}")
        return f"{model}/aliases/{alias}.json"

    def alias(self, model: str, alias: str) -> dict[str, Any]:
        try:
            data, _ = self.store.get(self._alias_key(model, alias))
        except NotFound:
            raise RegistryError(f"model {model!r} has no alias {alias!r}") from None
        try:
            record = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            record = None
        if not isinstance(record, dict) or isinstance(record.get("version"), bool) \
                or not isinstance(record.get("version"), int) or not isinstance(record.get("history", []), list):
            raise RegistryError(f"alias {alias!r} of {model!r} is not a valid alias record")
        return record

    def aliases(self, model: str) -> dict[str, int]:
        out = {}
        for key in self.store.list_keys(f"{model}/aliases"):
            name = key.rsplit("/", 1)[-1].removesuffix(".json")
            if ALIAS.match(name):
                try:
                    out[name] = int(self.alias(model, name)["version"])
                except RegistryError:
                    continue  # a damaged record names no version; `show`/`resolve` say what is wrong with it
        return out

    def _update_alias(
        self, model: str, alias: str, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        """Compare-and-swap: `change` maps the record just read to the new one (None: leave it), and is applied
        again to a fresh read whenever someone else moved the alias in between."""
        key = self._alias_key(model, alias)
        self._check_conditional_writes()
        for _ in range(100):
            try:
                data, etag = self.store.get(key)
                current: dict[str, Any] | None = json.loads(data)
            except NotFound:
                current, etag = None, ""
            new = change(current)
            if new is None:
                return current
            try:
                if current is None:
                    self.store.put(key, _dumps(new), if_none_match=True)
                else:
                    self.store.put(key, _dumps(new), if_match=etag)
                return new
            except PreconditionFailed:
                continue  # someone moved it meanwhile: re-read and re-apply
        raise RegistryError(f"alias {alias!r} of {model!r} is changing too fast; try again")

    def set_alias(self, model: str, alias: str, version: int, reason: str = "") -> dict[str, Any]:
        self.version(model, version)  # must exist
        record = self._update_alias(model, alias, lambda current: _moved(current, alias, version, reason))
        assert record is not None
        return record

    def promote_if_better(self, model: str, alias: str, version: int, metric: str,
                          direction: Literal["maximize", "minimize"]) -> GateDecision:
        """The promotion gate as one compare-and-swap: `version` takes `alias` only if it strictly beats the
        holder read in the same attempt, so runs finishing together can never leave the worse model holding it
        (deciding first and moving the alias later could)."""
        candidate = self.version(model, version).manifest.get("metrics") or {}
        decisions: list[GateDecision] = []

        def change(current: dict[str, Any] | None) -> dict[str, Any] | None:
            holder = int(current["version"]) if current is not None else None
            try:
                held = self.version(model, holder).manifest.get("metrics") if holder is not None else None
            except RegistryError:
                held = None  # a holder without a manifest has no value to defend
            decision = decide(metric, direction, alias, candidate, held, holder)
            decisions.append(decision)
            return _moved(current, alias, version, decision.reason) if decision.promote else None

        self._update_alias(model, alias, change)
        return decisions[-1]

    def rollback(self, model: str, alias: str) -> dict[str, Any]:
        """Point `alias` back at the version it held before the last move."""

        def change(current: dict[str, Any] | None) -> dict[str, Any]:
            if current is None:
                raise RegistryError(f"model {model!r} has no alias {alias!r}")
            if not current["history"]:
                raise RegistryError(f"alias {alias!r} of {model!r} has no earlier version to roll back to")
            history = list(current["history"])
            previous = history.pop()
            return {
                "alias": alias,
                "version": previous["version"],
                "since": _now(),
                "reason": f"rollback from v{current['version']}",
                "history": history,
            }

        record = self._update_alias(model, alias, change)
        assert record is not None
        return record


def _moved(current: dict[str, Any] | None, alias: str, version: int, reason: str) -> dict[str, Any]:
    """The alias record after a move to `version`; the previous holder goes onto the history."""
    history = list(current["history"]) if current else []
    if current is not None:
        history.append({"version": current["version"], "until": _now()})
    return {"alias": alias, "version": version, "since": _now(), "reason": reason, "history": history}


def checked_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """What a push may add to a manifest: anything but the registry's own keys, with numeric metrics."""
    reserved = sorted(set(metadata) & set(RESERVED))
    if reserved:
        raise RegistryError(f"metadata may not set {', '.join(reserved)}: the registry sets them")
    metrics = metadata.get("metrics", {})
    if not isinstance(metrics, Mapping):
        raise RegistryError("metadata: metrics must be an object of metric name to number")
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RegistryError(f"metadata: metric {name!r} must be a finite number (got {value!r})")
    return dict(metadata)


def _manifest(data: bytes, what: str) -> dict[str, Any]:
    """A stored manifest, or a one-line error: it is read by `list`, `show`, `download` and the gate, and a
    store may hold one written by hand or by an older, laxer version."""
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RegistryError(f"{what}: manifest.json is not valid JSON") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(
            isinstance(m, dict) and isinstance(m.get("sha256"), str) for m in files.values()):
        raise RegistryError(f"{what}: manifest.json has no valid 'files' (name -> sha256)")
    if not isinstance(manifest.get("metrics", {}), dict):
        manifest["metrics"] = {}
    return manifest


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode("utf-8")
