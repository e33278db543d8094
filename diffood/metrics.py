"""Detection metrics over scores where higher means more OOD (scikit-learn does the counting).

The positive class, as OpenOOD and pytorch-ood report them: OOD for AUROC and AUPR-Out, ID for AUPR-In
(with the score negated, low = ID). FPR95 follows Hendrycks & Gimpel: with the threshold that accepts
95 % of ID images as ID, the fraction of OOD images also accepted.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.metrics import roc_curve as _sk_roc_curve

POSITIVE_CLASS = ("Positive class: OOD for AUROC and AUPR-Out, ID for AUPR-In; FPR95 is the share of OOD images "
                  "accepted when 95 % of ID images are.")


def _labelled(id_scores, ood_scores) -> tuple[np.ndarray, np.ndarray]:
    id_scores, ood_scores = np.asarray(id_scores, float), np.asarray(ood_scores, float)
    if len(id_scores) == 0 or len(ood_scores) == 0:
        raise ValueError("need at least one ID and one OOD score")
    labels = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
    return labels, np.r_[id_scores, ood_scores]


def auroc(id_scores, ood_scores) -> float:
    return float(roc_auc_score(*_labelled(id_scores, ood_scores)))


def aupr_out(id_scores, ood_scores) -> float:
    """Area under the precision-recall curve with OOD positive (average precision)."""
    return float(average_precision_score(*_labelled(id_scores, ood_scores)))


def aupr_in(id_scores, ood_scores) -> float:
    """Area under the precision-recall curve with ID positive and low scores meaning ID."""
    labels, scores = _labelled(id_scores, ood_scores)
    return float(average_precision_score(1 - labels, -scores))


def roc_curve(id_scores, ood_scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) with OOD positive."""
    return _sk_roc_curve(*_labelled(id_scores, ood_scores))


def fpr_at_95_tpr(id_scores, ood_scores) -> float:
    labels, scores = _labelled(id_scores, ood_scores)
    fpr, tpr, _ = _sk_roc_curve(1 - labels, -scores, drop_intermediate=False)  # ID positive, low = ID
    return float(fpr[np.searchsorted(tpr, 0.95, side="left")])


def threshold_at_tpr(id_scores, tpr: float = 0.95) -> float:
    """The smallest score at or below which at least a fraction `tpr` of the ID images fall."""
    return float(np.quantile(np.asarray(id_scores, float), tpr, method="higher"))


def rates_at_threshold(id_scores, ood_scores, threshold: float) -> tuple[float, float]:
    """(fraction of ID accepted, fraction of OOD accepted) for `score <= threshold` = ID."""
    return float(np.mean(np.asarray(id_scores) <= threshold)), float(np.mean(np.asarray(ood_scores) <= threshold))
