"""Per-image measurements the score kinds are built on: reconstruction errors at each t and noise draw, and
feature embeddings and their distances to a bank.

Metrics per image, t and draw: `mse` (pixels in [0, 1]), `lpips`, and `mse+lpips` (their plain sum).
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch

from .diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS, noise_for, reconstruct
from .features import FeatureBank, FeatureSpec, embed
from .images import to_pixels
from .perceptual import PerceptualDistance

METRICS = ("mse", "lpips", "mse+lpips")


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
