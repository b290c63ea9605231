"""Evaluation metrics as pure functions over plain Python/numpy values.

Clause extraction follows the CUAD paper: a predicted span matches a gold span of the same clause type
when their character Jaccard overlap is at least 0.5; predictions ranked by confidence give the
precision-recall curve, its area (AUPR) and precision at 80% / 90% recall.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    label: str
    score: float = 1.0


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> dict[str, float]:
    t, p = np.asarray(y_true), np.asarray(y_pred)
    acc = float((t == p).mean()) if len(t) else 0.0
    per_label = []
    tp_sum = fp_sum = fn_sum = 0
    for k in range(num_labels):
        tp = int(((p == k) & (t == k)).sum())
        fp = int(((p == k) & (t != k)).sum())
        fn = int(((p != k) & (t == k)).sum())
        tp_sum, fp_sum, fn_sum = tp_sum + tp, fp_sum + fp, fn_sum + fn
        if tp + fp + fn:  # labels absent from both truth and prediction do not dilute the macro mean
            per_label.append(_f1(tp, fp, fn))
    return {
        "accuracy": acc,
        "f1_macro": float(np.mean(per_label)) if per_label else 0.0,
        "f1_micro": _f1(tp_sum, fp_sum, fn_sum),
    }


def multilabel_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """y_true / y_pred: 0/1 matrices of shape (examples, labels)."""
    t, p = y_true.astype(bool), y_pred.astype(bool)
    per_label = []
    for k in range(t.shape[1]):
        tp, fp, fn = int((p[:, k] & t[:, k]).sum()), int((p[:, k] & ~t[:, k]).sum()), int((~p[:, k] & t[:, k]).sum())
        if tp + fp + fn:
            per_label.append(_f1(tp, fp, fn))
    tp, fp, fn = int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())
    return {
        "accuracy": float((t == p).all(axis=1).mean()) if len(t) else 0.0,  # exact-set match
        "f1_macro": float(np.mean(per_label)) if per_label else 0.0,
        "f1_micro": _f1(tp, fp, fn),
    }


def majority_label(counts: Mapping[str, int]) -> str:
    """The most frequent training label (ties: the first in sort order), the baseline's constant prediction."""
    return min(counts, key=lambda label: (-counts[label], label)) if counts else ""


def _f1(tp: int, fp: int, fn: int) -> float:
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0


def jaccard(a: Span, b: Span) -> float:
    inter = max(0, min(a.end, b.end) - max(a.start, b.start))
    union = max(a.end, b.end) - min(a.start, b.start)
    return inter / union if union > 0 else 0.0


def _match(pred: Sequence[Span], gold: Sequence[Span], threshold: float) -> list[bool]:
    """Greedy one-to-one matching, highest-confidence predictions first; True per matched prediction."""
    used = [False] * len(gold)
    hits = [False] * len(pred)
    for i in sorted(range(len(pred)), key=lambda i: -pred[i].score):
        best, best_j = threshold, -1
        for j, g in enumerate(gold):
            if not used[j] and g.label == pred[i].label:
                score = jaccard(pred[i], g)
                if score >= best:
                    best, best_j = score, j
        if best_j >= 0:
            used[best_j] = True
            hits[i] = True
    return hits


def span_metrics(
    predictions: Sequence[Sequence[Span]], references: Sequence[Sequence[Span]], threshold: float = 0.5
) -> dict[str, float]:
    """Span-level P/R/F1 (micro and per clause type) plus CUAD's AUPR and precision at 80/90% recall."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references must cover the same documents")
    per_type: dict[str, list[int]] = {}
    ranked: list[tuple[float, bool]] = []
    n_gold = 0
    for pred, gold in zip(predictions, references):
        hits = _match(pred, gold, threshold)
        n_gold += len(gold)
        for g in gold:
            per_type.setdefault(g.label, [0, 0, 0])[2] += 1
        for p, hit in zip(pred, hits):
            counts = per_type.setdefault(p.label, [0, 0, 0])
            counts[0 if hit else 1] += 1
            if hit:
                counts[2] -= 1  # a matched gold span is not a false negative
            ranked.append((p.score, hit))
    tp = sum(c[0] for c in per_type.values())
    fp = sum(c[1] for c in per_type.values())
    fn = sum(c[2] for c in per_type.values())
    out = {
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": _f1(tp, fp, fn),
        "f1_macro": float(np.mean([_f1(*c) for c in per_type.values()])) if per_type else 0.0,
    }
    out.update(pr_curve_metrics(ranked, n_gold))
    for label, (ltp, lfp, lfn) in sorted(per_type.items()):
        out[f"f1/{slug(label)}"] = _f1(ltp, lfp, lfn)
    return out


def pr_curve_metrics(ranked: Sequence[tuple[float, bool]], n_gold: int) -> dict[str, float]:
    """AUPR (step-wise average precision) and precision at 80% / 90% recall from scored hits."""
    if n_gold == 0:
        return {"aupr": 0.0, "precision_at_80_recall": 0.0, "precision_at_90_recall": 0.0}
    order = sorted(ranked, key=lambda x: -x[0])
    tp = 0
    aupr = 0.0
    points: list[tuple[float, float]] = []
    for k, (_, hit) in enumerate(order, start=1):
        if hit:
            tp += 1
            aupr += (tp / k) / n_gold
        points.append((tp / n_gold, tp / k))

    def precision_at(target: float) -> float:
        reached = [prec for rec, prec in points if rec >= target]
        return max(reached) if reached else 0.0

    return {
        "aupr": aupr,
        "precision_at_80_recall": precision_at(0.8),
        "precision_at_90_recall": precision_at(0.9),
    }


def slug(label: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in label.lower()).strip("_")


def bio_decode(
    tokens: Sequence[tuple[int, int, int, float]], id2label: Sequence[str]
) -> list[Span]:
    """Token predictions (start, end, label id, probability), sorted by start, into character spans.

    A span opens on B-x, or on I-x that does not continue an open x span, and its confidence is the mean
    token probability.
    """
    spans: list[Span] = []
    cur_label: str | None = None
    cur_start = cur_end = 0
    probs: list[float] = []

    def close() -> None:
        if cur_label is not None:
            spans.append(Span(cur_start, cur_end, cur_label, float(np.mean(probs))))

    for start, end, lid, prob in tokens:
        tag = id2label[lid]
        if tag == "O":
            close()
            cur_label, probs = None, []
            continue
        prefix, _, label = tag.partition("-")
        if prefix == "I" and label == cur_label:
            cur_end = end
            probs.append(prob)
            continue
        close()
        cur_label, cur_start, cur_end, probs = label, start, end, [prob]
    close()
    return spans


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)
        for key in totals:
            totals[key] += scores[key].fmeasure
    n = max(1, len(predictions))
    return {key: value / n for key, value in totals.items()}
