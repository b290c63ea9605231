"""Evaluation metrics (pure): classification, span matching, CUAD's PR metrics, BIO decoding, ROUGE."""

from __future__ import annotations

import numpy as np
import pytest

from legistra.trainer.metrics import (
    Span,
    bio_decode,
    classification_metrics,
    jaccard,
    majority_label,
    multilabel_metrics,
    pr_curve_metrics,
    rouge_scores,
    span_metrics,
)


def test_classification_perfect_and_wrong() -> None:
    assert classification_metrics([0, 1, 2], [0, 1, 2], 3) == {"accuracy": 1.0, "f1_macro": 1.0, "f1_micro": 1.0}
    assert classification_metrics([0, 0], [1, 1], 2) == {"accuracy": 0.0, "f1_macro": 0.0, "f1_micro": 0.0}


def test_classification_macro_vs_micro() -> None:
    # label 0: tp=2 fp=1 fn=0 -> f1 0.8; label 1: tp=0 fp=0 fn=1 -> 0.0
    m = classification_metrics([0, 0, 1], [0, 0, 0], 2)
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["f1_macro"] == pytest.approx(0.4)
    assert m["f1_micro"] == pytest.approx(2 / 3)


def test_classification_ignores_labels_absent_everywhere() -> None:
    m = classification_metrics([0, 1], [0, 1], 5)
    assert m["f1_macro"] == 1.0


def test_multilabel() -> None:
    t = np.array([[1, 0, 1], [0, 1, 0]])
    p = np.array([[1, 0, 0], [0, 1, 0]])
    m = multilabel_metrics(t, p)
    assert m["accuracy"] == 0.5  # exact-set match
    assert m["f1_micro"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))
    assert m["f1_macro"] == pytest.approx((1 + 1 + 0) / 3)


def test_majority_label() -> None:
    assert majority_label({"a": 2, "b": 1}) == "a"
    assert majority_label({"b": 2, "a": 2}) == "a"  # ties: the first in sort order
    assert majority_label({}) == ""


def test_jaccard() -> None:
    assert jaccard(Span(0, 10, "x"), Span(0, 10, "x")) == 1.0
    assert jaccard(Span(0, 10, "x"), Span(5, 15, "x")) == pytest.approx(5 / 15)
    assert jaccard(Span(0, 5, "x"), Span(5, 10, "x")) == 0.0


def test_span_metrics_match_needs_same_type_and_half_overlap() -> None:
    gold = [[Span(0, 100, "Governing Law"), Span(200, 260, "Cap On Liability")]]
    pred = [[Span(2, 98, "Governing Law", 0.9), Span(200, 260, "Renewal Term", 0.8), Span(400, 410, "Cap On Liability", 0.1)]]
    m = span_metrics(pred, gold)
    assert m["precision"] == pytest.approx(1 / 3)
    assert m["recall"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(2 * 1 / (2 * 1 + 2 + 1))
    assert m["f1/governing_law"] == 1.0
    assert m["f1/cap_on_liability"] == 0.0
    assert m["f1/renewal_term"] == 0.0


def test_span_metrics_one_prediction_matches_one_gold() -> None:
    gold = [[Span(0, 10, "a")]]
    pred = [[Span(0, 10, "a", 0.9), Span(1, 10, "a", 0.8)]]
    m = span_metrics(pred, gold)
    assert m["precision"] == 0.5 and m["recall"] == 1.0


def test_span_metrics_no_predictions() -> None:
    m = span_metrics([[]], [[Span(0, 10, "a")]])
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0 and m["aupr"] == 0.0


def test_span_metrics_requires_aligned_documents() -> None:
    with pytest.raises(ValueError):
        span_metrics([[]], [])


def test_pr_curve_perfect_ranking() -> None:
    m = pr_curve_metrics([(0.9, True), (0.8, True), (0.1, False)], n_gold=2)
    assert m == {"aupr": 1.0, "precision_at_80_recall": 1.0, "precision_at_90_recall": 1.0}


def test_pr_curve_worst_ranking_and_unreached_recall() -> None:
    m = pr_curve_metrics([(0.9, False), (0.8, True)], n_gold=4)
    assert m["aupr"] == pytest.approx((1 / 2) / 4)
    assert m["precision_at_80_recall"] == 0.0  # recall never reaches 0.8
    assert pr_curve_metrics([], n_gold=0)["aupr"] == 0.0


def test_pr_curve_precision_at_recall_takes_best_point_past_threshold() -> None:
    # 5 gold; ranked hits: T F T T T F T -> recall 0.8 first at k=5 (4/5 prec 0.8), 1.0 at k=7 (5/7)
    ranked = [(1 - i / 10, h) for i, h in enumerate([True, False, True, True, True, False, True])]
    m = pr_curve_metrics(ranked, n_gold=5)
    assert m["precision_at_80_recall"] == pytest.approx(0.8)
    assert m["precision_at_90_recall"] == pytest.approx(5 / 7)


LABELS = ["O", "B-gov", "I-gov", "B-cap", "I-cap"]


def test_bio_decode_spans_and_confidence() -> None:
    tokens = [(0, 4, 0, 0.9), (5, 9, 1, 0.8), (10, 14, 2, 0.6), (15, 19, 0, 0.9), (20, 24, 3, 0.5)]
    spans = bio_decode(tokens, LABELS)
    assert spans == [Span(5, 14, "gov", pytest.approx(0.7)), Span(20, 24, "cap", 0.5)]  # type: ignore[arg-type]


def test_bio_decode_orphan_inside_opens_a_span_and_type_switch_closes() -> None:
    tokens = [(0, 3, 2, 1.0), (4, 7, 4, 1.0), (8, 9, 4, 1.0)]
    assert [(s.start, s.end, s.label) for s in bio_decode(tokens, LABELS)] == [(0, 3, "gov"), (4, 9, "cap")]


def test_bio_decode_adjacent_b_tags_are_two_spans() -> None:
    tokens = [(0, 3, 1, 1.0), (4, 7, 1, 1.0)]
    assert len(bio_decode(tokens, LABELS)) == 2
    assert bio_decode([], LABELS) == []


def test_rouge() -> None:
    same = rouge_scores(["the secretary shall report"], ["the secretary shall report"])
    assert same == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    none = rouge_scores(["alpha beta"], ["gamma delta"])
    assert none["rouge1"] == 0.0
