"""Placing images against the ID distribution: the default score, its percentile and an ID/OOD verdict.

The reference is the ID validation part of an evaluation table, with the sampler, steps and seed it was
computed with: an image is always scored with those, so its z-scores are never taken against statistics
made otherwise. The verdict threshold accepts a share `tpr` of ID validation images (default 95 %) on the
score in use, by default the one `python -m diffood select` chose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch

from . import distributed
from .diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS
from .errors import DiffoodError
from .evaluate import DEFAULT, EvalResult
from .features import FeatureBank
from .metrics import threshold_at_tpr
from .model import Checkpoint
from .scoring import Detector, distance_frame, embed_draws, score_images
from .sets import load_user_image

TARGET_TPR = 0.95


@dataclass
class Reference:
    name: str  # which score: "default" or "multi-t"
    detector: Detector
    val: pd.DataFrame  # the ID validation rows the z-scores are taken against
    val_scores: np.ndarray  # the score of every ID validation image
    threshold: float  # the score accepting a share `tpr` of ID validation images
    bank: FeatureBank | None = None  # the feature term's bank, when the score has one
    sampler: str = DEFAULT_SAMPLER  # what the validation rows were computed with: images are scored alike
    steps: int = DEFAULT_STEPS
    seed: int = 0
    tpr: float = TARGET_TPR

    @classmethod
    def from_result(cls, result: EvalResult, name: str = DEFAULT, tpr: float = TARGET_TPR) -> "Reference":
        if not 0 < tpr < 1:
            raise DiffoodError(f"the target ID acceptance (TPR) must lie between 0 and 1, got {tpr}")
        det = result.detectors[name]
        val = result.reference
        scores = det.scores(val, val)["score"].to_numpy()
        cfg = result.config
        return cls(name, det, val, scores, threshold_at_tpr(scores, tpr), result.bank if det.knn else None,
                   cfg.sampler, cfg.steps, cfg.seed, tpr)

    def describe_threshold(self) -> str:
        return f"threshold {self.threshold:+.3f} accepts {self.tpr:.1%} of {len(self.val_scores)} ID validation images"

    @property
    def ts(self) -> tuple[int, ...]:
        return self.detector.ts

    def percentile(self, score: float) -> float:
        """Share of ID validation images scoring lower, in %."""
        return 100.0 * float(np.mean(self.val_scores < score))

    def per_t(self, scores: pd.DataFrame) -> pd.DataFrame:
        """Per image and t: MSE and LPIPS averaged over the draws, and their z-scores against ID validation."""
        if not self.ts:
            return pd.DataFrame(columns=["index", "t", "mse", "lpips", "z_mse", "z_lpips"])
        return Detector(self.ts, self.detector.draws, ("mse", "lpips")).zscores(scores, self.val)


@dataclass
class Verdict:
    score: float
    percentile: float  # share of ID validation images with a lower score, in %
    threshold: float
    is_ood: bool
    per_t: pd.DataFrame  # t, metrics averaged over draws, and their z-scores
    tpr: float = TARGET_TPR  # the share of ID validation images the threshold accepts
    nearest_distance: float = float("nan")  # to the nearest ID training image in feature space (draws averaged)
    neighbours: pd.DataFrame | None = None  # bank index and distance of the 5 nearest, first draw; None without features

    @property
    def label(self) -> str:
        return "likely OOD" if self.is_ood else "looks in-distribution"

    def describe(self) -> str:
        return (f"{self.label}: score {self.score:+.2f} (ID validation percentile {self.percentile:.1f}); "
                f"threshold {self.threshold:+.3f} accepts {self.tpr:.1%} of ID validation images")


def judge(x: torch.Tensor, checkpoint: Checkpoint, reference: Reference, lpips=None, batch_size: int = 256,
          progress: Callable[[int], None] | None = None, neighbours: int = 0) -> list[Verdict]:
    """Score images x (N, C, S, S) in [-1, 1] (all draws of a t in one batch) with the reference's sampler,
    steps and seed, and judge each one. Every image is noised alike, so its verdict does not depend on
    the others in the batch. With a feature term, each verdict also names its `neighbours` nearest ID
    training images."""
    sampler, steps, seed = reference.sampler, reference.steps, reference.seed
    device = next(checkpoint.model.parameters()).device
    x = x.to(device)
    det, bank = reference.detector, reference.bank
    if det.knn:
        bank.check(det.knn)
    scores = score_images(checkpoint.model, x, det.ts, checkpoint.scheduler, sampler,
                          steps, seed, lpips, batch_size, progress, range(det.draws), checkpoint.precision,
                          shared_noise=True)
    if det.knn:
        draws = list(range(det.knn.draws))
        embeddings = embed_draws(checkpoint.model, x, bank.spec, draws, seed, checkpoint.precision, batch_size,
                                 shared_noise=True, scheduler=checkpoint.scheduler)
        knn = distance_frame(bank, embeddings, draws)
        scores = knn if not det.ts else scores.merge(knn, on=["index", "t", "draw"], how="outer")
        nearest = knn.groupby("index")["knn1"].mean()
    values = det.scores(scores, reference.val).set_index("index")["score"]
    per_t = reference.per_t(scores)
    out = []
    for i in range(len(x)):
        v = Verdict(float(values[i]), reference.percentile(values[i]), reference.threshold,
                    bool(values[i] > reference.threshold), per_t[per_t["index"] == i].drop(columns="index").reset_index(drop=True),
                    reference.tpr)
        if det.knn:
            v.nearest_distance = float(nearest[i])
        out.append(v)
    if det.knn and neighbours:
        for v, e in zip(out, embeddings[:len(x)]):  # draw 0
            index, distance = bank.nearest(e, neighbours)
            v.neighbours = pd.DataFrame({"bank_index": index.numpy(), "distance": distance.numpy()})
    return out


RESULT_COLUMNS = ["file", "score", "percentile", "verdict", "nearest_id_distance", "threshold", "tpr", "error"]


def judge_entries(entries, checkpoint: Checkpoint, reference: Reference, lpips=None, invert: bool | None = None,
                  chunk: int = 64,
                  progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Many named images (inputs.Entry) -> one row each (RESULT_COLUMNS). Entries that are not images get
    their reason in `error`; the others are scored `chunk` at a time (`chunk` per rank under torchrun,
    whose ranks share each chunk's batches). `progress(done, total)` per chunk."""
    chunk *= distributed.world()
    rows, good = [], []
    for e in entries:
        error = e.error
        if error is None:
            try:
                good.append((len(rows), load_user_image(e.data, invert=invert, id=checkpoint.data)))
            except DiffoodError as err:
                error = str(err)
        rows.append({"file": e.name, "score": np.nan, "percentile": np.nan, "verdict": "error",
                     "nearest_id_distance": np.nan, "threshold": reference.threshold, "tpr": reference.tpr,
                     "error": error or ""})
    for start in range(0, len(good), chunk):
        part = good[start:start + chunk]
        verdicts = judge(torch.cat([x for _, x in part]), checkpoint, reference, lpips)
        for (i, _), v in zip(part, verdicts):
            rows[i].update(score=v.score, percentile=v.percentile, verdict=v.label, nearest_id_distance=v.nearest_distance)
        if progress:
            progress(start + len(part), len(good))
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)
