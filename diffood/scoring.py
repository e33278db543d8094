"""Per-image OOD scores: reconstruction error at each t, z-scored against ID validation statistics.

Metrics per image and t: `mse` (pixels in [0, 1]), `lpips`, and `mse+lpips` (their plain sum, as the
seed did). `multi-t` is the mean over t of the z-scored `mse` and `lpips` (Graham et al., CVPR-W 2023).
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch

from .data import to_pixels
from .diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS, reconstruct
from .perceptual import PerceptualDistance

METRICS = ("mse", "lpips", "mse+lpips")
MULTI_T = "multi-t"
MULTI_T_PARTS = ("mse", "lpips")


def noise_for(n: int, t: int, seed: int, image_size: int = 28) -> torch.Tensor:
    """The noise image i gets at t: fixed by (seed, t), the same for every set, so ID and OOD images
    are noised alike and adding a t later never changes scores already computed."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + t)
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
    batch_size: int = 500,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """One row per image x t: index, t, mse, lpips, mse+lpips. `progress(k)` after each t."""
    frames = []
    for t in ts:
        noise = noise_for(len(x0), t, seed, x0.shape[-1])
        _, recon = reconstruct(model, x0, t, scheduler, sampler, steps, torch.Generator().manual_seed(seed + t),
                               batch_size, noise=noise)
        frames.append(pd.DataFrame({"index": np.arange(len(x0)), "t": t, **reconstruction_errors(x0, recon, lpips)}))
        if progress:
            progress(len(x0))
    return pd.concat(frames, ignore_index=True)


def id_statistics(val_scores: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of each metric per t over the ID validation images: the z-score reference."""
    return val_scores.groupby("t")[list(METRICS)].agg(["mean", "std"])


def add_zscores(scores: pd.DataFrame, stats: pd.DataFrame) -> pd.DataFrame:
    """Adds `z_<metric>` columns: (score - ID mean at t) / ID std at t."""
    out = scores.copy()
    for m in METRICS:
        mean = out["t"].map(stats[(m, "mean")])
        std = out["t"].map(stats[(m, "std")])
        out[f"z_{m}"] = (out[m] - mean) / std
    return out


def combined_ts(multi_ts: Iterable[int] | None, available: Iterable[int]) -> tuple[int, ...]:
    """The t that multi-t combines: the chosen ones that were scored, or every scored t when none
    of them was (or none was chosen)."""
    available = sorted({int(t) for t in available})
    chosen = [t for t in available if multi_ts is None or t in set(multi_ts)]
    return tuple(chosen or available)


def multi_t_scores(scores: pd.DataFrame, stats: pd.DataFrame, ts: Iterable[int] | None = None,
                   keys: list[str] | None = None) -> pd.DataFrame:
    """Per image (grouped by `keys` + index): the mean over t of z_mse and z_lpips.

    Where LPIPS is unavailable (NaN) the mean is over z_mse alone.
    """
    keys = [k for k in (keys or []) if k in scores.columns] + ["index"]
    z = add_zscores(scores if ts is None else scores[scores["t"].isin(list(ts))], stats)
    parts = z[[f"z_{m}" for m in MULTI_T_PARTS]]
    z[MULTI_T] = parts.mean(axis=1, skipna=True)
    return z.groupby(keys, sort=False)[MULTI_T].mean().reset_index()
