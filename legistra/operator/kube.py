"""A thin async Kubernetes API client (aiohttp, which kopf already brings) for the objects we manage.

The official `kubernetes` client's REST layer would cost far more memory for a dozen REST calls; this speaks
plain JSON. Credentials come from `credentials.py` (the `kubernetes` package's loader, as kopf's login does),
and a 401 re-reads them once: bound service-account tokens rotate, exec plugins hand out short-lived ones.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

# kind -> (API prefix, plural); a cluster-scoped kind is used without a namespace.
RESOURCES: dict[str, tuple[str, str]] = {
    "KopfPeering": ("/apis/kopf.dev/v1", "kopfpeerings"),
    "ClusterKopfPeering": ("/apis/kopf.dev/v1", "clusterkopfpeerings"),
    "TrainingRun": ("/apis/legistra.io/v1alpha1", "trainingruns"),
    "TrainingSchedule": ("/apis/legistra.io/v1alpha1", "trainingschedules"),
    "PyTorchJob": ("/apis/kubeflow.org/v1", "pytorchjobs"),
    "TrainJob": ("/apis/trainer.kubeflow.org/v1alpha1", "trainjobs"),
    "ClusterTrainingRuntime": ("/apis/trainer.kubeflow.org/v1alpha1", "clustertrainingruntimes"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "Secret": ("/api/v1", "secrets"),
    "Pod": ("/api/v1", "pods"),
    "Event": ("/api/v1", "events"),
}


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message

    @property
    def transient(self) -> bool:
        """Worth retrying: throttling, server trouble, or a conflict that a re-read resolves."""
        return self.status in (409, 429) or self.status >= 500


@dataclass
class Credentials:
    server: str
    token: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    namespace: str = "default"


def path_of(kind: str, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
    prefix, plural = RESOURCES[kind]
    out = f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"
    if name:
        out += f"/{name}"
    if subresource:
        out += f"/{subresource}"
    return out


def status_patch(current: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch that turns `current` into `new`: fields `new` dropped are sent as null, or they would stay."""
    return {**new, **{k: None for k in current if k not in new}}


def resource_version(obj: Mapping[str, Any] | None) -> str | None:
    """An object's resourceVersion (None for no object, or an API emulator that keeps none)."""
    return (obj.get("metadata") or {}).get("resourceVersion") if obj is not None else None


def newer_version(a: str | None, b: str | None) -> bool:
    """Whether resourceVersion `a` is later than `b`. Opaque to clients in principle; every API server stores
    etcd revisions, which grow. Unknown or non-numeric versions are never called newer."""
    try:
        return a is not None and b is not None and int(a) > int(b)
    except ValueError:
        return False


class Kube:
    """GET / POST / merge-PATCH / DELETE of namespaced objects."""

    def __init__(self, creds: Credentials, timeout_s: float = 30.0, agent: str = "legistra",
                 refresh: Callable[[], Credentials] | None = None) -> None:
        self.creds = creds
        self.refresh = refresh  # fresh credentials after a 401
        self.agent = agent  # the API server's audit log names who wrote what
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self.creds.server.startswith("https"):
            return False
        if self.creds.insecure:
            return False
        ctx = ssl.create_default_context(cafile=self.creds.ca_file)
        if self.creds.cert_file and self.creds.key_file:
            ctx.load_cert_chain(self.creds.cert_file, self.creds.key_file)
        return ctx

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Accept": "application/json", "User-Agent": self.agent}
            if self.creds.token:
                headers["Authorization"] = f"Bearer {self.creds.token}"
            self._session = aiohttp.ClientSession(
                base_url=self.creds.server, headers=headers, timeout=self.timeout,
                connector=aiohttp.TCPConnector(ssl=self._ssl(), limit=32),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _request(self, method: str, path: str, body: Any = None,
                       content_type: str = "application/json", attempts: int = 4, read: bool = True
                       ) -> dict[str, Any]:
        """One API call; throttling, 5xx and dropped connections are retried with exponential backoff.
        `read=False`: the answer is not parsed ({} is returned), for writes whose echo nobody reads."""
        delay = 0.25
        reauthenticated = False
        for attempt in range(1, attempts + 1):
            try:
                return await self._once(method, path, body, content_type, read)
            except ApiError as exc:
                if exc.status == 401 and self.refresh is not None and not reauthenticated:
                    reauthenticated = True  # once: a second 401 is a real refusal
                    self.creds = await asyncio.to_thread(self.refresh)
                    await self.close()
                    self._session = None
                    continue
                if exc.status == 409 or not exc.transient or attempt == attempts:
                    raise
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
                if attempt == attempts:
                    raise ApiError(503, f"{method} {path}: {exc!r}") from exc
            await asyncio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    async def _once(self, method: str, path: str, body: Any, content_type: str, read: bool) -> dict[str, Any]:
        s = await self.session()
        async with s.request(method, path, json=body, headers={"Content-Type": content_type}) as resp:
            raw = await resp.read()  # read whole even when unused: a connection is reused only once drained
            if resp.status >= 400:
                raise ApiError(resp.status, raw.decode(errors="replace")[:500])
            found: dict[str, Any] = json.loads(raw) if read and raw else {}
            return found or {}

    async def serves(self, group_version: str, plural: str) -> bool:
        """API discovery: whether the server serves `plural` in `group_version` (a CRD is installed)."""
        try:
            found = await self._request("GET", f"/apis/{group_version}")
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return any(r.get("name") == plural for r in found.get("resources") or [])

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._request("GET", path_of(kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def get_object(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """The live copy of the object a manifest names, or None."""
        return await self.get(obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])

    async def pages(self, kind: str, namespace: str | None, label_selector: str | None = None,
                    limit: int = 500) -> AsyncIterator[list[dict[str, Any]]]:
        """A list in pages of `limit` (the API server's `continue` tokens): at 10,000 runs one list response
        held whole, parsed, is over a hundred MB of Python objects for as long as its pass lasts."""
        token = ""
        while True:
            params = {"limit": str(limit), **({"labelSelector": label_selector} if label_selector else {}),
                      **({"continue": token} if token else {})}
            found = await self._request("GET", f"{path_of(kind, namespace)}?{urllib.parse.urlencode(params)}")
            yield list(found.get("items") or [])
            token = str((found.get("metadata") or {}).get("continue") or "")
            if not token:
                return

    async def list(self, kind: str, namespace: str | None, label_selector: str | None = None) -> list[dict[str, Any]]:
        return [item async for page in self.pages(kind, namespace, label_selector) for item in page]

    async def create(self, obj: Mapping[str, Any], read: bool = True) -> dict[str, Any]:
        """The object as created; with `read=False`, {} (its echo is not parsed)."""
        ns = obj["metadata"].get("namespace")
        return await self._request("POST", path_of(obj["kind"], ns), dict(obj), read=read)

    async def create_or_get(self, obj: Mapping[str, Any], read: bool = True) -> tuple[dict[str, Any], bool]:
        """Idempotent create: (object, created). An existing object is returned as it is; a created one only
        with `read` (else {})."""
        try:
            return await self.create(obj, read), True
        except ApiError as exc:
            if exc.status != 409:
                raise
        found = await self.get_object(obj)
        if found is None:
            raise ApiError(409, f"{obj['kind']} {obj['metadata']['name']} exists but cannot be read")
        return found, False

    async def patch(self, kind: str, namespace: str, name: str, body: Mapping[str, Any],
                    subresource: str | None = None) -> dict[str, Any]:
        return await self._request("PATCH", path_of(kind, namespace, name, subresource), dict(body),
                                   "application/merge-patch+json")

    async def patch_status(self, kind: str, namespace: str, name: str, current: Mapping[str, Any],
                           new: Mapping[str, Any], resource_version: str | None = None) -> dict[str, Any]:
        """Replace the status subresource's `current` content by `new` (a merge patch with nulls); the object
        as written. With `resource_version`, only if the object is still at that version: the API server
        answers 409 when anyone wrote it since (`current` was read from an older copy)."""
        body: dict[str, Any] = {"status": status_patch(current, new)}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return await self.patch(kind, namespace, name, body, subresource="status")

    async def delete(self, kind: str, namespace: str, name: str, propagation: str | None = None) -> None:
        body = ({"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}
                if propagation else None)
        try:
            await self._request("DELETE", path_of(kind, namespace, name), body)
        except ApiError as exc:
            if exc.status != 404:
                raise
