"""The summary of an evaluation: AUROC, FPR95, AUPR-In and AUPR-Out (metrics.py) of ID test against each OOD set,
per reconstruction metric and t (draw 0), per t_f of the feature term (one call each), and per named score,
whose rows also hold the threshold accepting `tpr` of ID validation images and the shares it accepts."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS, network_calls
from .metrics import aupr_in, aupr_out, auroc, fpr_at_95_tpr, rates_at_threshold, threshold_at_tpr
from .scores.base import zmean_frame
from .scoring import METRICS, draw_column

SUMMARY_COLUMNS = ["ood", "metric", "t", "auroc", "fpr95", "aupr_in", "aupr_out", "n_id", "n_ood", "calls", "tpr",
                   "threshold", "id_accepted", "ood_accepted"]


def rates(id_scores, ood_scores) -> list[float]:
    """AUROC, FPR95, AUPR-In, AUPR-Out: the summary's columns, in order."""
    return [auroc(id_scores, ood_scores), fpr_at_95_tpr(id_scores, ood_scores), aupr_in(id_scores, ood_scores),
            aupr_out(id_scores, ood_scores)]


def summarize(tables: dict[str, pd.DataFrame], named: dict, sampler: str = DEFAULT_SAMPLER, steps: int = DEFAULT_STEPS,
              tpr: float = 0.95, feature_metric: str | None = None) -> pd.DataFrame:
    """The summary of score tables (by table name) for the `named` scores; `feature_metric` (knn<k>): also its
    curve over the t_f the features table holds."""
    per_t = []
    if "reconstruction" in tables:
        recon = tables["reconstruction"]
        first = recon[draw_column(recon) == 0]
        per_t += [(m, first[first[m].notna()], lambda t: network_calls(sampler, steps, t)) for m in METRICS]
    if feature_metric is not None and "features" in tables:
        f = tables["features"]
        first = f[draw_column(f) == 0]
        per_t.append((feature_metric, first[first[feature_metric].notna()], lambda t: 1))
    references = {name: t[t["role"] == "id_val"] for name, t in tables.items()}
    all_ood = list(dict.fromkeys(d for t in tables.values() for d in t.loc[t["role"] == "ood", "dataset"]))
    rows = []
    for ood in all_ood:
        for m, single, calls in per_t:
            id_rows = single[single["role"] == "id"]
            ood_rows = single[(single["role"] == "ood") & (single["dataset"] == ood)]
            for t in sorted(set(ood_rows["t"]) & set(id_rows["t"])):
                a, b = id_rows.loc[id_rows["t"] == t, m], ood_rows.loc[ood_rows["t"] == t, m]
                rows.append([ood, m, t, *rates(a, b), len(a), len(b), calls(t), *[np.nan] * 4])
        these = {name: t[t["role"].eq("id") | (t["role"].eq("ood") & t["dataset"].eq(ood))] for name, t in tables.items()}
        for name, spec in named.items():
            try:
                s = zmean_frame(spec, these, references, ["role"])
                val = zmean_frame(spec, references, references, [])["score"]
            except ValueError:  # the tables lack some (t, draw) this score needs
                continue
            a, b = s.loc[s["role"] == "id", "score"], s.loc[s["role"] == "ood", "score"]
            if len(a) and len(b):
                threshold = threshold_at_tpr(val, tpr)
                rows.append([ood, name, np.nan, *rates(a, b), len(a), len(b), spec.calls(sampler, steps), tpr,
                             threshold, *rates_at_threshold(a, b, threshold)])
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
