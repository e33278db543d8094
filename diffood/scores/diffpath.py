"""DiffPath (Heng, Thiery & Soh, NeurIPS 2024): walk the deterministic DDIM path from the image toward noise
in K steps and score how the model's noise predictions change along it. The 6-D variant takes the sums over
steps and pixels of ε, ε², ε³ and of the rate of change ∂ε/∂t (finite differences times K), its square and
cube, and scores them by a Gaussian mixture fitted on ID training images; the 1-D variant takes the path's
rate of change √Σ(∂ε/∂t)² alone, under a kernel density."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..density import Kernel, Mixture, fit_kernel, fit_mixture
from ..diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS, ddim_invert
from .base import Context, Fitted, ScoreSpec, batched, register

VARIANTS = ("6d", "1d")
STATISTICS = ("eps_sum", "eps_sum_sq", "eps_sum_cb", "deps_dt", "deps_dt_sq", "deps_dt_cb")


def path_levels(steps: int, T: int) -> list[int]:
    """The t the K calls are made at: 1, 1 + T/K, ..., as the reference's DDIM respacing (its timesteps
    0, T/K, ... are our t - 1); the clean image is taken as x at t = 1."""
    return [1 + k * T // steps for k in range(steps)]


def path_statistics(eps: torch.Tensor) -> np.ndarray:
    """(N, 6) statistics of the ε read along each image's path, eps (K, N, C, H, W)."""
    e = eps.double().flatten(2)  # K, N, D
    d = torch.diff(e, dim=0) * len(e)
    cols = [e.sum((0, 2)), e.pow(2).sum((0, 2)), e.pow(3).sum((0, 2)),
            d.sum((0, 2)), d.pow(2).sum((0, 2)), d.pow(3).sum((0, 2))]
    return torch.stack(cols, 1).cpu().numpy()


@register
@dataclass(frozen=True)
class DiffPath(Fitted, ScoreSpec):
    """-log density of the DDIM path's statistics under a density fitted on `train` ID training images."""

    kind = "diffpath"
    variants = ("diffpath", "diffpath(variant=1d)")
    variant: str = "6d"
    steps: int = 10
    train: int = 5_000

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown DiffPath variant {self.variant!r}; choose one of {list(VARIANTS)}")
        if self.steps < 2:
            raise ValueError("DiffPath needs at least 2 steps (a rate of change)")

    @property
    def name(self) -> str:
        return f"diffpath-{self.variant}"

    def calls(self, sampler: str = DEFAULT_SAMPLER, steps: int = DEFAULT_STEPS) -> int:
        return self.steps

    def describe(self) -> str:
        what = ("the six sums of ε, ε², ε³, ∂ε/∂t and its square and cube, Gaussian mixture" if self.variant == "6d"
                else "the rate of change √Σ(∂ε/∂t)², kernel density")
        return f"DiffPath {self.variant}: {self.steps}-step DDIM path to noise, {what} of {self.train:,} ID training images"

    def statistics(self, ctx: Context, x: torch.Tensor) -> np.ndarray:
        ckpt = ctx.checkpoint
        levels = path_levels(self.steps, ckpt.scheduler.config.num_train_timesteps)
        return batched(ctx, x, lambda xb, _: path_statistics(
            ddim_invert(ckpt.model, xb, levels, ckpt.scheduler, ckpt.precision, to_noise=True)[1]))

    def fit_statistics(self, stats: np.ndarray, seed: int = 0) -> dict[str, torch.Tensor]:
        if self.variant == "1d":
            return fit_kernel(np.sqrt(stats[:, 4])).tensors()
        return fit_mixture(stats, seed).tensors()

    def score_statistics(self, stats: np.ndarray, state: dict[str, torch.Tensor]) -> np.ndarray:
        if self.variant == "1d":
            return -Kernel.from_tensors(state).log_density(np.sqrt(stats[:, 4]))[:, None]
        return -Mixture.from_tensors(state).log_density(stats)[:, None]
