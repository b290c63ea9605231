"""Reading a TrainingRun file for any subcommand: the one place that reports spec problems to the user."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from legistra.api.schedule import TrainingSchedule
from legistra.api.spec import TrainingRun
from legistra.api.validation import SpecError, load_manifest, load_training_run

T = TypeVar("T")


def _or_report(load: Callable[[str], T], path: str) -> T | None:
    try:
        return load(path)
    except SpecError as exc:
        print(f"{path}: invalid", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
    except OSError as exc:
        print(f"{path}: {exc.strerror}", file=sys.stderr)
    return None


def load_or_report(path: str) -> TrainingRun | None:
    """The TrainingRun in `path`, or None after printing every problem with its field path."""
    return _or_report(load_training_run, path)


def manifest_or_report(path: str) -> TrainingRun | TrainingSchedule | None:
    """The TrainingRun or TrainingSchedule in `path` (read once), or None after printing every problem."""
    return _or_report(load_manifest, path)
