"""The Python API: load a model, score images, evaluate it, explain a verdict. The CLI and the app call the
same functions (evaluate.evaluate, verdict.judge_entries), so all three give the same numbers.

    import diffood
    scorer = diffood.load()                          # or load("mnist"), load("models/photos"), device=...
    table = scorer.score(["a.png", "dir/", "batch.zip"])
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS, default_device
from .errors import DiffoodError
from .evaluate import DEFAULT, EvalConfig, EvalResult, evaluate
from .features import bank_images
from .inputs import Entry, collect
from .model import Checkpoint, load_checkpoint
from .perceptual import get_lpips
from .sets import load_user_image
from .verdict import TARGET_TPR, Reference, Verdict, judge, judge_entries

Input = str | Path | bytes | Image.Image | np.ndarray | torch.Tensor | Entry


@dataclass
class Explanation:
    """Why an image got its verdict: the verdict, its nearest ID training images in the model's feature
    space (bank row, cosine distance) and those images (uint8, N x C x S x S) where the data is at hand."""

    verdict: Verdict
    neighbours: pd.DataFrame
    images: torch.Tensor | None = None
    note: str = ""  # why `images` is None


@dataclass
class Scorer:
    """A checkpoint and the ID validation statistics its scores are placed against."""

    checkpoint: Checkpoint
    reference: Reference
    data_dir: str | None = None
    lpips: object = field(default=None, repr=False)

    @property
    def threshold(self) -> float:
        """The score above which an image is called OOD: it accepts `tpr` of ID validation images."""
        return self.reference.threshold

    @property
    def tpr(self) -> float:
        return self.reference.tpr

    def score(self, inputs: Input | Iterable[Input], invert: bool | None = None,
              progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
        """One row per image (verdict.RESULT_COLUMNS): files, folders and .zip archives by path, image
        bytes, PIL images, arrays or tensors (H x W, H x W x C or C x H x W; uint8 or floats in [0, 1]).
        Unreadable entries get their reason in `error`; in-memory images are named by their index."""
        return judge_entries(as_entries(inputs), self.checkpoint, self.reference, self.lpips, invert, progress=progress)

    def evaluate(self, ood: Iterable[str] | None = None, progress: Callable[[int, int, str], None] | None = None,
                 **settings) -> pd.DataFrame:
        """The summary table (AUROC, FPR95, AUPR-In, AUPR-Out per score) of ID test images against each OOD
        set (default: the checkpoint's own); `settings` are EvalConfig's fields."""
        return self.evaluation(ood, progress, **settings).summary

    def evaluation(self, ood: Iterable[str] | None = None, progress=None, **settings) -> EvalResult:
        """The whole evaluation: per-image score table and summary."""
        cfg = EvalConfig(checkpoint=str(self.checkpoint.path), ood=None if ood is None else tuple(ood),
                         sampler=self.reference.sampler, steps=self.reference.steps, seed=self.reference.seed,
                         data_dir=self.data_dir, **settings)
        return evaluate(cfg, self.checkpoint, progress)

    def explain(self, image: Input, n: int = 5, invert: bool | None = None) -> Explanation:
        """The verdict on one image and its n nearest ID training images in the model's feature space."""
        entry = as_entries(image)[0]
        if entry.error:
            raise DiffoodError(f"{entry.name}: {entry.error}")
        x = load_user_image(entry.data, invert, self.checkpoint.data)
        verdict = judge(x, self.checkpoint, self.reference, self.lpips, neighbours=n)[0]
        if verdict.neighbours is None:
            raise DiffoodError("this score has no feature term, so there are no nearest training images to show")
        try:
            images = bank_images(self.reference.bank, verdict.neighbours["bank_index"].tolist(), self.data_dir,
                                 self.checkpoint.data)
            return Explanation(verdict, verdict.neighbours, images)
        except DiffoodError as e:
            return Explanation(verdict, verdict.neighbours, None, str(e))


def load(checkpoint: str | Path | None = None, device: str | torch.device | None = None, precision: str = "auto",
         tpr: float = TARGET_TPR, sampler: str = DEFAULT_SAMPLER, steps: int = DEFAULT_STEPS, seed: int = 0,
         data_dir: str | None = None, score: str = DEFAULT) -> Scorer:
    """A Scorer for a checkpoint folder or a shipped model by name ("fashionmnist", the default; "mnist").
    The ID validation statistics come from the checkpoint's shipped tables or the cache, else are computed."""
    device = torch.device(device) if device else default_device()
    ckpt = load_checkpoint(checkpoint, device=device, precision=precision)
    cfg = EvalConfig(checkpoint=str(ckpt.path), ood=(), sampler=sampler, steps=steps, seed=seed, data_dir=data_dir,
                     device=str(device))
    result = evaluate(cfg, ckpt)
    return Scorer(ckpt, Reference.from_result(result, score, tpr), data_dir, get_lpips(str(device)))


def as_entries(inputs: Input | Iterable[Input]) -> list[Entry]:
    """Whatever `Scorer.score` takes, as named entries of file bytes (inputs.py reads paths)."""
    if isinstance(inputs, (str, Path, bytes, Image.Image, np.ndarray, torch.Tensor, Entry)):
        inputs = [inputs]
    out: list[Entry] = []
    for i, item in enumerate(inputs):
        if isinstance(item, Entry):
            out.append(item)
        elif isinstance(item, (str, Path)):
            out.extend(collect([str(item)]))
        elif isinstance(item, bytes):
            out.append(Entry(f"#{i}", item))
        else:
            try:
                out.append(Entry(f"#{i}", _png(item)))
            except (TypeError, ValueError) as e:
                out.append(Entry(f"#{i}", error=f"not an image ({e})"))
    return out


def _png(item) -> bytes:
    """A PIL image, array or tensor -> PNG bytes, so that it is decoded as a file would be."""
    if not isinstance(item, Image.Image):
        a = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
        if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
            a = a.transpose(1, 2, 0)  # C x H x W -> H x W x C
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
            raise ValueError(f"shape {a.shape}: expected H x W, H x W x C or C x H x W")
        if a.dtype != np.uint8:
            a = (np.clip(a.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
        item = Image.fromarray(a)
    buf = io.BytesIO()
    item.save(buf, format="PNG")
    return buf.getvalue()
