"""Reconstruction error: noise the image to t, denoise it back, measure how far it lands (MSE in pixels, LPIPS).

Its components are each metric at each t, averaged over the first `draws` noise draws; their z-mean over t and
metrics is multi-t (Graham et al., CVPR-W 2023) when draws = 1 and metrics are MSE and LPIPS.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS, network_calls
from ..scoring import METRICS, draw_column, score_images
from .base import Context, ScoreSpec, register


@register
@dataclass(frozen=True)
class Reconstruction(ScoreSpec):
    """The z-mean over `ts` and `metrics` of each reconstruction error averaged over `draws` noise draws."""

    kind = "reconstruction"
    table = "reconstruction"
    ts: tuple[int, ...] = (700,)
    draws: int = 1
    metrics: tuple[str, ...] = ("mse",)

    def __post_init__(self):
        if not self.ts or self.draws < 1:
            raise ValueError("a reconstruction score needs at least one t and one draw")
        unknown = set(self.metrics) - set(METRICS)
        if unknown:
            raise ValueError(f"unknown metric {sorted(unknown)[0]!r}; choose from {list(METRICS)}")

    def calls(self, sampler: str = DEFAULT_SAMPLER, steps: int = DEFAULT_STEPS) -> int:
        return self.draws * sum(network_calls(sampler, steps, t) for t in self.ts)

    def describe(self) -> str:
        draws = f"{self.draws} noise draw{'s' * (self.draws > 1)}"
        return f"{' + '.join(self.metrics)} over t = {', '.join(map(str, self.ts))}, each averaged over {draws}"

    def needs(self) -> dict[int, int]:
        return {t: self.draws for t in self.ts}

    def columns(self, rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
        """Columns "<metric>@<t>": the metric at t averaged over the draws."""
        avg = self.averaged(rows, keys)
        wide = avg.set_index([*keys, "t"])[list(self.metrics)].unstack("t")
        wide.columns = [f"{m}@{t}" for m, t in wide.columns]
        order = [f"{m}@{t}" for t in self.ts for m in self.metrics]
        return wide.reindex(columns=order).reset_index()

    def averaged(self, rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
        """Per image (keys) and t: each metric averaged over the draws. ValueError when a (t, draw) is missing."""
        rows = rows[rows["t"].isin(self.ts) & (draw_column(rows) < self.draws)]
        if not set(self.metrics) <= set(rows.columns):
            rows = rows.iloc[:0]
        present = rows[list(self.metrics)].notna().any(axis=1) if len(rows) else None
        if present is not None and present.any():  # a metric NaN throughout (LPIPS unavailable) stays, as NaN
            rows = rows[present]
        missing = {(t, d) for t in self.ts for d in range(self.draws)} - set(zip(rows["t"], draw_column(rows)))
        if missing:
            raise ValueError(f"the table lacks {'/'.join(self.metrics)} at (t, draw) {sorted(missing)[:5]}")
        return rows.groupby([*keys, "t"], sort=False)[list(self.metrics)].mean().reset_index()

    def rows(self, ctx: Context, x: torch.Tensor) -> pd.DataFrame:
        """The stored rows of images x: index, t, draw and every metric."""
        ckpt = ctx.checkpoint
        return score_images(ckpt.model, x, self.ts, ckpt.scheduler, ctx.sampler, ctx.steps, ctx.seed, ctx.lpips,
                            ctx.batch_size, ctx.progress, range(self.draws), ckpt.precision, ctx.shared_noise)

    def component_frame(self, ctx: Context, x: torch.Tensor, state=None) -> pd.DataFrame:
        """Every metric at every t (the evidence a verdict shows), not only the score's own."""
        every = Reconstruction(self.ts, self.draws, METRICS)
        return every.columns(self.rows(ctx, x), ["index"]).sort_values("index", ignore_index=True)

    def components(self, ctx: Context, x: torch.Tensor, state=None) -> torch.Tensor:
        names = [f"{m}@{t}" for t in self.ts for m in self.metrics]
        return torch.as_tensor(self.component_frame(ctx, x, state)[names].to_numpy(dtype=float))
