"""The summary of an evaluation: AUROC, FPR95, AUPR-In and AUPR-Out (metrics.py) of ID test against each OOD set,
per reconstruction metric and t (draw 0), per t_f of the feature term (one call each), and per named score,
whose rows also hold the threshold accepting `tpr` of ID validation images and the shares it accepts.

Every AUROC carries its 95 % interval (DeLong's); a named score's FPR95, AUPR-In and AUPR-Out carry theirs too
(a stratified bootstrap of 1000 resamples, seeded): columns <rate>_lo and <rate>_hi."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS, network_calls
from .metrics import (
    aupr_in,
    aupr_out,
    auroc,
    auroc_interval,
    fpr_at_95_tpr,
    intervals,
    rates_at_threshold,
    threshold_at_tpr,
)
from .scores.base import zmean_frame
from .scoring import METRICS, draw_column

RATES = ("auroc", "fpr95", "aupr_in", "aupr_out")
BOUNDS = [f"{r}_{end}" for r in RATES for end in ("lo", "hi")]
SUMMARY_COLUMNS = ["ood", "metric", "t", *RATES, "n_id", "n_ood", "calls", "tpr", "threshold", "id_accepted",
                   "ood_accepted", *BOUNDS]


def rates(id_scores, ood_scores) -> list[float]:
    """AUROC, FPR95, AUPR-In, AUPR-Out: the summary's columns, in order."""
    return [auroc(id_scores, ood_scores), fpr_at_95_tpr(id_scores, ood_scores), aupr_in(id_scores, ood_scores),
            aupr_out(id_scores, ood_scores)]


def bounds(id_scores, ood_scores, every: bool) -> list[float]:
    """The BOUNDS columns: DeLong's AUROC interval, and with `every` the bootstrap's for the other rates."""
    if every:
        found = intervals(id_scores, ood_scores)
        return [v for r in RATES for v in found[r]]
    return [*auroc_interval(id_scores, ood_scores), *[np.nan] * 6]


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
                rows.append([ood, m, t, *rates(a, b), len(a), len(b), calls(t), *[np.nan] * 4, *bounds(a, b, False)])
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
                             threshold, *rates_at_threshold(a, b, threshold), *bounds(a, b, True)])
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


COMPARE_COLUMNS = ["ood", "a", "b", "auroc_a", "auroc_b", "difference", "lo", "hi", "verdict"]


def compare(tables: dict[str, pd.DataFrame], named: dict, a: str, b: str) -> pd.DataFrame:
    """The paired AUROC difference a - b of two named scores on the same images, per OOD set, with its paired
    DeLong interval; an interval holding 0 is reported as no difference."""
    from .metrics import paired_auroc_difference

    for name in (a, b):
        if name not in named:
            raise ValueError(f"no score named {name!r} in this evaluation; it has {', '.join(named)}")
    references = {name: t[t["role"] == "id_val"] for name, t in tables.items()}
    rows = []
    for ood in dict.fromkeys(d for t in tables.values() for d in t.loc[t["role"] == "ood", "dataset"]):
        these = {n: t[t["role"].eq("id") | (t["role"].eq("ood") & t["dataset"].eq(ood))] for n, t in tables.items()}
        sa, sb = (zmean_frame(named[n], these, references, ["role"]).set_index(["role", "index"])["score"]
                  for n in (a, b))
        sb = sb.reindex(sa.index)
        ida, oda, idb, odb = sa.loc["id"], sa.loc["ood"], sb.loc["id"], sb.loc["ood"]
        diff, lo, hi = paired_auroc_difference(ida, oda, idb, odb)
        verdict = "no difference" if lo <= 0 <= hi else f"{a} higher" if lo > 0 else f"{b} higher"
        rows.append([ood, a, b, auroc(ida, oda), auroc(idb, odb), diff, lo, hi, verdict])
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)


def describe_difference(row) -> str:
    """"default vs reconstruction: +0.008 [+0.004, +0.012]", or "... no difference" when the interval holds 0."""
    text = f"{row['a']} vs {row['b']}: {row['difference']:+.4f} [{row['lo']:+.4f}, {row['hi']:+.4f}]"
    return text + (" (no difference)" if row["verdict"] == "no difference" else "")


def over_seeds(summaries: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Each named score's rates over evaluation seeds (other images where a set is subsampled, other noise):
    per OOD set and score, the mean and standard deviation (n - 1) of AUROC and FPR95, and the AUROC at each seed."""
    rows = pd.concat([s[s["t"].isna()].assign(seed=seed) for seed, s in summaries.items()], ignore_index=True)
    stats = rows.groupby(["ood", "metric"], sort=False).agg(
        auroc_mean=("auroc", "mean"), auroc_sd=("auroc", "std"), fpr95_mean=("fpr95", "mean"),
        fpr95_sd=("fpr95", "std"), seeds=("seed", "count"))
    each = rows.pivot_table(index=["ood", "metric"], columns="seed", values="auroc", sort=False)
    each.columns = [f"auroc_seed{c}" for c in each.columns]
    return stats.join(each).reset_index()
