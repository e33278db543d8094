"""The hardest cases at a threshold: the ID test images a verdict rejects (false alarms) and the OOD images it
accepts (misses), the most wrong first, with the images themselves for a gallery, a contact sheet or a CSV."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .errors import DiffoodError
from .evaluate import EvalConfig, EvalResult, image_sets
from .model import Checkpoint
from .samples import BUNDLE
from .scores import DEFAULT, ScoreSpec
from .sets import load_images
from .verdict import TARGET_TPR, Reference

CASES = {"id": "false alarm", "ood": "miss"}  # an ID image called OOD; an OOD image called ID
TITLES = {"false alarm": "False alarms: ID test images called OOD", "miss": "Misses: OOD images called ID"}
COLUMNS = ["case", "role", "dataset", "index", "score", "percentile", "margin"]


def wrong_side(frame: pd.DataFrame, threshold: float) -> pd.Series:
    """Rows of a score frame (role, score) the verdict gets wrong: ID test above the threshold, OOD at or below."""
    return ((frame["role"] == "id") & (frame["score"] > threshold)) | ((frame["role"] == "ood") & (frame["score"] <= threshold))


def percentiles(scores, val_scores) -> np.ndarray:
    """Share of ID validation scores below each score, in % (verdict.Reference.percentile, vectorised)."""
    val = np.sort(np.asarray(val_scores, dtype=float))
    return 100.0 * np.searchsorted(val, np.asarray(scores, dtype=float), side="left") / len(val)


def wrong_cases(frame: pd.DataFrame, threshold: float, val_scores: np.ndarray, k: int | None = None) -> pd.DataFrame:
    """The false alarms and misses of a score frame (role, dataset, index, score) at `threshold`, k of each at
    most: columns COLUMNS; `percentile` is the share of ID validation scores below the score (%), `margin` how far
    past the threshold the score lies; each case sorted most wrong first."""
    wrong = frame[wrong_side(frame, threshold)]
    wrong = wrong.assign(case=wrong["role"].map(CASES), margin=(wrong["score"] - threshold).abs(),
                         percentile=percentiles(wrong["score"], val_scores))
    wrong = wrong.sort_values(["case", "margin"], ascending=[True, False], kind="stable")
    if k is not None:
        wrong = wrong.groupby("case", sort=False).head(k)
    return wrong[COLUMNS].reset_index(drop=True)


def hardest_cases(result: EvalResult, name: str | ScoreSpec = DEFAULT, threshold: float | None = None,
                  tpr: float = TARGET_TPR, k: int | None = None) -> pd.DataFrame:
    """wrong_cases of the evaluation's score `name` at `threshold` (default: the one accepting `tpr` of the ID
    validation images)."""
    reference = Reference.from_result(result, name, tpr)
    threshold = reference.threshold if threshold is None else float(threshold)
    return wrong_cases(result.score_frame(reference.spec), threshold, reference.val_scores, k)


def bin_rows(frame: pd.DataFrame, edges: np.ndarray, i: int, val_scores) -> pd.DataFrame:
    """The rows of a score frame in histogram bin i of `edges` (as numpy.histogram counts them: the last bin
    closed), highest score first, with their ID validation percentile."""
    lo, hi = edges[i], edges[i + 1]
    inside = (frame["score"] >= lo) & ((frame["score"] <= hi) if i == len(edges) - 2 else (frame["score"] < hi))
    rows = frame[inside].sort_values("score", ascending=False, kind="stable")
    return rows.assign(percentile=percentiles(rows["score"], val_scores))


def case_images(cfg: EvalConfig, rows: pd.DataFrame, checkpoint: Checkpoint) -> list[torch.Tensor | None]:
    """The image (uint8, C x S x S) of each row (role, dataset, index) of an evaluation's tables (`cfg`: its
    resolved config); None where the data is not at hand (offline, the shipped sample holds the first images of
    each seeded set)."""
    sets = {(role, name): (split, n) for role, name, split, n in image_sets(cfg, checkpoint)}
    out: list[torch.Tensor | None] = [None] * len(rows)
    for (role, dataset), part in rows.reset_index(drop=True).groupby(["role", "dataset"], sort=False):
        split, n = sets[role, dataset]
        need = int(part["index"].max()) + 1  # a seeded set's first images are those of any larger draw
        bundled = BUNDLE.get((dataset, split)) or BUNDLE.get((checkpoint.data.name, split), 0)
        images = None
        for size in dict.fromkeys((need, min(need, bundled))):  # all of them, else what the shipped sample holds
            try:
                images = load_images(dataset, split, size, cfg.seed, cfg.data_dir, id=checkpoint.data)
                break
            except (DiffoodError, ValueError):
                continue
        for position, index in zip(part.index, part["index"]):
            if images is not None and index < len(images):
                out[position] = images[int(index)]
    return out


def contact_sheet(images: list[torch.Tensor | None], columns: int = 10) -> torch.Tensor:
    """The images in a grid (float, C x H x W in [0, 1]), a grey square for one not at hand."""
    from torchvision.utils import make_grid

    shape = next((x.shape for x in images if x is not None), None)
    if shape is None:
        raise DiffoodError("none of these images is at hand: point --data-dir at the data (or allow downloads)")
    tiles = [x.float() / 255 if x is not None else torch.full(shape, 0.5) for x in images]
    return make_grid(torch.stack(tiles), nrow=min(columns, len(tiles)), padding=2, pad_value=1.0)
