"""A Gaussian head on the model's own features: the pooled UNet block output at a light noise level (one call,
as the feature term reads it), scored by its squared Mahalanobis distance to a Gaussian fitted on ID training
images' embeddings, with Ledoit-Wolf's shrunk covariance or a diagonal one (Lee et al., NeurIPS 2018, on a
classifier's features; here on the diffusion model's). Its fit is a mean and a precision matrix: no bank."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..density import COVARIANCES, Gaussian, fit_gaussian
from ..diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS
from ..features import FeatureSpec, build_bank, checkpoint_bank
from ..scoring import embed_draws
from .base import Context, Fitted, ScoreSpec, register


@register
@dataclass(frozen=True)
class GaussianHead(Fitted, ScoreSpec):
    """Squared Mahalanobis distance of the `pooling`-pooled `layer` embedding at t = `t` to a Gaussian fitted
    on `train` ID training images."""

    kind = "gaussian"
    variants = ("gaussian", "gaussian(covariance=diagonal)")
    layer: str = "up_blocks.0"
    t: int = 50
    pooling: str = "max"
    covariance: str = "ledoit-wolf"
    train: int = 10_000

    def __post_init__(self):
        FeatureSpec(self.layer, self.t, self.pooling)
        if self.covariance not in COVARIANCES:
            raise ValueError(f"unknown covariance {self.covariance!r}; choose one of {list(COVARIANCES)}")

    @classmethod
    def for_pick(cls, pick) -> "GaussianHead":
        """On the features the checkpoint's bank holds (its pick's feature term): the embeddings it is fitted on."""
        term = pick.bank_term
        return cls(term.layer, term.t, term.pooling)

    @property
    def name(self) -> str:
        return "gaussian" if self.covariance == "ledoit-wolf" else f"gaussian-{self.covariance}"

    @property
    def spec(self) -> FeatureSpec:
        return FeatureSpec(self.layer, self.t, self.pooling)

    def calls(self, sampler: str = DEFAULT_SAMPLER, steps: int = DEFAULT_STEPS) -> int:
        return 1

    def describe(self) -> str:
        return (f"Mahalanobis distance in {self.spec.describe()} to a Gaussian ({self.covariance} covariance) of "
                f"{self.train:,} ID training images")

    def statistics(self, ctx: Context, x: torch.Tensor) -> np.ndarray:
        ckpt = ctx.checkpoint
        return embed_draws(ckpt.model, x, self.spec, [0], ctx.seed, ckpt.precision, ctx.batch_size, ctx.shared_noise,
                           ctx.progress, ckpt.scheduler).double().numpy()

    def training_statistics(self, ctx: Context) -> np.ndarray:
        """The checkpoint's bank rows when the bank holds these embeddings (no call), else the training images
        embedded as the bank embeds them."""
        bank = checkpoint_bank(ctx.checkpoint)
        if bank is None or bank.spec != self.spec or bank.n < self.train:
            bank = build_bank(ctx.checkpoint, self.spec, self.train, 0, ctx.data_dir, ctx.batch_size)
        return bank.embeddings[:self.train].double().numpy()

    def fit_statistics(self, stats: np.ndarray, seed: int = 0) -> dict[str, torch.Tensor]:
        return fit_gaussian(stats, self.covariance).tensors()

    def score_statistics(self, stats: np.ndarray, state: dict[str, torch.Tensor]) -> np.ndarray:
        return Gaussian.from_tensors(state).mahalanobis(stats)[:, None]
