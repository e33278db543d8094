"""The model's own features: noise the image lightly to t_f, run the UNet once, read one block's output pooled
over space, and take the cosine distance to the k-th nearest of `bank` ID training images embedded alike."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS
from ..features import KS, FeatureBank, FeatureSpec, checkpoint_bank
from ..scoring import distance_frame, draw_column, embed_draws
from .base import Context, ScoreSpec, register


@register
@dataclass(frozen=True)
class Features(ScoreSpec):
    """Cosine distance to the k-th nearest of `bank` ID training images in `pooling`-pooled `layer` features at
    t = `t`, averaged over `draws` noise draws (one call each)."""

    kind = "features"
    table = "features"
    layer: str = "up_blocks.0"
    t: int = 50
    pooling: str = "max"
    k: int = 1
    draws: int = 1
    bank: int = 58_000

    def __post_init__(self):
        FeatureSpec(self.layer, self.t, self.pooling)  # refuses an unknown layer or pooling
        if self.k not in KS:
            raise ValueError(f"k must be one of {list(KS)}, got {self.k}")

    @property
    def spec(self) -> FeatureSpec:
        return FeatureSpec(self.layer, self.t, self.pooling)

    @property
    def metric(self) -> str:
        """Its column in the features table."""
        return f"knn{self.k}"

    def calls(self, sampler: str = DEFAULT_SAMPLER, steps: int = DEFAULT_STEPS) -> int:
        return self.draws

    def describe(self) -> str:
        which = "the nearest" if self.k == 1 else f"the {self.k}th nearest"
        return (f"cosine distance to {which} of {self.bank:,} ID training images in {self.spec.describe()}, "
                f"{self.draws} noise draw{'s' * (self.draws > 1)}")

    def needs(self) -> dict[int, int]:
        return {self.t: self.draws}

    def columns(self, rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
        rows = rows[(rows["t"] == self.t) & (draw_column(rows) < self.draws)]
        if self.metric in rows.columns:
            rows = rows[rows[self.metric].notna()]
        missing = set(range(self.draws)) - set(draw_column(rows))
        if missing or self.metric not in rows.columns:
            raise ValueError(f"the table lacks {self.metric} at t = {self.t}, draws {sorted(missing)}")
        avg = rows.groupby(keys, sort=False)[self.metric].mean()
        return avg.rename(f"{self.metric}@{self.t}").reset_index()

    def fit(self, ctx: Context) -> FeatureBank:
        """The checkpoint's bank, refused in one line when it is not the one this term asks for."""
        bank = checkpoint_bank(ctx.checkpoint)
        if bank is None:
            raise ValueError(f"{ctx.checkpoint.path} has no feature bank; build one with "
                             f"`diffood bank --checkpoint {ctx.checkpoint.path}`")
        bank.check(self)
        return bank

    def embeddings(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        """(draws x N, C) embeddings of x, draw by draw."""
        ckpt = ctx.checkpoint
        return embed_draws(ckpt.model, x, self.spec, range(self.draws), ctx.seed, ckpt.precision, ctx.batch_size,
                           ctx.shared_noise, ctx.progress, ckpt.scheduler)

    def component_frame(self, ctx: Context, x: torch.Tensor, state: FeatureBank | None = None) -> pd.DataFrame:
        """The distance at k, and the nearest one ("nearest", averaged over the draws alike)."""
        bank = state if state is not None else self.fit(ctx)
        rows = distance_frame(bank, self.embeddings(ctx, x), list(range(self.draws)))
        nearest = rows.groupby("index")["knn1"].mean().rename("nearest").reset_index()
        return self.columns(rows, ["index"]).merge(nearest, on="index").sort_values("index", ignore_index=True)

    def components(self, ctx: Context, x: torch.Tensor, state: FeatureBank | None = None) -> torch.Tensor:
        frame = self.component_frame(ctx, x, state)
        return torch.tensor(frame[[f"{self.metric}@{self.t}"]].to_numpy(dtype=float))
