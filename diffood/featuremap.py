"""Where images lie in the default score's feature space: embeddings made exactly as the score makes them
(features.py, through scoring.embed_draws), a sample of the feature bank, and 2-D projections of both."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from .features import FeatureBank
from .images import to_model_input, to_png
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


def most_similar(points: np.ndarray, i: int, k: int) -> np.ndarray:
    """The k rows of `points` nearest to row i by cosine distance (as the feature term measures it), nearest
    first, row i left out."""
    unit = points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
    distance = 1.0 - unit @ unit[i]
    distance[i] = np.inf
    return np.argsort(distance, kind="stable")[:max(0, min(k, len(points) - 1))]


def selection_archive(table: pd.DataFrame, images: list[torch.Tensor | None]) -> bytes:
    """A .zip of the selected images as PNG (`<set>-<index>.png`) and `selection.csv` (the table, with each
    image's file name; empty where the image is not at hand), so that a selection can become an OOD set."""
    files = [f"{row.set}-{row.index}.png" if image is not None else "" for row, image in zip(table.itertuples(), images)]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, image in zip(files, images):
            if image is not None:
                z.writestr(name, to_png(image))
        z.writestr("selection.csv", table.assign(file=files).to_csv(index=False))
    return buf.getvalue()
