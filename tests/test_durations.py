"""The suite's schedule: seconds per test file from a JUnit report, and heaviest-first collection (kit/durations.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kit import durations
from tests.conftest import ROOT

REPORT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
<testcase classname="tests.test_small" name="test_a" time="0.5"/>
<testcase classname="tests.test_small" name="test_b" time="1.25"/>
<testcase classname="tests.test_big.TestWorld" name="test_c" time="30.0"/>
<testcase classname="tests.test_big" name="test_d" time="12.0"/>
<testcase classname="" name="collection error" time="0"/>
</testsuite></testsuites>
"""


def test_seconds_are_summed_per_file_with_test_classes_folded_into_their_module(tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    report.write_text(REPORT)
    assert durations.per_file(report) == {"tests/test_big.py": 42.0, "tests/test_small.py": 1.75}
    assert list(durations.per_file(report)) == ["tests/test_big.py", "tests/test_small.py"]  # heaviest first


def test_unknown_files_go_first_then_the_heaviest_and_equal_files_keep_their_order() -> None:
    seconds = {"tests/test_a.py": 5.0, "tests/test_b.py": 50.0, "tests/test_c.py": 5.0}
    files = ["tests/test_a.py", "tests/test_b.py", "tests/test_c.py", "tests/test_new.py"]
    assert sorted(files, key=lambda f: durations.heaviest_first(f, seconds)) == [
        "tests/test_new.py", "tests/test_b.py", "tests/test_a.py", "tests/test_c.py"]


def test_the_table_names_only_test_files_that_exist() -> None:
    table = durations.load()
    assert table, "tests/durations.json is missing or empty"
    missing = [path for path in table if not (ROOT / path).is_file()]
    assert not missing, f"renamed or deleted: {missing}; refresh the table (kit/durations.py says how)"


def test_pytest_collects_the_heaviest_file_first() -> None:
    """The conftest hook is wired: named light file first on the command line, the heavy one is collected first."""
    light, heavy = sorted(durations.load().items(), key=lambda kv: kv[1])[0][0], next(iter(durations.load()))
    res = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          light, heavy], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    ids = [line for line in res.stdout.splitlines() if "::" in line]
    assert ids and ids[0].startswith(heavy + "::") and ids[-1].startswith(light + "::"), ids[:3] + ids[-3:]
