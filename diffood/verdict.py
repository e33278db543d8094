"""Placing images against the ID distribution: the default score, its percentile and an ID/OOD verdict.

The reference is the ID validation part of an evaluation table, with the sampler, steps and seed it was
computed with: an image is always scored with those, so its z-scores are never taken against statistics
made otherwise. The verdict threshold accepts a share `tpr` of ID validation images (default 95 %) on the
score in use, by default the one `python -m diffood select` chose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch

from . import distributed
from .diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS
from .errors import DiffoodError
from .evaluate import EvalConfig, EvalResult, evaluate
from .features import FeatureBank
from .metrics import threshold_at_tpr
from .model import Checkpoint
from .scores import DEFAULT, Context, Features, Reconstruction, ScoreSpec, Stats, fit_stats, table_name
from .scores.base import zmean_frame
from .sets import load_user_image

TARGET_TPR = 0.95


@dataclass
class Reference:
    """A score placed against ID validation images: the z-score statistics of its components, every validation
    image's score and the threshold that accepts a share `tpr` of them, with the sampler, steps and seed they
    were computed with (an image is always scored alike)."""

    name: str  # "default", "reconstruction", ... or the kind's name
    spec: ScoreSpec
    stats: Stats
    val_scores: np.ndarray  # the score of every ID validation image
    threshold: float
    val: pd.DataFrame  # the ID validation rows of the shared tables (per-t evidence, nearest distances)
    bank: FeatureBank | None = None  # ID training images in the embeddings a term of the score reads, if any
    sampler: str = DEFAULT_SAMPLER
    steps: int = DEFAULT_STEPS
    seed: int = 0
    tpr: float = TARGET_TPR
    states: dict = field(default_factory=dict, repr=False)  # term -> what its fit gave, filled when first needed

    @classmethod
    def from_result(cls, result: EvalResult, name: str | ScoreSpec = DEFAULT, tpr: float = TARGET_TPR) -> "Reference":
        """From an evaluation's ID validation rows: `name` is one of its named scores, or a spec it holds."""
        if not 0 < tpr < 1:
            raise DiffoodError(f"the target ID acceptance (TPR) must lie between 0 and 1, got {tpr}")
        spec = result.named[name] if isinstance(name, str) else name
        refs = result.references()
        stats = fit_stats([t.columns(refs[table_name(t)], ["index"]) for t in spec.terms()])
        scores = zmean_frame(spec, refs, refs, [])["score"].to_numpy()
        cfg = result.config
        feats = next((t for t in spec.terms() if isinstance(t, Features)), None)
        label = name if isinstance(name, str) else spec.name
        bank = result.bank if result.bank is not None and any(
            getattr(t, "spec", None) == result.bank.spec for t in spec.terms()) else None  # the embeddings it reads
        ref = cls(label, spec, stats, scores, threshold_at_tpr(scores, tpr), result.reference,
                  bank, cfg.sampler, cfg.steps, cfg.seed, tpr)
        if feats:
            ref.states[feats] = result.bank
        return ref

    @classmethod
    def fit(cls, checkpoint: Checkpoint, score: ScoreSpec | str | None = None, tpr: float = TARGET_TPR,
            sampler: str = DEFAULT_SAMPLER, steps: int = DEFAULT_STEPS, seed: int = 0, n_val: int = 500,
            data_dir: str | None = None, cache_dir: str | None = None,
            progress: Callable[[int, int, str], None] | None = None) -> "Reference":
        """The score (default: the checkpoint's pick) on `n_val` ID validation images, and nothing else: its
        rows are read from the shipped or cached tables where they exist, else computed and kept."""
        cfg = EvalConfig(checkpoint=str(checkpoint.path), ood=(), ts=(), multi_ts=None, score=score, sampler=sampler,
                         steps=steps, seed=seed, n_val=n_val, data_dir=data_dir, cache_dir=cache_dir)
        return cls.from_result(evaluate(cfg, checkpoint, progress, default_only=True), DEFAULT, tpr)

    def describe_threshold(self) -> str:
        return f"threshold {self.threshold:+.3f} accepts {self.tpr:.1%} of {len(self.val_scores)} ID validation images"

    @property
    def features(self) -> Features | None:
        return next((t for t in self.spec.terms() if isinstance(t, Features)), None)

    @property
    def ts(self) -> tuple[int, ...]:
        """The t of its reconstruction term (none without one)."""
        recon = self.reconstruction
        return recon.ts if recon else ()

    @property
    def reconstruction(self) -> Reconstruction | None:
        return next((t for t in self.spec.terms() if isinstance(t, Reconstruction)), None)

    def state(self, term: ScoreSpec, ctx: Context):
        """What the term's fit gives (its bank, its density), fitted once."""
        if term not in self.states:
            self.states[term] = term.fit(ctx)
        return self.states[term]

    def percentile(self, score: float) -> float:
        """Share of ID validation images scoring lower, in %."""
        return 100.0 * float(np.mean(self.val_scores < score))

    def per_t(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Per image and t of the reconstruction term: MSE and LPIPS averaged over the draws (`frame`: its
        component_frame), and their z-scores against ID validation."""
        recon = self.reconstruction
        columns = ["index", "t", "mse", "lpips", "z_mse", "z_lpips"]
        if recon is None or not len(frame):
            return pd.DataFrame(columns=columns)
        val = Reconstruction(recon.ts, recon.draws, ("mse", "lpips")).columns(self.val, ["index"])
        rows = []
        for t in recon.ts:
            part = {"index": frame["index"].to_numpy(), "t": t}
            for m in ("mse", "lpips"):
                v, ref = frame[f"{m}@{t}"].to_numpy(float), val[f"{m}@{t}"]
                part |= {m: v, f"z_{m}": (v - ref.mean()) / ref.std()}
            rows.append(pd.DataFrame(part))
        return pd.concat(rows, ignore_index=True)[columns]


@dataclass
class Verdict:
    score: float
    percentile: float  # share of ID validation images with a lower score, in %
    threshold: float
    is_ood: bool
    per_t: pd.DataFrame  # t, metrics averaged over draws, and their z-scores
    tpr: float = TARGET_TPR  # the share of ID validation images the threshold accepts
    nearest_distance: float = float("nan")  # to the nearest ID training image in feature space (draws averaged)
    neighbours: pd.DataFrame | None = None  # bank index and distance of the nearest, first draw; None without features

    @property
    def label(self) -> str:
        return "likely OOD" if self.is_ood else "looks in-distribution"

    def describe(self) -> str:
        return (f"{self.label}: score {self.score:+.2f} (ID validation percentile {self.percentile:.1f}); "
                f"threshold {self.threshold:+.3f} accepts {self.tpr:.1%} of ID validation images")


def context(checkpoint: Checkpoint, reference: Reference, lpips=None, batch_size: int = 256,
            progress: Callable[[int], None] | None = None) -> Context:
    """How images are scored against a reference: its sampler, steps and seed, and every image noised alike
    (row 0's noise), so that an image's score does not depend on the others in its batch."""
    return Context(checkpoint, reference.sampler, reference.steps, reference.seed, lpips, batch_size,
                   shared_noise=True, progress=progress)


def score_tensor(x: torch.Tensor, checkpoint: Checkpoint, reference: Reference, lpips=None, batch_size: int = 256,
                 progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, list[pd.DataFrame]]:
    """The scores of images x (N, C, S, S) in [-1, 1], and each term's component frame (the evidence)."""
    ctx = context(checkpoint, reference, lpips, batch_size, progress)
    x = x.to(ctx.device)
    frames = [t.component_frame(ctx, x, reference.state(t, ctx)) for t in reference.spec.terms()]
    parts = [f[names].to_numpy(dtype=float) for f, names in zip(frames, reference.stats.names)]
    return reference.stats.score(parts), frames


def judge(x: torch.Tensor, checkpoint: Checkpoint, reference: Reference, lpips=None, batch_size: int = 256,
          progress: Callable[[int], None] | None = None, neighbours: int = 0) -> list[Verdict]:
    """Score images x (N, C, S, S) in [-1, 1] with the reference's sampler, steps and seed, and judge each one.
    With a term that reads the bank's embeddings, each verdict also names its `neighbours` nearest ID training
    images."""
    values, frames = score_tensor(x, checkpoint, reference, lpips, batch_size, progress)
    terms = reference.spec.terms()
    recon = next((f for t, f in zip(terms, frames) if isinstance(t, Reconstruction)), pd.DataFrame())
    per_t = reference.per_t(recon)
    feats = next(((t, f) for t, f in zip(terms, frames) if isinstance(t, Features)), None)
    out = []
    for i, v in enumerate(values):
        verdict = Verdict(float(v), reference.percentile(v), reference.threshold, bool(v > reference.threshold),
                          per_t[per_t["index"] == i].drop(columns="index").reset_index(drop=True), reference.tpr)
        if feats:
            verdict.nearest_distance = float(feats[1]["nearest"].iloc[i])
        out.append(verdict)
    bank = reference.bank
    if bank is not None and neighbours:
        ctx = context(checkpoint, reference, lpips, batch_size)
        spec = bank.spec
        first = Features(spec.layer, spec.t, spec.pooling, bank=bank.n).embeddings(ctx, x.to(ctx.device))  # draw 0
        for verdict, e in zip(out, first):
            index, distance = bank.nearest(e, neighbours)
            verdict.neighbours = pd.DataFrame({"bank_index": index.numpy(), "distance": distance.numpy()})
    return out


def every_score(x: torch.Tensor, checkpoint: Checkpoint, result: EvalResult, tpr: float = TARGET_TPR,
                lpips=None) -> pd.DataFrame:
    """One image x (1, C, S, S) judged by every named score of `result` (its ID validation rows the references):
    score, ID percentile, verdict and network calls, one row per score."""
    rows = []
    for name, spec in result.named.items():
        v = judge(x, checkpoint, Reference.from_result(result, name, tpr), lpips)[0]
        rows.append({"score": name, "value": v.score, "percentile": v.percentile, "threshold": v.threshold,
                     "verdict": v.label, "calls": spec.calls(result.config.sampler, result.config.steps)})
    return pd.DataFrame(rows)


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
