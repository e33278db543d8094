"""The selection protocol: choose the default score on ID validation images against proxy OOD sets made
from FashionMNIST and noise alone. MNIST never enters it; it is reported afterwards, never used to pick.

Candidates: every run of consecutive t in CANDIDATE_TS, 1..max_draws noise draws, and MSE, LPIPS or
both, within `max_calls` network calls per image. The ID validation images split in two: the first
half is the z-score reference (as in the app), the second is the ID side of each AUROC.

The rule, fixed before any MNIST number was looked at: the highest mean AUROC over the proxy sets;
among candidates within `tolerance` of it, the one with the fewest network calls, then the higher
worst-proxy AUROC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd

from .diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS
from .evaluate import EvalConfig, evaluate
from .metrics import auroc
from .model import Checkpoint
from .scoring import Detector

PROXIES = ("fashionmnist-vflip", "fashionmnist-hflip", "fashionmnist-invert", "fashionmnist-shuffle",
           "gaussian-noise", "uniform")
CANDIDATE_TS = (500, 600, 700, 800, 900)
METRIC_SETS = (("mse",), ("lpips",), ("mse", "lpips"))


@dataclass
class SelectConfig:
    checkpoint: str | None = None
    proxies: tuple[str, ...] = PROXIES
    ts: tuple[int, ...] = CANDIDATE_TS
    max_draws: int = 4
    sampler: str = DEFAULT_SAMPLER
    steps: int = DEFAULT_STEPS
    max_calls: int = 50
    n_ref: int = 300  # ID validation images: z-score reference
    n_id: int = 300  # ID validation images: the ID side of each AUROC
    n_proxy: int = 300  # images per proxy set
    tolerance: float = 0.002
    seed: int = 0
    precision: str = "auto"
    data_dir: str | None = None
    cache_dir: str | None = None
    device: str | None = None

    def eval_config(self) -> EvalConfig:
        return EvalConfig(checkpoint=self.checkpoint, ood=tuple(self.proxies), ts=tuple(self.ts), multi_ts=None,
                          draws=self.max_draws, detector_ts=tuple(self.ts), sampler=self.sampler, steps=self.steps,
                          n=self.n_proxy, n_val=self.n_ref + self.n_id, seed=self.seed, id_test=False,
                          precision=self.precision, data_dir=self.data_dir, cache_dir=self.cache_dir, device=self.device)


def candidates(cfg: SelectConfig) -> list[Detector]:
    out = []
    for length in range(1, len(cfg.ts) + 1):
        for start in range(len(cfg.ts) - length + 1):
            for draws in range(1, cfg.max_draws + 1):
                for metrics in METRIC_SETS:
                    d = Detector(tuple(cfg.ts[start:start + length]), draws, metrics)
                    if d.calls(cfg.sampler, cfg.steps) <= cfg.max_calls:
                        out.append(d)
    return out


def score_candidates(cfg: SelectConfig, checkpoint: Checkpoint | None = None,
                     progress: Callable[[int, int, str], None] | None = None) -> pd.DataFrame:
    """One row per candidate: its settings, network calls per image, AUROC per proxy, mean and worst."""
    result = evaluate(cfg.eval_config(), checkpoint, progress)
    val = result.reference
    reference, id_side = val[val["index"] < cfg.n_ref], val[val["index"] >= cfg.n_ref]
    rows = []
    for det in candidates(cfg):
        if det.metrics != ("mse",) and val["lpips"].isna().all():
            continue
        id_scores = det.scores(id_side, reference)["score"]
        row = {"ts": " ".join(map(str, det.ts)), "draws": det.draws, "metrics": ",".join(det.metrics),
               "calls": det.calls(cfg.sampler, cfg.steps)}
        for proxy in cfg.proxies:
            ood = result.scores[(result.scores["role"] == "ood") & (result.scores["dataset"] == proxy)]
            row[proxy] = auroc(id_scores, det.scores(ood, reference)["score"])
        row["mean"] = sum(row[p] for p in cfg.proxies) / len(cfg.proxies)
        row["worst"] = min(row[p] for p in cfg.proxies)
        rows.append(row)
    return pd.DataFrame(rows).sort_values("mean", ascending=False, ignore_index=True)


def choose(table: pd.DataFrame, tolerance: float = 0.002) -> pd.Series:
    """The rule in the module docstring."""
    near = table[table["mean"] >= table["mean"].max() - tolerance]
    return near.sort_values(["calls", "worst"], ascending=[True, False]).iloc[0]


def detector_of(row: pd.Series) -> Detector:
    return Detector(tuple(int(t) for t in str(row["ts"]).split()), int(row["draws"]), tuple(row["metrics"].split(",")))
