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

from .data import to_pixels
from .diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS, network_calls, reconstruct
from .perceptual import PerceptualDistance

METRICS = ("mse", "lpips", "mse+lpips")


@dataclass(frozen=True)
class Detector:
    """A score: z-mean over `ts` and `metrics` of each error averaged over the first `draws` noise draws."""

    ts: tuple[int, ...]
    draws: int = 1
    metrics: tuple[str, ...] = ("mse",)

    def calls(self, sampler: str = DEFAULT_SAMPLER, steps: int = DEFAULT_STEPS) -> int:
        """Network calls per image."""
        return self.draws * sum(network_calls(sampler, steps, t) for t in self.ts)

    def describe(self) -> str:
        return (f"z-mean of {' + '.join(self.metrics)} over t = {', '.join(map(str, self.ts))}, "
                f"each averaged over {self.draws} noise draw{'s' * (self.draws > 1)}")

    def scores(self, scores: pd.DataFrame, reference: pd.DataFrame, keys: list[str] | None = None) -> pd.DataFrame:
        """One row per image (grouped by `keys` + index): its score, in column "score".

        `reference` holds the ID validation rows the z-scores are taken against. A metric that is
        NaN throughout (LPIPS unavailable) is left out of the mean.
        """
        z = self.zscores(scores, reference, keys)
        keys = [k for k in (keys or []) if k in scores.columns] + ["index"]
        parts = [f"z_{m}" for m in self.metrics if z[m].notna().any()] or [f"z_{self.metrics[0]}"]
        z["score"] = z[parts].mean(axis=1)
        return z.groupby(keys, sort=False)["score"].mean().reset_index()

    def zscores(self, scores: pd.DataFrame, reference: pd.DataFrame, keys: list[str] | None = None) -> pd.DataFrame:
        """Per image (`keys` + index) and t: each metric averaged over the draws, and its z-score
        `z_<metric>` against the same average on the reference rows."""
        keys = [k for k in (keys or []) if k in scores.columns] + ["index"]
        avg = self._averaged(scores, keys)
        ref = self._averaged(reference, ["index"]).groupby("t")
        for m in self.metrics:
            avg[f"z_{m}"] = (avg[m] - avg["t"].map(ref[m].mean())) / avg["t"].map(ref[m].std())
        return avg

    def _averaged(self, scores: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
        rows = scores[scores["t"].isin(self.ts) & (draw_column(scores) < self.draws)]
        missing = {(t, d) for t in self.ts for d in range(self.draws)} - set(zip(rows["t"], draw_column(rows)))
        if missing:
            raise ValueError(f"the table lacks (t, draw) {sorted(missing)[:5]} for {self.describe()}")
        return rows.groupby([*keys, "t"], sort=False)[list(self.metrics)].mean().reset_index()


def draw_column(scores: pd.DataFrame) -> pd.Series:
    """The noise draw of each row (tables from before draws existed hold draw 0 only)."""
    return scores["draw"] if "draw" in scores.columns else pd.Series(0, index=scores.index)


def noise_for(n: int, t: int, seed: int, image_size: int = 28, draw: int = 0) -> torch.Tensor:
    """The noise image i gets at t in draw `draw`: fixed by (seed, t, draw), the same for every set, so ID
    and OOD images are noised alike and adding a t or a draw never changes scores already computed."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + 1001 * draw + t)  # draw 0: the seed's noise
    return torch.randn((n, 1, image_size, image_size), generator=g)


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
        noise = torch.cat([noise_for(rows, t, seed, x0.shape[-1], d).expand(n, -1, -1, -1) for d in draws])
        xs = x0.repeat(len(draws), 1, 1, 1)
        _, recon = reconstruct(model, xs, t, scheduler, sampler, steps, torch.Generator().manual_seed(seed + t),
                               batch_size, noise=noise, precision=precision)
        frames.append(pd.DataFrame({"index": np.tile(np.arange(n), len(draws)), "t": t,
                                    "draw": np.repeat(draws, n), **reconstruction_errors(xs, recon, lpips)}))
        if progress:
            progress(len(xs))
    return pd.concat(frames, ignore_index=True)
