"""Per-image OOD scores: reconstruction errors at each t and noise draw, and the detectors built on them.

Metrics per image, t and draw: `mse` (pixels in [0, 1]), `lpips`, and `mse+lpips` (their plain sum).
A `Detector` turns those rows into one score per image: average each metric over the first `draws`
noise draws, z-score it against the same average on ID validation images, and take the mean of the
z-scores over its t and metrics (Graham et al., CVPR-W 2023, with draws = 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch

from .diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS, network_calls, noise_for, reconstruct
from .features import FeatureBank, FeatureSpec, embed
from .images import to_pixels
from .perceptual import PerceptualDistance

METRICS = ("mse", "lpips", "mse+lpips")


@dataclass(frozen=True)
class KnnTerm:
    """The feature part of a score: cosine distance to the k-th nearest of `bank` ID training embeddings
    (features.FeatureSpec: layer, t, pooling), averaged over `draws` noise draws (one call each)."""

    spec: FeatureSpec
    k: int = 1
    draws: int = 1
    bank: int = 58_000

    @property
    def metric(self) -> str:
        """Its column in a score table."""
        return f"knn{self.k}"

    def describe(self) -> str:
        which = "the nearest" if self.k == 1 else f"the {self.k}th nearest"
        return (f"cosine distance to {which} of {self.bank:,} ID training images in {self.spec.describe()}, "
                f"{self.draws} noise draw{'s' * (self.draws > 1)}")


@dataclass(frozen=True)
class Detector:
    """A score: the mean of z-scored terms. The reconstruction term is the z-mean over `ts` and `metrics` of
    each error averaged over the first `draws` noise draws (none when `ts` is empty); the feature term,
    `knn`, is the z-scored kNN distance in the UNet's own feature space."""

    ts: tuple[int, ...] = ()
    draws: int = 1
    metrics: tuple[str, ...] = ("mse",)
    knn: KnnTerm | None = None

    def calls(self, sampler: str = DEFAULT_SAMPLER, steps: int = DEFAULT_STEPS) -> int:
        """Network calls per image."""
        return self.draws * sum(network_calls(sampler, steps, t) for t in self.ts) + (self.knn.draws if self.knn else 0)

    def describe(self) -> str:
        parts = [f"{' + '.join(self.metrics)} over t = {', '.join(map(str, self.ts))}, each averaged over "
                 f"{self.draws} noise draw{'s' * (self.draws > 1)}"] if self.ts else []
        parts += [self.knn.describe()] if self.knn else []
        return ("z-mean of " if len(parts) > 1 or self.ts else "z-score of ") + "; and ".join(parts)

    def _terms(self) -> list[tuple[tuple[int, ...], int, tuple[str, ...]]]:
        terms = [(self.ts, self.draws, self.metrics)] if self.ts else []
        return terms + ([((self.knn.spec.t,), self.knn.draws, (self.knn.metric,))] if self.knn else [])

    def scores(self, scores: pd.DataFrame, reference: pd.DataFrame, keys: list[str] | None = None) -> pd.DataFrame:
        """One row per image (grouped by `keys` + index): its score, in column "score".

        `reference` holds the ID validation rows the z-scores are taken against. A metric that is
        NaN throughout (LPIPS unavailable) is left out of the mean.
        """
        keys = [k for k in (keys or []) if k in scores.columns] + ["index"]
        parts = []
        for ts, draws, metrics in self._terms():
            z = _zscores(scores, reference, keys, ts, draws, metrics)
            columns = [f"z_{m}" for m in metrics if z[m].notna().any()] or [f"z_{metrics[0]}"]
            parts.append(z.assign(part=z[columns].mean(axis=1)).groupby(keys, sort=False)["part"].mean())
        if not parts:
            raise ValueError("a detector needs a t or a feature term")
        score = pd.concat([parts[0], *(p.reindex(parts[0].index) for p in parts[1:])], axis=1).mean(axis=1, skipna=False)
        return score.rename("score").reset_index()

    def zscores(self, scores: pd.DataFrame, reference: pd.DataFrame, keys: list[str] | None = None) -> pd.DataFrame:
        """Per image (`keys` + index) and t of the reconstruction term: each metric averaged over the draws,
        and its z-score `z_<metric>` against the same average on the reference rows."""
        keys = [k for k in (keys or []) if k in scores.columns] + ["index"]
        return _zscores(scores, reference, keys, self.ts, self.draws, self.metrics)


def _zscores(scores, reference, keys, ts, draws, metrics) -> pd.DataFrame:
    avg = _averaged(scores, keys, ts, draws, metrics)
    ref = _averaged(reference, ["index"], ts, draws, metrics).groupby("t")
    for m in metrics:
        avg[f"z_{m}"] = (avg[m] - avg["t"].map(ref[m].mean())) / avg["t"].map(ref[m].std())
    return avg


def _averaged(scores: pd.DataFrame, keys: list[str], ts, draws, metrics) -> pd.DataFrame:
    rows = scores[scores["t"].isin(ts) & (draw_column(scores) < draws)]
    if not set(metrics) <= set(rows.columns):
        rows = rows.iloc[:0]
    present = rows[list(metrics)].notna().any(axis=1) if len(rows) else None
    if present is not None and present.any():  # a metric NaN throughout (LPIPS unavailable) stays, as NaN
        rows = rows[present]
    missing = {(t, d) for t in ts for d in range(draws)} - set(zip(rows["t"], draw_column(rows)))
    if missing:
        raise ValueError(f"the table lacks {'/'.join(metrics)} at (t, draw) {sorted(missing)[:5]}")
    return rows.groupby([*keys, "t"], sort=False)[list(metrics)].mean().reset_index()


def draw_column(scores: pd.DataFrame) -> pd.Series:
    """The noise draw of each row (tables from before draws existed hold draw 0 only)."""
    return scores["draw"] if "draw" in scores.columns else pd.Series(0, index=scores.index)


def reconstruction_errors(x0: torch.Tensor, recon: torch.Tensor, lpips: PerceptualDistance | None) -> dict[str, np.ndarray]:
    mse = (to_pixels(x0) - to_pixels(recon)).pow(2).flatten(1).mean(1).cpu().numpy()
    lp = lpips(x0, recon).cpu().numpy() if lpips is not None else np.full(len(mse), np.nan)
    return {"mse": mse, "lpips": lp, "mse+lpips": mse + lp}


def score_images(
    model: Callable,
    x0: torch.Tensor,
    ts: Iterable[int],
    scheduler,
    sampler: str = DEFAULT_SAMPLER,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    lpips: PerceptualDistance | None = None,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    draws: Iterable[int] = (0,),
    precision: str = "fp32",
    shared_noise: bool = False,
) -> pd.DataFrame:
    """One row per image x t x draw: index, t, draw, mse, lpips, mse+lpips. The draws of a t run as
    one batch of images x draws. Image i gets the noise of row i of its set, or with `shared_noise`
    that of row 0, so that an image scores the same alone or in any batch (uploads). `progress(k)`
    after each t, with the reconstructions made."""
    draws = list(draws)
    n = len(x0)
    frames = []
    for t in ts:
        rows = 1 if shared_noise else n
        noise = torch.cat([noise_for(rows, t, seed, x0.shape[1:], d).expand(n, -1, -1, -1) for d in draws])
        xs = x0.repeat(len(draws), 1, 1, 1)
        _, recon = reconstruct(model, xs, t, scheduler, sampler, steps, torch.Generator().manual_seed(seed + t),
                               batch_size, noise=noise, precision=precision)
        frames.append(pd.DataFrame({"index": np.tile(np.arange(n), len(draws)), "t": t,
                                    "draw": np.repeat(draws, n), **reconstruction_errors(xs, recon, lpips)}))
        if progress:
            progress(len(xs))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["index", "t", "draw", *METRICS])


def embed_draws(model: Callable, x0: torch.Tensor, spec: FeatureSpec, draws: Iterable[int], seed: int = 0,
                precision: str = "fp32", batch_size: int = 256, shared_noise: bool = False,
                progress: Callable[[int], None] | None = None, scheduler=None) -> torch.Tensor:
    """Embeddings (draws x N, C) of images x0 under `spec`, draw by draw, noise as in `score_images`, on the
    checkpoint's `scheduler` (default: the cosine schedule)."""
    draws, n = list(draws), len(x0)
    rows = 1 if shared_noise else n
    noise = torch.cat([noise_for(rows, spec.t, seed, x0.shape[1:], d).expand(n, -1, -1, -1) for d in draws])
    return embed(model, x0.repeat(len(draws), 1, 1, 1), spec.t, noise, (spec.layer,), (spec.pooling,), precision,
                 batch_size, progress, scheduler)[spec.layer, spec.pooling]


def feature_distances(model: Callable, x0: torch.Tensor, bank: FeatureBank, draws: Iterable[int] = (0,), seed: int = 0,
                      precision: str = "fp32", batch_size: int = 256, shared_noise: bool = False,
                      progress: Callable[[int], None] | None = None, scheduler=None) -> pd.DataFrame:
    """One row per image x draw at the bank's t: index, t, draw, and the k-th nearest distance `knn<k>` for
    each k in features.KS. One network call per image and draw."""
    draws = list(draws)
    e = embed_draws(model, x0, bank.spec, draws, seed, precision, batch_size, shared_noise, progress, scheduler)
    return distance_frame(bank, e, draws)


def distance_frame(bank: FeatureBank, embeddings: torch.Tensor, draws: list[int]) -> pd.DataFrame:
    """`feature_distances`' rows from embeddings laid out as `embed_draws` returns them."""
    n = len(embeddings) // len(draws)
    d = bank.distances(embeddings)
    return pd.DataFrame({"index": np.tile(np.arange(n), len(draws)), "t": bank.spec.t, "draw": np.repeat(draws, n),
                         **{f"knn{k}": v.numpy() for k, v in d.items()}})
