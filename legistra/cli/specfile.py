"""Reading a TrainingRun file for any subcommand: the one place that reports spec problems to the user."""

from __future__ import annotations

import sys

from legistra.api.spec import TrainingRun
from legistra.api.validation import SpecError, load_training_run


def load_or_report(path: str) -> TrainingRun | None:
    """The TrainingRun in `path`, or None after printing every problem with its field path."""
    try:
        return load_training_run(path)
    except SpecError as exc:
        print(f"{path}: invalid", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
    except OSError as exc:
        print(f"{path}: {exc.strerror}", file=sys.stderr)
    return None
