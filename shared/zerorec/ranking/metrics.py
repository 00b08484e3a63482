"""Binary-classification metrics for the ranker (numpy only, safe to import when serving)."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from zerorec.errors import InvalidInputError


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC with ties counted as half (Mann-Whitney U); NaN when only one class is present."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise InvalidInputError(f"labels {y.shape} and scores {s.shape} differ in length")
    pos = y > 0.5
    n_pos = int(pos.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities `probs` against 0/1 `labels`."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1.0 - eps)
    if y.shape != p.shape:
        raise InvalidInputError(f"labels {y.shape} and probs {p.shape} differ in length")
    if y.size == 0:
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))
