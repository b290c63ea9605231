"""What each task reports: the evaluation metrics the trainer logs (as eval_<name>) and the default one.

Used by the schema (a promotion gate or metricForBestModel on a metric the task never reports is refused
before a GPU is spent) and by the trainer <-> operator contract (`legistra.contract.DEFAULT_METRIC`). A test
keeps these names equal to what `legistra.trainer.metrics` computes.
"""

from __future__ import annotations

TASK_METRICS: dict[str, tuple[str, ...]] = {
    "risk-classification": ("accuracy", "f1_macro", "f1_micro", "loss"),
    "clause-extraction": ("precision", "recall", "f1", "f1_macro", "aupr", "precision_at_80_recall",
                          "precision_at_90_recall", "loss"),
    "summarization": ("rouge1", "rouge2", "rougeL", "gen_len", "loss"),
}
# Per clause type, clause extraction also reports f1/<clause-type slug>.
PER_TYPE_PREFIX = {"clause-extraction": "f1/"}

DEFAULT_METRIC: dict[str, str] = {
    "risk-classification": "f1_macro",
    "clause-extraction": "f1",
    "summarization": "rougeL",
}


def reports(task: str, metric: str) -> bool:
    """Whether `task` reports `metric` (with or without the eval_ prefix)."""
    name = metric.removeprefix("eval_")
    prefix = PER_TYPE_PREFIX.get(task)
    return name in TASK_METRICS[task] or bool(prefix and name.startswith(prefix) and len(name) > len(prefix))
