"""How long each test file took in a past run, and the order that balances the two xdist workers with it.

`make test` runs `pytest -n 2 --dist loadfile --no-loadscope-reorder`: each file goes whole to one worker, in
collection order, to whichever worker is free first. Collected heaviest file first, that is the longest-first
rule, which leaves the workers within about one small file of each other. xdist's own order (most tests
first) put the files with few but long tests (the docs commands, the RBAC hand-over, the GPU-kit rehearsal)
last, and one worker ran alone for 95 s at the end of the suite.

Refresh the table after a change in the heavy tests:

    make test PYTEST_ARGS=--junitxml=/tmp/junit.xml && .venv/bin/python -m kit.durations /tmp/junit.xml

A stale table costs balance, never correctness; a file it does not list yet is scheduled first.
"""

from __future__ import annotations

import json
import math
import sys
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path

TABLE = Path(__file__).resolve().parent.parent / "tests" / "durations.json"


def per_file(junit_xml: Path) -> dict[str, float]:
    """Seconds per test file (setup, call and teardown together), heaviest first, from a JUnit XML report."""
    totals: dict[str, float] = {}
    for case in ET.parse(junit_xml).iter("testcase"):
        module = case.get("classname", "")
        if not module:
            continue
        # A test class adds its name to the module's: keep the module's dotted path up to the test_ file.
        parts = module.split(".")
        cut = next((i for i, p in enumerate(parts) if p.startswith("test_")), len(parts) - 1)
        path = "/".join(parts[:cut + 1]) + ".py"
        totals[path] = totals.get(path, 0.0) + float(case.get("time", 0.0))
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def load(table: Path = TABLE) -> dict[str, float]:
    if not table.exists():
        return {}
    loaded = json.loads(table.read_text(encoding="utf-8"))
    return {str(k): float(v) for k, v in loaded.items()}


def heaviest_first(path: str, seconds: Mapping[str, float]) -> float:
    """Sort key of a test file: its negated seconds; a file the table does not know sorts before all others."""
    return -seconds.get(path, math.inf)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m kit.durations JUNIT_XML", file=sys.stderr)
        return 2
    table = {path: round(s, 1) for path, s in per_file(Path(argv[0])).items()}
    TABLE.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    print(f"{TABLE}: {len(table)} files, {sum(table.values()):.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
