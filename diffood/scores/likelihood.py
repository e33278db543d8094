"""The model's own likelihood: the DDPM variational bound (Ho et al., NeurIPS 2020, eq. 5) in bits per
dimension, higher = less likely = more OOD. Generative likelihoods are known to rate simpler images as more
likely whatever the training set (Nalisnick et al., ICLR 2019): on the FashionMNIST model MNIST scores as
*more* likely than FashionMNIST, which this score shows rather than hides.

The bound is L_T (prior, closed form) + Σ_{t=2..T} L_{t-1} + L_0 (decoder). The sum over t is estimated by
stratified sampling: `strata` strata of t, geometric in t (the terms are largest at small t), one t per
stratum (its geometric middle) weighted by the stratum's width. L_{t-1} is the KL between the true posterior
and the model's step, whose variance is β̃_t (`variance="small"`, as the sampler uses it; tight for images,
whose x0 is fixed by x_t at small t) or β_t ("large": tight for continuous data such as a Gaussian); the decoder is a Gaussian of variance β_1 around the model's x0, read
discretely over 8-bit bins (`discrete`) or as a density. Calls: one per stratum, plus one for the decoder."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS, add_noise, alpha_bars, noise_for, noise_prediction, one_step
from .base import Context, ScoreSpec, batched, register

VARIANCES = ("small", "large")  # the model's reverse step variance: β̃_t (diffusers' fixed_small) or β_t


def strata(T: int, count: int) -> tuple[list[int], list[int]]:
    """(one t per stratum, its width) for `count` strata of t = 2..T, geometric in t; fewer when the smallest
    strata would be empty."""
    edges = np.unique(np.round(np.geomspace(2, T + 1, count + 1)).astype(int))
    ts = [int(round(math.sqrt(a * (b - 1)))) for a, b in zip(edges[:-1], edges[1:])]
    return ts, np.diff(edges).tolist()


def _normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


def decoder_nll(x0: torch.Tensor, mean: torch.Tensor, var: float, discrete: bool) -> torch.Tensor:
    """-log p(x0 | x1) per image, summed over dimensions: a Gaussian (mean, var), over 8-bit bins of width
    2/255 (the end bins reaching to ±∞, as Ho et al.) or as a density."""
    std = math.sqrt(var)
    if not discrete:
        return (0.5 * ((x0 - mean) ** 2 / var + math.log(2 * math.pi * var))).flatten(1).sum(1)
    upper = torch.where(x0 > 0.999, torch.ones_like(x0), _normal_cdf((x0 + 1 / 255 - mean) / std))
    lower = torch.where(x0 < -0.999, torch.zeros_like(x0), _normal_cdf((x0 - 1 / 255 - mean) / std))
    return -torch.log((upper - lower).clamp_min(1e-12)).flatten(1).sum(1)


@register
@dataclass(frozen=True)
class Likelihood(ScoreSpec):
    """The DDPM variational bound in bits per dimension, over `strata` strata of t (one call each) plus the decoder."""

    kind = "likelihood"
    strata: int = 19
    discrete: bool = True
    variance: str = "small"

    def __post_init__(self):
        if self.strata < 1:
            raise ValueError("the likelihood needs at least one stratum of t")
        if self.variance not in VARIANCES:
            raise ValueError(f"unknown reverse variance {self.variance!r}; choose one of {list(VARIANCES)}")

    def calls(self, sampler: str = DEFAULT_SAMPLER, steps: int = DEFAULT_STEPS, T: int = 1000) -> int:
        return len(strata(T, self.strata)[0]) + 1

    def describe(self) -> str:
        return (f"negative log-likelihood bound in bits per dimension ({self.calls()} calls: {self.strata} strata of t "
                f"and the {'8-bit' if self.discrete else 'continuous'} decoder)")

    def bits(self, ctx: Context, x: torch.Tensor) -> np.ndarray:
        """(N,) the bound in bits per dimension of images x in [-1, 1]."""
        ckpt = ctx.checkpoint
        sched, model, precision = ckpt.scheduler, ckpt.model, ckpt.precision
        T = sched.config.num_train_timesteps
        abars = alpha_bars(sched).double().to(x.device)
        ts, widths = strata(T, self.strata)
        rows = 1 if ctx.shared_noise else len(x)
        noises = {t: noise_for(rows, t, ctx.seed, x.shape[1:]).expand(len(x), -1, -1, -1) for t in [1, *ts]}
        dims = x[0].numel()

        def bound(xb: torch.Tensor, idx: slice) -> np.ndarray:
            xb = xb.double()
            a_T = abars[T]
            nats = (0.5 * (a_T * xb ** 2 + (1 - a_T) - 1 - torch.log(1 - a_T))).flatten(1).sum(1)  # L_T
            for t, w in zip(ts, widths):
                eps = noises[t][idx].to(xb)
                xt = add_noise(xb, eps, t, sched).float()
                pred = noise_prediction(model, xt, t, sched, precision).double()
                a, _, beta, true_var = one_step(abars, t)  # true_var: β̃_t, of q(x_{t-1} | x_t, x0)
                var = true_var if self.variance == "small" else beta
                mean_gap = beta ** 2 / ((1 - beta) * (1 - a)) * (eps - pred).pow(2).flatten(1).sum(1)
                nats = nats + w * 0.5 * (dims * (true_var / var - 1 - torch.log(true_var / var)) + mean_gap / var)
            eps = noises[1][idx].to(xb)
            x1 = add_noise(xb, eps, 1, sched)
            pred = noise_prediction(model, x1.float(), 1, sched, precision).double()
            mean = (x1 - (1 - abars[1]).sqrt() * pred) / abars[1].sqrt()
            nats = nats + decoder_nll(xb, mean, float(1 - abars[1]), self.discrete)
            return (nats / (dims * math.log(2))).cpu().numpy()

        return batched(ctx, x, bound)

    def components(self, ctx: Context, x: torch.Tensor, state=None) -> torch.Tensor:
        return torch.as_tensor(self.bits(ctx, x))[:, None]
