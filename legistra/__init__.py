"""Legistra Train: LoRA/DeepSpeed training of legal-NLP models, locally or as Kubernetes TrainingRuns."""

__version__ = "0.1.0"
