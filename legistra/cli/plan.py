"""`legistra plan FILE [--gpu NAME]`: per-rank GPU memory of a TrainingRun, and the largest batch that fits.

The model's shape comes from its config.json: a local folder, the Hugging Face cache, or the operator's list of
well-known models; the estimate is `legistra.memory`'s, the same the operator refuses runs with.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from legistra.api.loader import DocumentError, read_documents
from legistra.api.spec import TrainingRunSpec
from legistra.memory import (
    GIB,
    GPUS,
    ModelShape,
    estimate,
    fit,
    gpu_memory,
    gpu_of,
    known_config,
    lora_params,
    price_per_gpu_hour,
)

EXIT_DOES_NOT_FIT = 3


class PlanError(Exception):
    pass


def model_shape(spec: TrainingRunSpec, base: Path) -> tuple[ModelShape, str]:
    """(shape, where its config.json came from); PlanError naming spec.model.name when none can be read."""
    found = model_config(spec, base)
    if found is None:
        raise PlanError(f"spec.model.name: no config.json for {spec.model.name!r} (not a local folder, not in the "
                        "Hugging Face cache, not a well-known model); download it once or point model.name at a "
                        "local copy")
    cfg, source = found
    try:
        return ModelShape.from_config(cfg), source
    except ValueError as exc:
        raise PlanError(f"spec.model.name: {source}: {exc}") from None


def model_config(spec: TrainingRunSpec, base: Path) -> tuple[Mapping[str, Any], str] | None:
    """(the model's config.json fields, where they came from): a local folder, the Hugging Face cache, else
    legistra's list of well-known models; None when none has it. PlanError for a config.json that is not one."""
    name = spec.model.name
    folder = Path(name) if Path(name).is_absolute() else base / name
    candidates = [folder / "config.json"]
    if not name.startswith(("s3://", "/", ".")) and name.count("/") <= 1:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "config.json", revision=spec.model.revision)
            if isinstance(cached, str):
                candidates.append(Path(cached))
        except ImportError:
            pass
    for path in candidates:
        if path.is_file():
            try:
                cfg = read_documents(path)[0]  # bounded: a config.json may come from anyone's model folder
            except (DocumentError, OSError) as exc:
                raise PlanError(f"spec.model.name: {path}: {exc}") from None
            if not isinstance(cfg, dict):
                raise PlanError(f"spec.model.name: {path}: not a JSON object")
            return cfg, str(path)
    known = known_config(name)
    return (known, "legistra's list of well-known models") if known is not None else None


def length_check(spec: TrainingRunSpec, base: Path) -> str | None:
    """maxLength beyond the model's positions, from its config.json where one is at hand (local folder, HF
    cache, well-known list); nothing to say about a model whose config cannot be read here."""
    from legistra.memory import length_problem

    try:
        found = model_config(spec, base)
    except PlanError as exc:
        return str(exc)
    return length_problem(spec, found[0], found[1]) if found is not None else None


def plan(spec: TrainingRunSpec, base: Path, gpu: str | None, prices: Mapping[str, float] | None = None
         ) -> dict[str, Any]:
    """The plan as data: the shape's source, the estimate's parts, and per GPU whether it fits and, where `prices`
    (the operator's gpuPrices, LEGISTRA_GPU_PRICES) has one, what an hour of the run costs (nodes x gpusPerNode
    GPUs)."""
    from legistra.lora import lora_targets

    shape, source = model_shape(spec, base)
    targets = lora_targets(shape.model_type, spec.lora)
    e = estimate(spec, shape, targets)
    wanted = gpu or gpu_of(spec)
    if wanted is not None:
        known = gpu_memory(wanted)
        if known is None:
            raise PlanError(f"--gpu {wanted}: unknown GPU; one of {', '.join(GPUS)}")
        gpus = [known]
    else:
        gpus = list(GPUS.items())
    fits = [fit(spec, shape, targets, name, size) for name, size in gpus]
    count = spec.resources.nodes * spec.resources.gpus_per_node
    hourly = {f.gpu: round(p * count, 2) for f in fits
              if (p := price_per_gpu_hour(prices or {}, wanted or f.gpu)) is not None}
    return {
        "model": spec.model.name, "config": source, "params": shape.params,
        "trainable": lora_params(shape, targets, spec.lora.r) if spec.lora.enabled else shape.params,
        "batchSize": e.batch_size, "maxLength": spec.data.max_length,
        "perRankGiB": {k: round(v / GIB, 2) for k, v in e.parts().items()},
        "totalGiB": round(e.total / GIB, 2),
        "gpus": [{"gpu": f.gpu, "memoryGiB": round(f.capacity / GIB, 1), "fits": f.fits,
                  "largestBatch": f.largest_batch, "message": f.message(),
                  **({"costPerHour": hourly[f.gpu]} if f.gpu in hourly else {})} for f in fits],
        "gpuCount": count,
        "checked": wanted is not None,
    }


def render(doc: dict[str, Any]) -> str:
    lines = [f"model {doc['model']}: {doc['params'] / 1e6:.0f}M parameters, {doc['trainable'] / 1e6:.2f}M trainable "
             f"(shape from {doc['config']})",
             f"per GPU at batch {doc['batchSize']}, {doc['maxLength']} tokens:"]
    lines += [f"  {part:<12}{gib:>8.2f} GiB" for part, gib in doc["perRankGiB"].items()]
    lines.append(f"  {'total':<12}{doc['totalGiB']:>8.2f} GiB (with the allocator's reserve)")
    priced = any("costPerHour" in g for g in doc["gpus"])
    lines.append(f"{'GPU':<11}{'memory':>9}  {'fits':<5}{'largest batch':>14}"
                 + (f"  {'cost/hour (' + str(doc['gpuCount']) + ' GPUs)':>20}" if priced else ""))
    for g in doc["gpus"]:
        fits = "yes" if g["fits"] else "NO"
        cost = "" if not priced else f"  {g['costPerHour']:>20.2f}" if "costPerHour" in g else f"  {'-':>20}"
        lines.append(f"{g['gpu']:<11}{g['memoryGiB']:>7.1f}Gi  {fits:<5}{g['largestBatch']:>14}{cost}")
    if doc["checked"] and not doc["gpus"][0]["fits"]:
        lines.append(doc["gpus"][0]["message"])
    return "\n".join(lines)
