"""A fault-injecting HTTP proxy between the operator and a real API server.

The operator talks plain HTTP to the proxy; the proxy talks to the API server as the admin (client
certificate). A share of requests is answered with what a loaded or flaky control plane answers: 500 (before
the request reaches the server, or after it was applied: the worst case for a write), 429 with Retry-After,
and 409 Conflict on writes (never on reads, which a real server does not refuse that way). Every watch stream
is cut after a few seconds, so the operator resumes its watches all through a campaign. Every request and
fault is counted, so a campaign reports what the faults cost.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kit.ports import free_port

HOP_HEADERS = ("content-type", "accept", "user-agent")


@dataclass
class Faults:
    rate: float = 0.2  # share of non-watch requests answered with an error
    watch_lifetime: float = 5.0  # every watch stream is cut after 1..this many seconds (0: never)
    seed: int = 11


@dataclass
class Tally:
    requests: Counter[str] = field(default_factory=Counter)  # by method (watches as WATCH)
    injected: Counter[str] = field(default_factory=Counter)  # "500-before", "500-after", "429", "409"
    watches_cut: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"requests": dict(self.requests), "requests_total": sum(self.requests.values()),
                "injected": dict(self.injected), "injected_total": sum(self.injected.values()),
                "watches_cut": self.watches_cut}


def _status(code: int) -> dict[str, Any]:
    reason = {500: "InternalError", 429: "TooManyRequests", 409: "Conflict"}[code]
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
            "message": f"injected by the test proxy: {reason}"}


class FaultProxy:
    """Runs in its own thread and event loop; `url` is what the operator's kubeconfig names."""

    def __init__(self, upstream: str, ctx: ssl.SSLContext, faults: Faults) -> None:
        self.upstream, self.ctx, self.faults = upstream, ctx, faults
        self.rng = random.Random(faults.seed)
        self.tally = Tally()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("the fault proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _main(self) -> None:
        import aiohttp
        from aiohttp import web

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        connector = aiohttp.TCPConnector(ssl=self.ctx, limit=64)
        async with aiohttp.ClientSession(self.upstream, connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=None)) as session:
            app = web.Application()
            async def handle(request: Any) -> Any:
                return await self._handle(session, request)

            app.router.add_route("*", "/{tail:.*}", handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

    async def _handle(self, session: Any, request: Any) -> Any:
        from aiohttp import web

        watch = request.query.get("watch") in ("true", "1")
        method = "WATCH" if watch else request.method
        self.tally.requests[method] += 1
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() in HOP_HEADERS}
        if watch:
            return await self._stream(session, request, headers)
        fault = self._pick(request.method)
        if fault is not None:
            self.tally.injected[fault] += 1
            if fault == "500-after":  # applied upstream, reported as failed: the client cannot tell
                async with session.request(request.method, request.path_qs, data=body or None, headers=headers) as up:
                    await up.read()
            code = int(fault[:3])
            extra = {"Retry-After": "1"} if code == 429 else {}
            return web.json_response(_status(code), status=code, headers=extra)
        async with session.request(request.method, request.path_qs, data=body or None, headers=headers) as up:
            data = await up.read()
            return web.Response(body=data, status=up.status,
                                headers={"Content-Type": up.headers.get("Content-Type", "application/json")})

    def _pick(self, method: str) -> str | None:
        if self.rng.random() >= self.faults.rate:
            return None
        choices = ["500-before", "500-after", "429"] + (["409"] if method in ("POST", "PATCH", "PUT") else [])
        return self.rng.choice(choices)

    async def _stream(self, session: Any, request: Any, headers: dict[str, str]) -> Any:
        import aiohttp
        from aiohttp import web

        life = self.faults.watch_lifetime
        cut_at = time.monotonic() + self.rng.uniform(1, life) if life > 0 else None
        async with session.get(request.path_qs, headers=headers) as up:
            resp = web.StreamResponse(status=up.status,
                                      headers={"Content-Type": up.headers.get("Content-Type", "application/json")})
            await resp.prepare(request)
            while True:
                timeout = None if cut_at is None else max(0.0, cut_at - time.monotonic())
                try:
                    chunk = await asyncio.wait_for(up.content.readany(), timeout)
                except asyncio.TimeoutError:
                    self.tally.watches_cut += 1
                    break
                except aiohttp.ClientPayloadError:  # the server ended the stream first: end ours too
                    break
                if not chunk:
                    break
                try:
                    await resp.write(chunk)
                except ConnectionError:  # the operator went away (killed, or closed its watch)
                    return resp
            try:
                await resp.write_eof()
            except ConnectionError:  # went away between the last chunk and the end
                pass
            return resp


def kubeconfig_for(url: str, namespace: str) -> dict[str, Any]:
    """A kubeconfig naming the proxy (plain HTTP; the proxy holds the real credentials)."""
    return {"apiVersion": "v1", "kind": "Config", "current-context": "proxy",
            "clusters": [{"name": "proxy", "cluster": {"server": url}}],
            "users": [{"name": "proxy", "user": {"token": "held-by-the-proxy"}}],
            "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "proxy", "namespace": namespace}}]}

