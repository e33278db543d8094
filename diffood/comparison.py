"""Methods side by side: each named score's AUROC, FPR95 and network calls per image on one OOD set, which of
them lie on the Pareto front of AUROC against calls, and the figures the methods' papers published."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Published:
    """A figure a paper reports, on its own model and protocol: marked as such wherever it is shown."""

    method: str
    paper: str
    id_set: str
    ood: str
    auroc: float
    model: str


PUBLISHED = (
    Published("DiffPath", "Heng, Thiery & Soh, NeurIPS 2024", "fashionmnist", "mnist", 0.991,
              "the paper's own diffusion model"),
    Published("DDPM-OOD (multi-t reconstruction)", "Graham et al., CVPR-W 2023", "fashionmnist", "mnist", 0.97,
              "the paper's own DDPM"),
    Published("LMD (lifting, matching, diffusion inpainting)", "Liu et al., ICML 2023", "fashionmnist", "mnist", 0.99,
              "the paper's own DDPM"),
)


def published(id_set: str, ood: str) -> list[Published]:
    return [p for p in PUBLISHED if p.id_set == id_set and p.ood == ood]


def method_table(summary: pd.DataFrame, ood: str) -> pd.DataFrame:
    """One row per named score on `ood` (score, calls, AUROC with its interval, FPR95), cheapest first, with
    `pareto`: no other score is at least as good for fewer or as many calls."""
    rows = summary[summary["t"].isna() & (summary["ood"] == ood)]
    out = rows[["metric", "calls", "auroc", "auroc_lo", "auroc_hi", "fpr95"]].rename(columns={"metric": "score"})
    out = out.sort_values(["calls", "auroc"], ascending=[True, False], ignore_index=True)
    best = -1.0
    front = []
    for auroc in out["auroc"]:
        front.append(auroc > best)
        best = max(best, auroc)
    return out.assign(pareto=front)
