"""Detection metrics over scores where higher means more OOD (scikit-learn does the counting).

The positive class, as OpenOOD and pytorch-ood report them: OOD for AUROC and AUPR-Out, ID for AUPR-In
(with the score negated, low = ID). FPR95 follows Hendrycks & Gimpel: with the threshold that accepts
95 % of ID images as ID, the fraction of OOD images also accepted.
"""

from __future__ import annotations

from functools import lru_cache

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


# Intervals. AUROC: DeLong's (Sun & Xu 2014, midranks), exact for ties and fast. FPR95, AUPR-In, AUPR-Out: a
# stratified percentile bootstrap (ID and OOD resampled apart, seeded), computed on the distinct scores so that a
# resample is a vector of counts rather than a sort: the same statistics as above at every resample.
LEVEL = 0.95
RESAMPLES = 1000


def _midrank_parts(id_scores, ood_scores) -> tuple[float, np.ndarray, np.ndarray]:
    """AUROC (OOD positive) and DeLong's structural components per OOD (v10) and per ID (v01) image."""
    from scipy.stats import rankdata

    a, b = np.asarray(id_scores, float), np.asarray(ood_scores, float)
    n, m = len(a), len(b)
    both = rankdata(np.r_[b, a])
    v10 = (both[:m] - rankdata(b)) / n
    v01 = 1 - (both[m:] - rankdata(a)) / m
    return float(v10.mean()), v10, v01


def auroc_interval(id_scores, ood_scores, level: float = LEVEL) -> tuple[float, float]:
    """DeLong's interval for the AUROC, clipped to [0, 1]."""
    from scipy.stats import norm

    auc, v10, v01 = _midrank_parts(id_scores, ood_scores)
    se = np.sqrt(v10.var(ddof=1) / len(v10) + v01.var(ddof=1) / len(v01))
    z = norm.ppf(0.5 + level / 2)
    return max(0.0, auc - z * se), min(1.0, auc + z * se)


def paired_auroc_difference(id_a, ood_a, id_b, ood_b, level: float = LEVEL) -> tuple[float, float, float]:
    """AUROC(a) - AUROC(b) of two scores on the same images (row i of each is the same image), and its paired
    DeLong interval (DeLong et al. 1988): the covariance of the two AUROCs counted, so a score against itself
    gives [0, 0]."""
    from scipy.stats import norm

    auc_a, v10a, v01a = _midrank_parts(id_a, ood_a)
    auc_b, v10b, v01b = _midrank_parts(id_b, ood_b)
    d10, d01 = v10a - v10b, v01a - v01b
    se = np.sqrt(d10.var(ddof=1) / len(d10) + d01.var(ddof=1) / len(d01))
    z = norm.ppf(0.5 + level / 2)
    diff = auc_a - auc_b
    return diff, diff - z * se, diff + z * se


def paired_mean_auroc_difference(id_a, oods_a, id_b, oods_b, level: float = LEVEL) -> tuple[float, float, float]:
    """The mean over OOD sets of AUROC(a) - AUROC(b), two scores on the same images, and its paired DeLong
    interval: the sets share their ID images, so each ID image's components are averaged over the sets before
    their variance is taken; the OOD sets are independent. One set: paired_auroc_difference."""
    from scipy.stats import norm

    parts = [(_midrank_parts(id_a, oa), _midrank_parts(id_b, ob)) for oa, ob in zip(oods_a, oods_b, strict=True)]
    k = len(parts)
    diff = float(np.mean([pa[0] - pb[0] for pa, pb in parts]))
    per_id = np.mean([pa[2] - pb[2] for pa, pb in parts], axis=0)
    var = per_id.var(ddof=1) / len(per_id) + sum((pa[1] - pb[1]).var(ddof=1) / len(pa[1]) for pa, pb in parts) / k**2
    z = norm.ppf(0.5 + level / 2)
    return diff, diff - z * np.sqrt(var), diff + z * np.sqrt(var)


def bootstrap_rates(id_scores, ood_scores, resamples: int = RESAMPLES, seed: int = 0,
                    level: float = LEVEL) -> dict[str, tuple[float, float]]:
    """Percentile intervals of FPR95, AUPR-In and AUPR-Out (and AUROC) over a stratified bootstrap."""
    a, b = np.asarray(id_scores, float), np.asarray(ood_scores, float)
    values, group = np.unique(np.r_[a, b], return_inverse=True)
    rng = np.random.default_rng(seed)
    ga, gb = group[: len(a)], group[len(a):]
    neg, pos = (_counts(rng, g, len(values), resamples) for g in (ga, gb))  # (resamples, distinct scores) each
    stats = _rates_from_counts(neg, pos)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    return {k: tuple(float(x) for x in np.percentile(v, q)) for k, v in stats.items()}


def _counts(rng, group: np.ndarray, width: int, resamples: int) -> np.ndarray:
    """How often each distinct score is drawn in each resample of these images (drawn with replacement)."""
    drawn = group[rng.integers(0, len(group), (resamples, len(group)))] + width * np.arange(resamples)[:, None]
    return np.bincount(drawn.ravel(), minlength=resamples * width).reshape(resamples, width).astype(float)


def _rates_from_counts(neg: np.ndarray, pos: np.ndarray) -> dict[str, np.ndarray]:
    """The four rates from ID (`neg`) and OOD (`pos`) counts per distinct score, ascending; one row a resample."""
    n_neg, n_pos = neg.sum(1, keepdims=True), pos.sum(1, keepdims=True)
    cum_neg, cum_pos = neg.cumsum(1), pos.cumsum(1)
    auroc = (pos * (cum_neg - neg / 2)).sum(1) / (n_pos[:, 0] * n_neg[:, 0])
    k = (cum_neg >= 0.95 * n_neg - 1e-9).argmax(1)  # the lowest threshold accepting 95 % of ID images
    fpr95 = cum_pos[np.arange(len(k)), k] / n_pos[:, 0]
    above_pos, above_all = np.cumsum(pos[:, ::-1], 1)[:, ::-1], np.cumsum((pos + neg)[:, ::-1], 1)[:, ::-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        aupr_out = np.nansum(pos / n_pos * above_pos / above_all, 1)
        aupr_in = np.nansum(neg / n_neg * cum_neg / (cum_neg + cum_pos), 1)
    return {"auroc": auroc, "fpr95": fpr95, "aupr_in": aupr_in, "aupr_out": aupr_out}


def intervals(id_scores, ood_scores, resamples: int = RESAMPLES, seed: int = 0) -> dict[str, tuple[float, float]]:
    """The 95 % interval of each summary rate: DeLong's for AUROC, the bootstrap's for the others. Remembered for
    the same scores: a page redrawn as other t land summarises the unchanged ones again."""
    a, b = (np.ascontiguousarray(s, dtype=float) for s in (id_scores, ood_scores))
    return dict(_intervals(a.tobytes(), b.tobytes(), resamples, seed))


@lru_cache(maxsize=64)
def _intervals(a: bytes, b: bytes, resamples: int, seed: int) -> dict[str, tuple[float, float]]:
    id_scores, ood_scores = np.frombuffer(a), np.frombuffer(b)
    out = bootstrap_rates(id_scores, ood_scores, resamples, seed)
    out["auroc"] = auroc_interval(id_scores, ood_scores)
    return out
