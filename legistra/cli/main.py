"""The `legistra` command. Heavy imports (torch, MLflow, kopf) happen inside the subcommands that need them."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legistra.api.schedule import TrainingSchedule
from legistra.cli.specfile import load_or_report, manifest_or_report

if TYPE_CHECKING:
    from legistra.operator.kube import Credentials


def _err(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 1


def cmd_validate(args: argparse.Namespace) -> int:
    bad = 0
    for path in args.files:
        run = manifest_or_report(path)
        if run is None:
            bad += 1
            continue
        if isinstance(run, TrainingSchedule):
            print(f"{path}: ok (TrainingSchedule '{run.spec.schedule}', {run.spec.template.spec.task})")
            continue
        print(f"{path}: ok ({run.spec.task}, model {run.spec.model.name})")
        from legistra.cli.plan import length_check
        from legistra.operator.build import memory_refusal, queue_warning, storage_warning
        from legistra.operator.config import JobDefaults

        # The cluster's facts as the operator is told them (LEGISTRA_CHECKPOINT_RWX, LEGISTRA_CHECKPOINT_URI,
        # LEGISTRA_GPU_PRODUCT): what the operator would warn about or refuse, said now.
        defaults = JobDefaults.from_env()
        for warning in (storage_warning(run, defaults), queue_warning(run, defaults)):
            if warning:
                print(f"  warning: {warning}")
        misfit = memory_refusal(run, defaults) or length_check(run.spec, Path(path).resolve().parent)
        if misfit:
            print(f"  error: {misfit}")
            bad += 1
        if args.data:
            from legistra.cli.local import absolutize_data, check_data

            run = absolutize_data(run, Path(path).resolve().parent)
            if check_data(run, Path(args.state_dir).resolve() / "cache", out=sys.stdout) is not None:
                bad += 1
    return 1 if bad else 0


def cmd_plan(args: argparse.Namespace) -> int:
    from legistra.cli.plan import EXIT_DOES_NOT_FIT, PlanError, plan, render

    run = load_or_report(args.file)
    if run is None:
        return 1
    from legistra.operator.config import JobDefaults

    try:
        # Priced as the operator prices it (LEGISTRA_GPU_PRICES, when set here), then by --price.
        prices = {**JobDefaults.from_env().gpu_prices, **price_flags(args.price)}
        doc = plan(run.spec, Path(args.file).resolve().parent, args.gpu, prices)
    except (PlanError, ValueError) as exc:
        return _err(str(exc))
    print(json.dumps(doc, indent=2) if args.json else render(doc))
    return EXIT_DOES_NOT_FIT if doc["checked"] and not doc["gpus"][0]["fits"] else 0


def price_flags(given: list[str]) -> dict[str, float]:
    """`--price GPU=PRICE` flags as a price table (the same rules as LEGISTRA_GPU_PRICES)."""
    from legistra.operator.config import price_table

    table: dict[str, float] = {}
    for flag in given:
        gpu, _, raw = flag.rpartition("=")
        try:
            price = float(raw)
        except ValueError:
            price = math.nan
        if not gpu or math.isnan(price):
            raise ValueError(f"--price {flag}: expected GPU=PRICE, e.g. --price H100-80GB=2.49")
        table.update(price_table({gpu: price}))
    return table


def cmd_train(args: argparse.Namespace) -> int:
    from legistra.cli.local import train_locally

    return train_locally(args)


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from legistra.trainer.data import DataError
    from legistra.trainer.prepare import prepare

    try:
        n = prepare(args.format, Path(args.src), Path(args.dest), to=args.to, validation_split=args.validation_split)
    except (DataError, ValueError) as exc:
        return _err(str(exc))
    print(f"wrote {n} rows to {args.dest}")
    return 0


def _registry(args: argparse.Namespace) -> Any:
    from legistra.contract import configured_uris, registry_uri
    from legistra.registry.registry import Registry

    return Registry.open(str(registry_uri(None, args.registry or configured_uris()[1], Path(args.state_dir))))


def _print(obj: Any, as_json: bool, table: list[list[str]] | None = None) -> None:
    if as_json or table is None:
        print(json.dumps(obj, indent=2, sort_keys=True, default=str))
        return
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def cmd_registry(args: argparse.Namespace) -> int:
    from legistra.registry.registry import RegistryError

    try:
        reg = _registry(args)
        action = args.registry_cmd
        if action == "push":
            meta = _metadata(args.metadata) if args.metadata else {}
            mv = reg.push(args.model, Path(args.dir), meta)
            _print({"model": mv.model, "version": mv.version, "uri": mv.uri}, args.json,
                   [["MODEL", "VERSION", "URI"], [mv.model, f"v{mv.version}", mv.uri]])
        elif action == "list":
            versions = reg.versions(args.model)
            if not versions:
                reg.version(args.model, 1)  # raises the right "not found" message
            aliases = reg.aliases(args.model)
            by_version: dict[int, list[str]] = {}
            for alias, v in aliases.items():
                by_version.setdefault(v, []).append(alias)
            rows = [["VERSION", "CREATED", "TASK", "ALIASES", "METRICS"]]
            for mv in versions:
                m = mv.manifest.get("metrics", {})
                keys = [k for k in m if k.startswith("eval_") and not k.endswith("loss")][:2]
                rows.append([f"v{mv.version}", str(mv.manifest.get("createdAt", "")), str(mv.manifest.get("task", "")),
                             ",".join(sorted(by_version.get(mv.version, []))) or "-",
                             " ".join(f"{k.removeprefix('eval_')}={_number(m[k])}" for k in keys) or "-"])
            _print({"model": args.model, "aliases": aliases,
                    "versions": [{"version": mv.version, "uri": mv.uri, "createdAt": mv.manifest.get("createdAt"),
                                  "metrics": mv.manifest.get("metrics", {})} for mv in versions]},
                   args.json, rows)
        elif action == "show":
            mv = reg.version(args.model, reg.resolve(args.model, args.version))
            _print({"uri": mv.uri, **mv.manifest}, True)
        elif action == "download":
            mv = reg.download(args.model, args.ref, Path(args.dest))
            _print({"model": mv.model, "version": mv.version, "path": str(Path(args.dest).resolve()),
                    "files": len(mv.manifest["files"])}, args.json,
                   [["MODEL", "VERSION", "FILES", "PATH"],
                    [mv.model, f"v{mv.version}", str(len(mv.manifest["files"])), str(Path(args.dest).resolve())]])
        elif action == "promote":
            rec = reg.set_alias(args.model, args.alias, reg.resolve(args.model, args.version), reason="manual promote")
            _alias_out(args, rec)
        elif action == "rollback":
            rec = reg.rollback(args.model, args.alias)
            _alias_out(args, rec)
    except RegistryError as exc:
        return _err(str(exc))
    return 0


def _metadata(path: str) -> dict[str, Any]:
    """The --metadata file: one JSON object, read through the bounded reader."""
    from legistra.api.loader import DocumentError, read_documents
    from legistra.registry.registry import RegistryError

    try:
        docs = read_documents(path)
    except (DocumentError, OSError) as exc:
        raise RegistryError(f"--metadata {path}: {exc}") from None
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise RegistryError(f"--metadata {path}: must hold one JSON (or YAML) object")
    meta: dict[str, Any] = docs[0]
    return meta


def _number(value: Any) -> str:
    """A stored metric for a table: a number as 4 significant digits, anything else as it is."""
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)


def _alias_out(args: argparse.Namespace, rec: dict[str, Any]) -> None:
    _print(rec, args.json, [["MODEL", "ALIAS", "VERSION", "REASON"],
                            [args.model, rec["alias"], f"v{rec['version']}", rec.get("reason", "")]])


def cmd_render(args: argparse.Namespace) -> int:
    import yaml

    from legistra.operator.build import build_children
    from legistra.operator.config import JobDefaults

    run = load_or_report(args.file)
    if run is None:
        return 2
    # Without a namespace the objects name none, so `kubectl apply -n team -f -` puts them where it is told.
    run.metadata.namespace = args.namespace or run.metadata.namespace
    # The API server assigns the uid; a placeholder keeps owner references visible in the review.
    run.metadata.uid = run.metadata.uid or "<assigned-by-the-api-server>"
    defaults = JobDefaults.from_env()
    chosen = args.backend or next((b for b in (run.spec.resources.backend, defaults.backend) if b != "auto"),
                                  "pytorchjob")
    docs = build_children(run, defaults, backend="trainjob" if chosen == "trainjob" else "pytorchjob")

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        # run.json reads as a block, the way `kubectl get -o yaml` shows ConfigMap data
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    print(yaml.dump_all(docs, Dumper=Dumper, sort_keys=False, width=120), end="")
    return 0


def cmd_operator(args: argparse.Namespace) -> int:
    from legistra.operator.main import run_operator

    if not args.all_namespaces and not args.namespace:
        return _err("give --namespace NS (repeatable) or --all-namespaces")
    run_operator(args.namespace, args.all_namespaces, args.standalone, args.liveness, args.verbose)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    import asyncio

    from legistra.cli.cluster import submit

    run = load_or_report(args.file)
    if run is None:
        return 2
    creds = _credentials(args)
    return 1 if creds is None else asyncio.run(submit(run, args.namespace, creds))


def cmd_status(args: argparse.Namespace) -> int:
    import asyncio

    from legistra.cli.cluster import show_status

    creds = _credentials(args)
    return 1 if creds is None else asyncio.run(show_status(args.name, args.namespace, creds, args.json, args.watch))


def cmd_logs(args: argparse.Namespace) -> int:
    import asyncio

    from legistra.cli.cluster import read_run
    from legistra.cli.logs import show_logs

    creds = _credentials(args)
    if creds is None:
        return 1
    run = asyncio.run(read_run(args.name, args.namespace, creds))
    return run if isinstance(run, int) else show_logs(run, args.rank, args.follow, args.kubeconfig, args.context)


def cmd_get(args: argparse.Namespace) -> int:
    import asyncio

    from legistra.cli.cluster import get_runs

    creds = _credentials(args)
    return 1 if creds is None else asyncio.run(get_runs(args.name, args.namespace, args.all_namespaces, creds,
                                                        args.output))


def cmd_delete(args: argparse.Namespace) -> int:
    import asyncio

    from legistra.cli.cluster import delete_run

    creds = _credentials(args)
    return 1 if creds is None else asyncio.run(delete_run(args.name, args.namespace, creds))


def cmd_wait(args: argparse.Namespace) -> int:
    import asyncio

    from legistra.cli.cluster import wait_for

    phase = args.for_.removeprefix("phase=").removeprefix("jsonpath={.status.phase}=")
    if phase not in ("Pending", "Running", "Retrying", "Succeeded", "Failed", "Suspended"):
        return _err(f"--for: {args.for_!r} is not a phase (Succeeded, Failed, Running, Suspended, ...)")
    creds = _credentials(args)
    return 1 if creds is None else asyncio.run(wait_for(args.name, args.namespace, creds, phase,
                                                        _seconds(args.timeout)))


def _seconds(text: str) -> float:
    """kubectl's durations: 90, 90s, 10m, 2h."""
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)


def _credentials(args: argparse.Namespace) -> Credentials | None:
    """The cluster's credentials, or None after one line that says what to do."""
    from legistra.operator.credentials import KubeconfigError, cluster_credentials

    try:
        return cluster_credentials(args.kubeconfig, args.context, os.environ)
    except KubeconfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


class VersionAction(argparse.Action):
    """`legistra --version`: looks the commit up only when asked (it may run git)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from legistra.version import code_version

        print(f"legistra {code_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="legistra", description="Train legal-NLP models from TrainingRun files.")
    p.add_argument("--state-dir", default=".legistra", help="local state: MLflow store, registry, runs")
    p.add_argument("--version", action=VersionAction, nargs=0,
                   help="print the package version and the git commit it was built from")
    sub = p.add_subparsers(dest="command", required=True)

    add_local_commands(sub)
    add_cluster_commands(sub)
    add_data_commands(sub)
    add_registry_commands(sub)
    return p


def add_local_commands(sub: Any) -> None:
    """validate, train, plan, render: commands that need no cluster."""
    v = sub.add_parser("validate", help="check TrainingRun files; prints every problem with its field path")
    v.add_argument("files", nargs="+")
    v.add_argument("--data", action="store_true",
                   help="also read the data and check its rows (the first 10,000 of each file), as training will")
    v.set_defaults(fn=cmd_validate)

    t = sub.add_parser("train", help="run a TrainingRun on this machine (torchrun, local MLflow and registry)")
    t.add_argument("file")
    t.add_argument("--nproc", type=int, default=None, help="processes (default: nodes x gpusPerNode, 1 on CPU)")
    t.add_argument("--fresh", action="store_true", help="discard checkpoints of an earlier attempt")
    t.add_argument("--registry", default=None, help="registry root (s3://bucket/prefix or a folder)")
    t.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: local sqlite store)")
    t.add_argument("--json", action="store_true", help="print the result as JSON")
    t.set_defaults(fn=cmd_train)

    pl = sub.add_parser("plan", help="GPU memory per rank and the largest batch that fits; exit 3 if it does not fit")
    pl.add_argument("file")
    pl.add_argument("--gpu", help="GPU type, e.g. H100-80GB, A100-40GB, L4 (default: the run's "
                                  "nvidia.com/gpu.product node selector, else a table of common GPUs)")
    pl.add_argument("--price", action="append", default=[], metavar="GPU=PRICE",
                    help="a price per GPU-hour (repeatable; over LEGISTRA_GPU_PRICES): the cost of an hour of the run")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(fn=cmd_plan)

    rn = sub.add_parser("render", help="print the objects the operator would create for a TrainingRun")
    rn.add_argument("file")
    rn.add_argument("--namespace", "-n", default=None)
    rn.add_argument("--backend", choices=["pytorchjob", "trainjob"], default=None,
                    help="job kind to render (default: the run's spec.resources.backend, else PyTorchJob)")
    rn.set_defaults(fn=cmd_render)


def cluster_options(sp: argparse.ArgumentParser, namespaced: bool = True) -> None:
    if namespaced:
        sp.add_argument("--namespace", "-n", default=None, help="namespace (default: the context's)")
    sp.add_argument("--kubeconfig", default=None, help="kubeconfig file(s) (default: $KUBECONFIG, ~/.kube/config)")
    sp.add_argument("--context", default=None, help="kubeconfig context (default: the current one)")


def add_cluster_commands(sub: Any) -> None:
    """operator, and the commands that act on a cluster through the current kubeconfig."""
    op = sub.add_parser("operator", help="run the Kubernetes controller")
    op.add_argument("--namespace", "-n", action="append", default=[], help="namespace to watch (repeatable)")
    op.add_argument("--all-namespaces", "-A", action="store_true", help="watch the whole cluster")
    op.add_argument("--standalone", action="store_true", help="no peering (single replica, tests)")
    op.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="liveness/readiness endpoint")
    op.add_argument("--verbose", action="store_true")
    op.set_defaults(fn=cmd_operator)

    sm = sub.add_parser("submit", help="create (or show) a TrainingRun in the current kubeconfig's cluster")
    sm.add_argument("file")
    sm.add_argument("--namespace", "-n", default=None)
    sm.add_argument("--kubeconfig", default=None, help="kubeconfig file(s) (default: $KUBECONFIG, ~/.kube/config)")
    sm.add_argument("--context", default=None, help="kubeconfig context (default: the current one)")
    sm.set_defaults(fn=cmd_submit)

    st = sub.add_parser("status", help="a TrainingRun's phase, progress, metrics and model")
    st.add_argument("name")
    st.add_argument("--namespace", "-n", default=None)
    st.add_argument("--kubeconfig", default=None, help="kubeconfig file(s) (default: $KUBECONFIG, ~/.kube/config)")
    st.add_argument("--context", default=None, help="kubeconfig context (default: the current one)")
    st.add_argument("--json", action="store_true")
    st.add_argument("--watch", "-w", action="store_true", help="follow until the run finishes")
    st.set_defaults(fn=cmd_status)

    g = sub.add_parser("get", help="list TrainingRuns like kubectl get (-A, -o wide|yaml|json)")
    g.add_argument("name", nargs="?", default=None)
    g.add_argument("--all-namespaces", "-A", action="store_true")
    g.add_argument("--output", "-o", choices=["wide", "yaml", "json"], default=None)
    cluster_options(g)
    g.set_defaults(fn=cmd_get)

    lg = sub.add_parser("logs", help="a run's training logs (the master pod, or --rank N's) via Kubeflow's client")
    lg.add_argument("name")
    lg.add_argument("--follow", "-f", action="store_true", help="stream until the pod's training ends")
    lg.add_argument("--rank", type=int, default=None, help="the pod that holds this global rank (default: rank 0)")
    cluster_options(lg)
    lg.set_defaults(fn=cmd_logs)

    de = sub.add_parser("delete", help="delete a TrainingRun (its job, config and volume follow; models stay)")
    de.add_argument("name")
    cluster_options(de)
    de.set_defaults(fn=cmd_delete)

    w = sub.add_parser("wait", help="wait until a TrainingRun reaches a phase; exit 0, 1 on timeout, 3 if it failed")
    w.add_argument("name")
    w.add_argument("--for", dest="for_", default="Succeeded", help="the phase, e.g. Succeeded or phase=Succeeded")
    w.add_argument("--timeout", default="3600s", help="give up after this long (90s, 30m, 2h)")
    cluster_options(w)
    w.set_defaults(fn=cmd_wait)


def add_data_commands(sub: Any) -> None:
    d = sub.add_parser("data", help="data utilities")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    prep = dsub.add_parser("prepare", help="convert CUAD / LEDGAR / BillSum release files to our jsonl or to a "
                           "saved DatasetDict")
    prep.add_argument("--format", required=True, choices=["cuad", "ledgar", "billsum"])
    prep.add_argument("--to", default="jsonl", choices=["jsonl", "saved-dataset"],
                      help="jsonl (a file) or saved-dataset (a folder written by datasets' save_to_disk)")
    prep.add_argument("--validation-split", type=float, default=0.0,
                      help="with --to saved-dataset: also write a seeded validation split of this fraction")
    prep.add_argument("src")
    prep.add_argument("dest")
    prep.set_defaults(fn=cmd_data_prepare)


def add_registry_commands(sub: Any) -> None:
    r = sub.add_parser("registry", help="model registry: versions and aliases")
    r.add_argument("--registry", default=None, help="root (default: $LEGISTRA_REGISTRY_URI, then the local folder)")
    r.add_argument("--json", action="store_true", help="machine-readable output")
    rsub = r.add_subparsers(dest="registry_cmd", required=True)
    push = rsub.add_parser("push", help="register a model folder as the next version")
    push.add_argument("dir")
    push.add_argument("--model", required=True)
    push.add_argument("--metadata", help="JSON file merged into the manifest")
    rsub.add_parser("list", help="versions of a model").add_argument("model")
    show = rsub.add_parser("show", help="one version's manifest")
    show.add_argument("model")
    show.add_argument("version", help="number, vN or alias")
    dl = rsub.add_parser("download", help="fetch a version (checksums verified)")
    dl.add_argument("model")
    dl.add_argument("ref", help="number, vN or alias")
    dl.add_argument("dest")
    pr = rsub.add_parser("promote", help="point an alias at a version")
    pr.add_argument("model")
    pr.add_argument("version")
    pr.add_argument("--alias", required=True)
    rb = rsub.add_parser("rollback", help="point an alias back at its previous version")
    rb.add_argument("model")
    rb.add_argument("--alias", required=True)
    for sp in rsub.choices.values():
        # Accept the options after the subcommand too; SUPPRESS keeps the group-level value when absent.
        sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
        sp.add_argument("--registry", default=argparse.SUPPRESS)
        sp.set_defaults(fn=cmd_registry)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rc: int = args.fn(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
