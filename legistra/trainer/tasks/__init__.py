"""The three legal-NLP tasks."""

from __future__ import annotations

from legistra.api.spec import TrainingRunSpec
from legistra.trainer.tasks.base import TaskHandler
from legistra.trainer.tasks.classification import RiskClassification
from legistra.trainer.tasks.extraction import ClauseExtraction
from legistra.trainer.tasks.summarization import Summarization

HANDLERS: dict[str, type[TaskHandler]] = {
    "risk-classification": RiskClassification,
    "clause-extraction": ClauseExtraction,
    "summarization": Summarization,
}


def handler_for(spec: TrainingRunSpec) -> TaskHandler:
    return HANDLERS[spec.task](spec)


__all__ = ["HANDLERS", "TaskHandler", "handler_for"]
