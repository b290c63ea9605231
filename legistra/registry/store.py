"""Object stores for the registry: S3 (any S3-compatible endpoint) and a local folder, same semantics.

The registry's atomicity rests on two conditional writes that both stores provide:
create-if-absent (`If-None-Match: *`) and compare-and-swap (`If-Match: <etag>`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from legistra import s3


class NotFound(KeyError):
    pass


class PreconditionFailed(Exception):
    """A conditional write lost: the key exists (create) or changed (compare-and-swap)."""


class Store(Protocol):
    uri: str

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str: ...
    def put_file(self, key: str, path: Path) -> None: ...
    def get(self, key: str) -> tuple[bytes, str]: ...
    def get_file(self, key: str, dest: Path) -> None: ...
    def list_keys(self, prefix: str) -> list[str]: ...
    def list_dirs(self, prefix: str) -> list[str]: ...
    def copy(self, src: str, dst: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def url(self, key: str) -> str: ...


def open_store(uri: str) -> Store:
    if s3.is_s3(uri):
        return S3Store(*s3.parse_s3_uri(uri))
    return LocalStore(Path(uri.removeprefix("file://")))


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class LocalStore:
    """A folder; create-if-absent via link(2), compare-and-swap under an fcntl lock."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents and path != self.root:
            raise ValueError(f"key escapes the registry root: {key}")
        return path

    def url(self, key: str) -> str:
        return str(self._path(key))

    def _tmp(self, path: Path, data: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Not mkstemp: its files are 0600 whatever the umask, so another user of a shared registry folder could
        # read the model files (0644) but not the manifests, claims and aliases beside them.
        tmp = path.parent / f".tmp-{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.parent / f".{path.name}.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        path = self._path(key)
        tmp = self._tmp(path, data)
        try:
            if if_none_match:
                try:
                    os.link(tmp, path)  # atomic: fails if the name exists
                except FileExistsError:
                    raise PreconditionFailed(key) from None
            elif if_match is not None:
                with self._locked(path):
                    try:
                        current = _md5(path.read_bytes())
                    except FileNotFoundError:
                        raise PreconditionFailed(key) from None
                    if current != if_match:
                        raise PreconditionFailed(key)
                    os.replace(tmp, path)
            else:
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return _md5(data)

    def put_file(self, key: str, path: Path) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".tmp-{dest.name}-{uuid.uuid4().hex}")
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def get(self, key: str) -> tuple[bytes, str]:
        try:
            data = self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(key) from None
        return data, _md5(data)

    def get_file(self, key: str, dest: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise NotFound(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)

    def list_keys(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        out = []
        for dirpath, _, files in os.walk(base):
            for name in files:
                if name.startswith(".tmp-") or name.endswith(".lock"):
                    continue
                out.append(str((Path(dirpath) / name).relative_to(self.root)))
        return sorted(out)

    def list_dirs(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir())

    def copy(self, src: str, dst: str) -> None:
        self.put_file(dst, self._path(src))

    def delete_prefix(self, prefix: str) -> None:
        """Remove the key or folder `prefix` and its lock file. Parent folders stay: another writer may be
        creating a file in one right now (callers that must leave nothing give each prefix a folder of its own)."""
        path = self._path(prefix)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        (path.parent / f".{path.name}.lock").unlink(missing_ok=True)


class S3Store:
    """S3 through boto3; the endpoint, region and credentials come from the standard AWS variables."""

    def __init__(self, bucket: str, prefix: str = "") -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.s3: Any = s3.client()

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    @staticmethod
    def _code(exc: Exception) -> str:
        return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key), "Body": data}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if if_match is not None:
            kwargs["IfMatch"] = f'"{if_match}"'
        try:
            resp = self.s3.put_object(**kwargs)
        except Exception as exc:
            if self._code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                raise PreconditionFailed(key) from None
            raise
        return str(resp.get("ETag", "")).strip('"') or _md5(data)

    def put_file(self, key: str, path: Path) -> None:
        self.s3.upload_file(str(path), self.bucket, self._key(key))

    def get(self, key: str) -> tuple[bytes, str]:
        try:
            resp = self.s3.get_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if self._code(exc) in ("NoSuchKey", "404"):
                raise NotFound(key) from None
            raise
        return resp["Body"].read(), str(resp["ETag"]).strip('"')

    def get_file(self, key: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.s3.download_file(self.bucket, self._key(key), str(dest))
        except Exception as exc:
            if self._code(exc) in ("NoSuchKey", "404"):
                raise NotFound(key) from None
            raise

    def _pages(self, prefix: str, **kw: Any) -> Iterator[dict[str, Any]]:
        full = self._key(prefix)
        yield from self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full, **kw)

    def list_keys(self, prefix: str) -> list[str]:
        strip = len(self._key("")) if self.prefix else 0
        return sorted(o["Key"][strip:] for page in self._pages(prefix) for o in page.get("Contents", []))

    def list_dirs(self, prefix: str) -> list[str]:
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        out = []
        for page in self._pages(prefix, Delimiter="/"):
            for cp in page.get("CommonPrefixes", []):
                out.append(cp["Prefix"].rstrip("/").rsplit("/", 1)[-1])
        return sorted(out)

    def copy(self, src: str, dst: str) -> None:
        # Managed copy: multipart for large objects, server-side, no bytes through this process.
        self.s3.copy({"Bucket": self.bucket, "Key": self._key(src)}, self.bucket, self._key(dst))

    def delete_prefix(self, prefix: str) -> None:
        keys = [self._key(k) for k in self.list_keys(prefix)]
        for i in range(0, len(keys), 1000):
            self.s3.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True}
            )
