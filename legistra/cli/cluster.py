"""`legistra submit / status / get / delete / wait` against the cluster the kubeconfig (or the pod's service
account) names, in kubectl's idiom.

Every failure is one line on stderr with an exit code scripts can use: 1 for a cluster or credential problem
(or a timeout of `wait`), 3 for a run that failed (`status`, `wait`)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from typing import Any

from legistra.api.spec import TrainingRun
from legistra.operator.kube import ApiError, Credentials, Kube
from legistra.operator.status import gpu_seconds


def unreachable(creds: Credentials, exc: ApiError) -> int:
    print(f"error: cannot reach the cluster at {creds.server}: {exc.message}", file=sys.stderr)
    return 1


async def submit(run: TrainingRun, namespace: str | None, creds: Credentials) -> int:
    kube = Kube(creds)
    try:
        ns = namespace or run.metadata.namespace or kube.creds.namespace
        body = {"apiVersion": run.api_version, "kind": "TrainingRun",
                "metadata": {"name": run.metadata.name, "namespace": ns,
                             **({"labels": run.metadata.labels} if run.metadata.labels else {}),
                             **({"annotations": run.metadata.annotations} if run.metadata.annotations else {})},
                "spec": run.spec.wire()}
        try:
            _, created = await kube.create_or_get(body, read=False)
        except ApiError as exc:
            if exc.status >= 500:
                return unreachable(creds, exc)
            print(f"error: {exc.message}", file=sys.stderr)
            return 1
        verb = "created" if created else "already exists:"
        print(f"trainingrun.legistra.io/{run.metadata.name} {verb} in {ns}; "
              f"follow it with `legistra status {run.metadata.name} -n {ns} --watch`")
        return 0
    finally:
        await kube.close()


def format_status(obj: dict[str, Any]) -> str:
    st = obj.get("status") or {}
    attempt = int(st.get("attempt") or 1)
    lines = [f"{obj['metadata']['namespace']}/{obj['metadata']['name']}  {obj['spec']['task']}  "
             f"{st.get('phase', 'Pending')}" + (f" (attempt {attempt})" if attempt > 1 else "")]
    if st.get("message"):
        lines.append(f"  {st['message']}")
    prog = st.get("progress")
    if prog:
        epoch = f", epoch {prog['epoch']}" if prog.get("epoch") is not None else ""
        lines.append(f"  progress: step {prog.get('step')}/{prog.get('totalSteps')} ({prog.get('percent')}%){epoch}")
    if st.get("keyMetric"):
        lines.append(f"  metric:   {st['keyMetric']}")
    if st.get("mlflow", {}).get("runId"):
        lines.append(f"  MLflow:   {st['mlflow'].get('url') or st['mlflow']['runId']}")
    model = st.get("model")
    if model:
        lines.append(f"  model:    {model.get('name')} v{model.get('version')} {model.get('uri')}"
                     + (f" @{model['alias']}" if model.get("alias") else ""))
    for c in st.get("conditions", []):
        lines.append(f"  {c['type']:<18} {c['status']:<6} {c['reason']}: {c.get('message', '')}")
    return "\n".join(lines)


def progress_line(st: dict[str, Any]) -> tuple[int, int | None, str]:
    """(step, total steps, what follows the bar) of a status: the phase, the key metric, the epoch."""
    prog = st.get("progress") or {}
    parts = [str(st.get("phase", "Pending"))]
    if st.get("keyMetric"):
        parts.append(str(st["keyMetric"]))
    if prog.get("epoch") is not None:
        parts.append(f"epoch {prog['epoch']}")
    total = prog.get("totalSteps")
    return int(prog.get("step") or 0), int(total) if total else None, "  ".join(parts)


class Watch:
    """`status --watch` on a terminal: one progress bar (steps, phase, latest metric), each new message above
    it, the full status at the end. Elsewhere (a pipe, a log) each changed status is printed whole."""

    def __init__(self, terminal: bool) -> None:
        self.terminal = terminal
        self.last: str | None = None
        self.message: str | None = None
        self.bar: Any = None

    def show(self, obj: dict[str, Any], final: bool) -> None:
        if not self.terminal:
            text = format_status(obj)
            if text != self.last:
                print(text, flush=True)
                self.last = text
            return
        from tqdm import tqdm

        st = obj.get("status") or {}
        step, total, postfix = progress_line(st)
        if self.bar is None:
            print(format_status(obj).splitlines()[0], flush=True)
            self.bar = tqdm(total=total, unit="step", file=sys.stdout)
        if total and self.bar.total != total:
            self.bar.total = total
        self.bar.n = step
        self.bar.set_postfix_str(postfix, refresh=False)
        if st.get("message") and st["message"] != self.message:
            self.bar.write(f"  {st['message']}")
            self.message = st["message"]
        self.bar.refresh()
        if final:
            self.bar.close()
            print(format_status(obj), flush=True)


async def show_status(name: str, namespace: str | None, creds: Credentials, as_json: bool, watch: bool) -> int:
    kube = Kube(creds)
    watcher = Watch(terminal=watch and not as_json and sys.stdout.isatty())
    try:
        ns = namespace or kube.creds.namespace
        last = None
        while True:
            obj = await _fetch(kube, name, ns)
            if isinstance(obj, int):
                return obj
            phase = (obj.get("status") or {}).get("phase")
            done = not watch or phase in ("Succeeded", "Failed")
            if as_json:
                text = json.dumps(obj.get("status") or {}, indent=2)
                if text != last:
                    print(text, flush=True)
                    last = text
            else:
                watcher.show(obj, final=done)
            if done:
                return 0 if phase != "Failed" else 3
            await asyncio.sleep(2)
    finally:
        await kube.close()


async def _fetch(kube: Kube, name: str, ns: str) -> dict[str, Any] | int:
    """The TrainingRun, or the exit code after one line that says what went wrong."""
    try:
        obj = await kube.get("TrainingRun", ns, name)
    except ApiError as exc:
        if exc.status >= 500:
            return unreachable(kube.creds, exc)
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    if obj is None:
        print(f"error: TrainingRun {name} not found in {ns}", file=sys.stderr)
        return 1
    return obj


async def read_run(name: str, namespace: str | None, creds: Credentials) -> dict[str, Any] | int:
    """The TrainingRun once (`legistra logs`), or the exit code after one line that says what went wrong."""
    kube = Kube(creds)
    try:
        return await _fetch(kube, name, namespace or kube.creds.namespace)
    finally:
        await kube.close()


def age(created: str | None, now: dt.datetime | None = None) -> str:
    """kubectl's AGE column: 45s, 12m, 5h, 3d."""
    if not created:
        return "-"
    seconds = ((now or dt.datetime.now(dt.timezone.utc))
               - dt.datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(0, int(seconds))}s"


def gpu_hours(status: dict[str, Any], now: dt.datetime | None = None) -> str:
    """GPU-hours so far: status.usage's finished stretches, plus the one running now (nodes x GPUs x its time)."""
    if not status.get("usage"):
        return "-"
    return f"{gpu_seconds(status, now or dt.datetime.now(dt.timezone.utc)) / 3600:.2f}"


def table(runs: list[dict[str, Any]], all_namespaces: bool, wide: bool, now: dt.datetime | None = None) -> str:
    """The printer columns of the CRD (`kubectl get trainingruns`), NAMESPACE first with -A; -o wide adds the
    backend, job, model version and GPU-hours (the running stretch counted up to `now`)."""
    head = ["NAME", "TASK", "PHASE", "PROGRESS", "METRIC", "AGE"] + (
        ["BACKEND", "JOB", "VERSION", "GPU-HOURS"] if wide else [])
    rows = [(["NAMESPACE"] if all_namespaces else []) + head]
    for r in runs:
        st = r.get("status") or {}
        progress = st.get("progress") or {}
        row = [r["metadata"]["name"], r["spec"]["task"], st.get("phase", "Pending"),
               f"{progress['percent']}%" if "percent" in progress else "-", st.get("keyMetric") or "-",
               age(r["metadata"].get("creationTimestamp"))]
        if wide:
            model = st.get("model") or {}
            row += [st.get("backend") or "-", st.get("jobName") or "-", str(model.get("version", "-")),
                    gpu_hours(st, now)]
        rows.append(([r["metadata"].get("namespace", "")] if all_namespaces else []) + row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


async def get_runs(name: str | None, namespace: str | None, all_namespaces: bool, creds: Credentials,
                   output: str | None) -> int:
    kube = Kube(creds)
    try:
        ns = None if all_namespaces else namespace or creds.namespace
        if name is not None:
            one = await kube.get("TrainingRun", ns or creds.namespace, name)
            if one is None:
                print(f"error: TrainingRun {name} not found in {ns}", file=sys.stderr)
                return 1
            runs = [one]
        else:
            runs = sorted(await kube.list("TrainingRun", ns),
                          key=lambda r: (r["metadata"].get("namespace", ""), r["metadata"]["name"]))
    except ApiError as exc:
        return unreachable(creds, exc) if exc.status >= 500 else _api_error(exc)
    finally:
        await kube.close()
    if output in ("json", "yaml"):
        doc: Any = runs[0] if name is not None else {"apiVersion": "v1", "kind": "List", "items": runs}
        if output == "json":
            print(json.dumps(doc, indent=2))
        else:
            import yaml

            print(yaml.safe_dump(doc, sort_keys=False), end="")
    elif not runs:
        print(f"No TrainingRuns found{'' if all_namespaces else f' in {ns}'}.", file=sys.stderr)
    else:
        print(table(runs, all_namespaces, output == "wide"))
    return 0


def _api_error(exc: ApiError) -> int:
    try:
        message = json.loads(exc.message).get("message") or exc.message
    except ValueError:
        message = exc.message
    print(f"error: {message}", file=sys.stderr)
    return 1


async def delete_run(name: str, namespace: str | None, creds: Credentials) -> int:
    """Deletes the run; its ConfigMap, volume and job follow by owner reference (the registered model stays)."""
    kube = Kube(creds)
    ns = namespace or creds.namespace
    try:
        if await kube.get("TrainingRun", ns, name) is None:
            print(f"error: TrainingRun {name} not found in {ns}", file=sys.stderr)
            return 1
        await kube.delete("TrainingRun", ns, name, propagation="Background")
    except ApiError as exc:
        return unreachable(creds, exc) if exc.status >= 500 else _api_error(exc)
    finally:
        await kube.close()
    print(f"trainingrun.legistra.io/{name} deleted from {ns}")
    return 0


async def wait_for(name: str, namespace: str | None, creds: Credentials, phase: str, timeout: float,
                   poll: float = 2.0) -> int:
    """0 once the run reaches `phase`; 3 if it ends Failed instead; 1 on timeout (kubectl wait's codes)."""
    kube = Kube(creds)
    ns = namespace or creds.namespace
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while True:
            obj = await kube.get("TrainingRun", ns, name)
            if obj is None:
                print(f"error: TrainingRun {name} not found in {ns}", file=sys.stderr)
                return 1
            current = (obj.get("status") or {}).get("phase", "Pending")
            if current == phase:
                print(f"trainingrun.legistra.io/{name} condition met: phase {phase}")
                return 0
            if current == "Failed" or (current == "Succeeded" and phase != "Succeeded"):
                print(f"error: TrainingRun {name} ended {current}: {(obj.get('status') or {}).get('message', '')}",
                      file=sys.stderr)
                return 3
            if asyncio.get_running_loop().time() >= deadline:
                print(f"error: timed out after {timeout:g}s waiting for {name} to be {phase} (it is {current})",
                      file=sys.stderr)
                return 1
            await asyncio.sleep(poll)
    except ApiError as exc:
        return unreachable(creds, exc) if exc.status >= 500 else _api_error(exc)
    finally:
        await kube.close()
