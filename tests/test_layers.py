"""The package's layers, enforced: which part of `legistra` may import which, at module level or inside a function.

`api` is at the bottom; the torch-free middle (`contract`, `memory`, `lora`, the clients) builds on it; `operator`
(the torch-free controller image) and `trainer` (the pods) are beside each other and never import each other;
`cli` is on top, and imports the trainer only inside the commands that train or read data.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "legistra"

# (module, function) pairs of `cli` that may import legistra.trainer, inside the function only: `train`, `validate
# --data` (the data preflight) and `data prepare`.
CLI_MAY_TRAIN = {("legistra.cli.local", "check_data"), ("legistra.cli.local", "launch"),
                 ("legistra.cli.main", "cmd_data_prepare")}

# The bottom layer imports only itself and the S3 URI parser (a leaf with no imports of its own).
API_MAY_IMPORT = ("legistra.api", "legistra.s3")

# What each part may not import, lazily or not.
FORBIDDEN = {
    "legistra.api": ("legistra.",),  # except API_MAY_IMPORT
    "legistra.contract": ("legistra.operator", "legistra.trainer", "legistra.cli"),
    "legistra.memory": ("legistra.operator", "legistra.trainer", "legistra.cli"),
    "legistra.lora": ("legistra.operator", "legistra.trainer", "legistra.cli"),
    "legistra.operator": ("legistra.trainer", "legistra.cli"),
    "legistra.trainer": ("legistra.operator", "legistra.cli"),
    "legistra.registry": ("legistra.operator", "legistra.trainer", "legistra.cli"),
    "legistra.tracking": ("legistra.operator", "legistra.trainer", "legistra.cli"),
}


def module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[tuple[str, str | None]]:
    """(imported module, enclosing function or None) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = module_of(path).split(".")

    def walk(node: ast.AST, fn: str | None) -> Iterator[tuple[str, str | None]]:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn is None else fn
            if isinstance(child, ast.Import):
                yield from ((a.name, fn) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    prefix = here[: len(here) - child.level + (1 if path.name == "__init__.py" else 0)]
                    base = ".".join([*prefix, base] if base else prefix)
                yield base, fn
                yield from ((f"{base}.{a.name}", fn) for a in child.names)
            yield from walk(child, inner)

    yield from walk(tree, None)


def violations() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_of(path)
        for target, fn in imports(path):
            for part, banned in FORBIDDEN.items():
                if module != part and not module.startswith(part + "."):
                    continue
                if part == "legistra.api" and (target == "legistra" or target.startswith(API_MAY_IMPORT)):
                    continue
                if any(target == b.rstrip(".") or target.startswith(b if b.endswith(".") else b + ".")
                       for b in banned):
                    found.append(f"{module} ({fn or 'module level'}) imports {target}")
            if module.startswith("legistra.cli") and target.startswith("legistra.trainer") and \
                    (module, fn) not in CLI_MAY_TRAIN:
                found.append(f"{module} ({fn or 'module level'}) imports {target}: only {sorted(CLI_MAY_TRAIN)} may")
    return found


def test_the_layers_hold() -> None:
    assert violations() == []


def test_the_layer_check_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The checker itself: an import inside a function, and a relative one, are both seen."""
    probe = PACKAGE / "operator" / "_layer_probe.py"
    probe.write_text("def f():\n    from ..trainer import train\n    import legistra.trainer.data\n", encoding="utf-8")
    try:
        found = violations()
    finally:
        probe.unlink()
    assert "legistra.operator._layer_probe (f) imports legistra.trainer" in found
    assert "legistra.operator._layer_probe (f) imports legistra.trainer.data" in found


BLOCK_TRAIN_EXTRA = """
import sys, importlib.abc
class NoTrainExtra(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "transformers", "peft", "deepspeed", "datasets", "accelerate"}:
            raise ImportError(f"{name}: not installed (core-only install)")
        return None
sys.meta_path.insert(0, NoTrainExtra())
"""


def test_a_reconcile_through_the_memory_check_needs_nothing_of_the_trainer() -> None:
    """As in the operator image (no [train] extra): a run with a known model on a known GPU goes through the memory
    check, is refused for its batch, and no module of legistra.trainer (nor torch) was imported on the way."""
    code = BLOCK_TRAIN_EXTRA + """
import datetime as dt
from legistra.api.validation import parse_training_run
from legistra.operator.backends import BACKENDS
from legistra.operator.config import JobDefaults
from legistra.operator.decide import Observed, decide
from kit.objects import run_doc

doc = run_doc(model={"name": "google/flan-t5-large"}, task="summarization",
              data={"train": "s3://d/t.jsonl", "maxLength": 512}, training={"batchSize": 512, "precision": "bf16"},
              resources={"gpusPerNode": 1, "nodeSelector": {"nvidia.com/gpu.product": "Tesla-T4"}}, uid="u")
run = parse_training_run(doc)
plan = decide(Observed(doc, dt.datetime.now(dt.timezone.utc), run=run, backend=BACKENDS["pytorchjob"]), JobDefaults())
print(plan.phase, plan.status["conditions"][0]["reason"] if plan.status else None)
print(sorted(m for m in sys.modules if m.startswith(("legistra.trainer", "torch", "transformers", "peft"))))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    verdict, loaded = out.stdout.strip().splitlines()
    assert verdict.startswith("Failed"), out.stdout
    assert loaded == "[]", loaded


MAX_FUNCTION_LINES = 80


def test_no_function_is_longer_than_a_screen() -> None:
    """A function a reader can hold at once: none under legistra/ is longer than 80 lines (no exceptions today)."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno is not None:
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []
