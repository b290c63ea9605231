"""`legistra submit` / `legistra status` against the cluster the kubeconfig (or the pod's service account) names.

Every failure is one line on stderr with an exit code scripts can use: 1 for a cluster or credential problem,
3 for a run that failed (`status`)."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from legistra.api.spec import TrainingRun
from legistra.operator.kube import ApiError, Credentials, Kube


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
            _, created = await kube.create_or_get(body)
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
        lines.append(f"  progress: step {prog.get('step')}/{prog.get('totalSteps')} ({prog.get('percent')}%)"
                     f", epoch {prog.get('epoch')}")
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


async def show_status(name: str, namespace: str | None, creds: Credentials, as_json: bool, watch: bool) -> int:
    kube = Kube(creds)
    try:
        ns = namespace or kube.creds.namespace
        last = None
        while True:
            try:
                obj = await kube.get("TrainingRun", ns, name)
            except ApiError as exc:
                if exc.status >= 500:
                    return unreachable(creds, exc)
                print(f"error: {exc.message}", file=sys.stderr)
                return 1
            if obj is None:
                print(f"error: TrainingRun {name} not found in {ns}", file=sys.stderr)
                return 1
            text = json.dumps(obj.get("status") or {}, indent=2) if as_json else format_status(obj)
            if text != last:
                print(text, flush=True)
                last = text
            phase = (obj.get("status") or {}).get("phase")
            if not watch or phase in ("Succeeded", "Failed"):
                return 0 if phase != "Failed" else 3
            await asyncio.sleep(2)
    finally:
        await kube.close()
