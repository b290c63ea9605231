"""Training curves as a PNG, for the MLflow run and for people who would rather look than read."""

from __future__ import annotations

from pathlib import Path


def plot_curves(history: list[dict[str, float]], path: Path, title: str) -> Path | None:
    """Loss, learning rate and evaluation metrics against the step; None when there is nothing to plot."""
    train = [h for h in history if "loss" in h]
    evals = [h for h in history if any(k.startswith("eval_") for k in h)]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    if train:
        axes[0].plot([h["step"] for h in train], [h["loss"] for h in train], label="train loss")
    eval_loss = [h for h in evals if "eval_loss" in h]
    if eval_loss:
        axes[0].plot([h["step"] for h in eval_loss], [h["eval_loss"] for h in eval_loss], "o-", label="eval loss")
    axes[0].set_title("loss")
    axes[0].set_xlabel("step")
    axes[0].legend()
    lr = [h for h in train if "learning_rate" in h]
    axes[1].plot([h["step"] for h in lr], [h["learning_rate"] for h in lr])
    axes[1].set_title("learning rate")
    axes[1].set_xlabel("step")
    keys = sorted({k for h in evals for k in h if k.startswith("eval_") and k != "eval_loss"
                   and "/" not in k and not k.endswith(("runtime", "per_second", "gen_len"))})
    for key in keys[:6]:
        pts = [h for h in evals if key in h]
        axes[2].plot([h["step"] for h in pts], [h[key] for h in pts], "o-", label=key.removeprefix("eval_"))
    axes[2].set_title("evaluation")
    axes[2].set_xlabel("step")
    if keys:
        axes[2].legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
