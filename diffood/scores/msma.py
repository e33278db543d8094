"""MSMA (Mahmood, Lopez & Lamberton, ICLR 2021): the norms of the model's score at L noise levels, computed on
the image itself (not a noised copy), scaled by the noise level, as one L-dimensional vector per image,
scored by a Gaussian mixture fitted on ID training images.

On a DDPM the unperturbed image at level t is √ᾱ_t x0 (the mean of x_t) and the σ-scaled score is -ε_θ, so the
vector is ‖ε_θ(√ᾱ_t x0, t)‖ at each t."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..density import Mixture, fit_mixture
from ..diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS, alpha_bars, noise_prediction
from .base import Context, Fitted, ScoreSpec, batched, register

LEVELS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)  # log-spaced in t, as the paper's σ are geometric


@register
@dataclass(frozen=True)
class MSMA(Fitted, ScoreSpec):
    """-log density of the score norms at `ts` under a Gaussian mixture fitted on `train` ID training images."""

    kind = "msma"
    ts: tuple[int, ...] = LEVELS
    train: int = 5_000

    def __post_init__(self):
        if not self.ts or min(self.ts) < 1:
            raise ValueError("MSMA needs noise levels t >= 1")

    def calls(self, sampler: str = DEFAULT_SAMPLER, steps: int = DEFAULT_STEPS) -> int:
        return len(self.ts)

    def describe(self) -> str:
        return (f"MSMA: ‖ε_θ(√ᾱ_t x, t)‖ at {len(self.ts)} noise levels (t = {', '.join(map(str, self.ts))}), "
                f"Gaussian mixture of {self.train:,} ID training images")

    def statistics(self, ctx: Context, x: torch.Tensor) -> np.ndarray:
        ckpt = ctx.checkpoint
        abars = alpha_bars(ckpt.scheduler).to(x.device)

        def norms(xb, _):
            return torch.stack([noise_prediction(ckpt.model, abars[t].sqrt() * xb, t, ckpt.scheduler, ckpt.precision)
                                .double().flatten(1).norm(dim=1) for t in self.ts], 1).cpu().numpy()

        return batched(ctx, x, norms)

    def fit_statistics(self, stats: np.ndarray, seed: int = 0) -> dict[str, torch.Tensor]:
        return fit_mixture(stats, seed).tensors()

    def score_statistics(self, stats: np.ndarray, state: dict[str, torch.Tensor]) -> np.ndarray:
        return -Mixture.from_tensors(state).log_density(stats)[:, None]
