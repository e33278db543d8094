"""Placing images against the ID distribution: the default score, its percentile and an ID/OOD verdict.

The reference is the ID validation part of an evaluation table. The verdict threshold accepts 95 % of
ID validation images (95 % TPR) on the score in use, by default the one `python -m diffood select` chose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch

from .data import load_user_image
from .diffusion import make_scheduler
from .errors import DiffoodError
from .evaluate import DEFAULT, EvalResult
from .metrics import threshold_at_tpr
from .model import Checkpoint
from .scoring import Detector, score_images

TARGET_TPR = 0.95


@dataclass
class Reference:
    name: str  # which score: "default" or "multi-t"
    detector: Detector
    val: pd.DataFrame  # the ID validation rows the z-scores are taken against
    val_scores: np.ndarray  # the score of every ID validation image
    threshold: float  # the score accepting TARGET_TPR of ID validation images

    @classmethod
    def from_result(cls, result: EvalResult, name: str = DEFAULT) -> "Reference":
        det = result.detectors[name]
        val = result.reference
        scores = det.scores(val, val)["score"].to_numpy()
        return cls(name, det, val, scores, threshold_at_tpr(scores, TARGET_TPR))

    @property
    def ts(self) -> tuple[int, ...]:
        return self.detector.ts

    def percentile(self, score: float) -> float:
        """Share of ID validation images scoring lower, in %."""
        return 100.0 * float(np.mean(self.val_scores < score))

    def per_t(self, scores: pd.DataFrame) -> pd.DataFrame:
        """Per image and t: MSE and LPIPS averaged over the draws, and their z-scores against ID validation."""
        return Detector(self.ts, self.detector.draws, ("mse", "lpips")).zscores(scores, self.val)


@dataclass
class Verdict:
    score: float
    percentile: float  # share of ID validation images with a lower score, in %
    threshold: float
    is_ood: bool
    per_t: pd.DataFrame  # t, metrics averaged over draws, and their z-scores

    @property
    def label(self) -> str:
        return "likely OOD" if self.is_ood else "looks in-distribution"

    def describe(self) -> str:
        return (f"{self.label}: score {self.score:+.2f} (ID validation percentile {self.percentile:.1f}); "
                f"threshold {self.threshold:+.2f} accepts {TARGET_TPR:.0%} of ID validation images")


def judge(x: torch.Tensor, checkpoint: Checkpoint, reference: Reference, sampler: str, steps: int,
          seed: int = 0, lpips=None, batch_size: int = 256, progress: Callable[[int], None] | None = None) -> list[Verdict]:
    """Score images x (N, 1, 28, 28) in [-1, 1] (all draws of a t in one batch) and judge each one. Every
    image is noised alike, so its verdict does not depend on the others in the batch."""
    device = next(checkpoint.model.parameters()).device
    scheduler = make_scheduler(checkpoint.meta.num_train_timesteps)
    det = reference.detector
    scores = score_images(checkpoint.model, x.to(device), det.ts, scheduler, sampler, steps, seed, lpips, batch_size,
                          progress, range(det.draws), checkpoint.precision, shared_noise=True)
    values = det.scores(scores, reference.val).set_index("index")["score"]
    per_t = reference.per_t(scores)
    return [Verdict(float(values[i]), reference.percentile(values[i]), reference.threshold,
                    bool(values[i] > reference.threshold), per_t[per_t["index"] == i].drop(columns="index").reset_index(drop=True))
            for i in range(len(x))]


RESULT_COLUMNS = ["file", "score", "percentile", "verdict", "error"]


def judge_entries(entries, checkpoint: Checkpoint, reference: Reference, sampler: str, steps: int, seed: int = 0,
                  lpips=None, invert: bool | None = None, chunk: int = 64,
                  progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Many named images (inputs.Entry) -> one row each (RESULT_COLUMNS). Entries that are not images get
    their reason in `error`; the others are scored `chunk` at a time. `progress(done, total)` per chunk."""
    rows, good = [], []
    for e in entries:
        error = e.error
        if error is None:
            try:
                good.append((len(rows), load_user_image(e.data, invert=invert)))
            except DiffoodError as err:
                error = str(err)
        rows.append({"file": e.name, "score": np.nan, "percentile": np.nan, "verdict": "error", "error": error or ""})
    for start in range(0, len(good), chunk):
        part = good[start:start + chunk]
        verdicts = judge(torch.cat([x for _, x in part]), checkpoint, reference, sampler, steps, seed, lpips)
        for (i, _), v in zip(part, verdicts):
            rows[i].update(score=v.score, percentile=v.percentile, verdict=v.label)
        if progress:
            progress(start + len(part), len(good))
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)
