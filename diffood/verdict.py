"""Placing single images against the ID distribution: z-scores, percentile and an ID/OOD verdict.

The reference is the ID validation part of an evaluation table. The verdict threshold accepts 95 % of
ID validation images (95 % TPR), on the multi-t score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .diffusion import make_scheduler
from .evaluate import EvalResult
from .metrics import threshold_at_tpr
from .model import Checkpoint
from .scoring import MULTI_T, add_zscores, multi_t_scores, score_images

TARGET_TPR = 0.95


@dataclass
class Reference:
    stats: pd.DataFrame  # per t: mean/std of each metric on ID validation images
    val_multi_t: np.ndarray  # multi-t score of every ID validation image
    ts: tuple[int, ...]
    threshold: float  # multi-t score accepting TARGET_TPR of ID validation images

    @classmethod
    def from_result(cls, result: EvalResult) -> "Reference":
        val = result.scores[result.scores["role"] == "id_val"]
        stats = result.stats
        ts = result.multi_ts
        vm = multi_t_scores(val, stats, ts)[MULTI_T].to_numpy()
        return cls(stats, vm, ts, threshold_at_tpr(vm, TARGET_TPR))


@dataclass
class Verdict:
    per_t: pd.DataFrame  # t, metrics and their z-scores
    multi_t: float
    percentile: float  # share of ID validation images with a lower multi-t score, in %
    threshold: float
    is_ood: bool

    @property
    def label(self) -> str:
        return "likely OOD" if self.is_ood else "looks in-distribution"

    def describe(self) -> str:
        return (f"{self.label}: multi-t score {self.multi_t:+.2f} (ID validation percentile {self.percentile:.1f}); "
                f"threshold {self.threshold:+.2f} accepts {TARGET_TPR:.0%} of ID validation images")


def judge(x: torch.Tensor, checkpoint: Checkpoint, reference: Reference, sampler: str, steps: int,
          seed: int = 0, lpips=None) -> list[Verdict]:
    """Score images x (N, 1, 28, 28) in [-1, 1] at the reference's t and judge each one."""
    device = next(checkpoint.model.parameters()).device
    scheduler = make_scheduler(checkpoint.meta.num_train_timesteps)
    scores = score_images(checkpoint.model, x.to(device), reference.ts, scheduler, sampler, steps, seed, lpips)
    multi = multi_t_scores(scores, reference.stats, reference.ts)[MULTI_T].to_numpy()
    z = add_zscores(scores, reference.stats)
    out = []
    for i, m in enumerate(multi):
        pct = 100.0 * float(np.mean(reference.val_multi_t < m))
        out.append(Verdict(z[z["index"] == i].drop(columns="index").reset_index(drop=True), float(m), pct,
                           reference.threshold, bool(m > reference.threshold)))
    return out
