"""Where images lie in the default score's feature space: embeddings made exactly as the score makes them
(features.py, through scoring.embed_draws), a sample of the feature bank, and 2-D projections of both."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from .features import FeatureBank
from .images import to_model_input
from .scoring import embed_draws
from .sets import load_images

PROJECTIONS = ("PCA", "t-SNE")


def embed_images(checkpoint, bank: FeatureBank, name: str, n: int, seed: int = 0, data_dir=None,
                 batch_size: int = 256) -> np.ndarray:
    """The first draw's embeddings (n, C) of a set's first n images (seed-fixed order), as the default
    score embeds them in an evaluation: image i gets row i's noise."""
    device = next(checkpoint.model.parameters()).device
    x = to_model_input(load_images(name, "test", n, seed, data_dir, id=checkpoint.data)).to(device)
    return embed_draws(checkpoint.model, x, bank.spec, [0], seed, checkpoint.precision, batch_size,
                       scheduler=checkpoint.scheduler).numpy()


def embed_upload(checkpoint, bank: FeatureBank, x: torch.Tensor, seed: int = 0) -> np.ndarray:
    """One upload's embedding (C,), as its verdict embeds it (the noise every upload gets)."""
    device = next(checkpoint.model.parameters()).device
    return embed_draws(checkpoint.model, x.to(device), bank.spec, [0], seed, checkpoint.precision,
                       shared_noise=True, scheduler=checkpoint.scheduler).numpy()[0]


def bank_sample(bank: FeatureBank, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(bank rows, their embeddings) of n bank rows chosen by seed."""
    rows = torch.randperm(bank.n, generator=torch.Generator().manual_seed(seed))[: min(n, bank.n)].sort().values
    return rows.numpy(), bank.embeddings[rows].float().numpy()


@dataclass
class Projection:
    """2-D coordinates of the points, and the fitted PCA (which can place new points; t-SNE cannot)."""

    xy: np.ndarray
    pca: PCA | None = None

    def place(self, points: np.ndarray) -> np.ndarray | None:
        return self.pca.transform(points) if self.pca is not None else None


def project(points: np.ndarray, method: str = "PCA", seed: int = 0) -> Projection:
    """PCA (at once) or t-SNE (scikit-learn, initialised by PCA; seconds for thousands of points)."""
    if method == "PCA":
        pca = PCA(2, random_state=seed).fit(points)
        return Projection(pca.transform(points), pca)
    if method == "t-SNE":
        perplexity = float(min(30, max(2, (len(points) - 1) / 3)))
        tsne = TSNE(2, init="pca", perplexity=perplexity, random_state=seed, metric="cosine")
        return Projection(tsne.fit_transform(points))
    raise ValueError(f"unknown projection {method!r}; choose one of {list(PROJECTIONS)}")
