"""The Python API: load a model, score images, evaluate it, explain a verdict. The CLI and the app call the
same functions (evaluate.evaluate, verdict.judge_entries), so all three give the same numbers.

    import diffood
    scorer = diffood.load()                          # or load("mnist"), load("models/photos"), device=...
    table = scorer.score(["a.png", "dir/", "batch.zip"])
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS, default_device
from .errors import DiffoodError
from .evaluate import EvalConfig, EvalResult, evaluate
from .features import bank_images
from .fit import FitConfig
from .fit import fit as _fit
from .hardest import hardest_cases
from .images import as_pixels, to_model_input
from .inputs import Entry, collect
from .model import Checkpoint, load_checkpoint
from .perceptual import get_lpips
from .scores import ScoreSpec
from .sets import load_user_image
from .verdict import TARGET_TPR, Reference, Verdict, judge, judge_entries, score_tensor

Input = str | Path | bytes | Image.Image | np.ndarray | torch.Tensor | Entry
FIXED = ("checkpoint", "device", "precision")  # a Scorer's own: load another to change them


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
    """A checkpoint and the ID validation statistics its scores are placed against.

    `scorer(x)` scores a batch tensor (N, C, S, S) of pixels in [0, 1] (or uint8) as the model sees them:
    no decoding, resizing or inversion; `scorer.score(...)` reads files and images as uploads are read and
    returns verdicts in a table."""

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

    @property
    def spec(self) -> ScoreSpec:
        return self.reference.spec

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.score_tensor(x)

    def score_tensor(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Scores (N,) of images x (N, C, S, S) with pixels in [0, 1] or uint8, at the model's size and channels;
        higher = more OOD, above `threshold` = OOD."""
        data = self.checkpoint.data
        if x.dim() != 4 or tuple(x.shape[1:]) != (data.channels, data.size, data.size):
            raise DiffoodError(f"expected images (N, {data.channels}, {data.size}, {data.size}), got {tuple(x.shape)}")
        values, _ = score_tensor(to_model_input(x), self.checkpoint, self.reference, self.lpips, batch_size)
        return torch.as_tensor(values)

    def score(self, inputs: Input | Iterable[Input], invert: bool | None = None,
              progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
        """One row per image (verdict.RESULT_COLUMNS): files, folders and .zip archives by path, image
        bytes, PIL images, arrays or tensors (H x W, H x W x C or C x H x W; uint8 or floats in [0, 1]).
        Unreadable entries get their reason in `error`; in-memory images are named by their index."""
        entries = as_entries(inputs, self.checkpoint.data.channels)
        return judge_entries(entries, self.checkpoint, self.reference, self.lpips, invert, progress=progress)

    def evaluate(self, ood: Iterable[str] | None = None, progress: Callable[[int, int, str], None] | None = None,
                 **settings) -> pd.DataFrame:
        """The summary table (AUROC, FPR95, AUPR-In, AUPR-Out per score) of ID test images against each OOD
        set (default: the checkpoint's own); `settings` are EvalConfig's fields."""
        return self.evaluation(ood, progress, **settings).summary

    def summaries(self, ood: Iterable[str] | None = None, progress: Callable[[int, int, str], None] | None = None,
                  **settings) -> Iterator[pd.DataFrame]:
        """The summary as it becomes available: first the default score alone (one to four network calls per
        image for the shipped models: the quick answer), then every score and curve."""
        yield self.evaluation(ood, progress, default_only=True, **settings).summary
        yield self.evaluation(ood, progress, **settings).summary

    def hardest(self, ood: Iterable[str] | None = None, k: int = 20, **settings) -> pd.DataFrame:
        """The default score's k worst false alarms (ID test images it calls OOD) and k worst misses (OOD images
        it calls ID) at the reference's threshold, most wrong first (hardest.COLUMNS)."""
        result = self.evaluation(ood, default_only=True, **settings)
        return hardest_cases(result, tpr=self.reference.tpr, k=k)

    def evaluation(self, ood: Iterable[str] | None = None, progress=None, default_only: bool = False,
                   **settings) -> EvalResult:
        """The whole evaluation (`default_only`: the default score alone): per-image score table and summary.
        Its sampler, steps and seed are the reference's unless `settings` say otherwise."""
        known = {f.name for f in fields(EvalConfig)}
        bad = sorted(set(settings) - known)
        if bad:
            raise DiffoodError(f"evaluate() has no setting {bad[0]!r}; it takes {', '.join(sorted(known - set(FIXED)))}")
        fixed = sorted(set(settings) & set(FIXED))
        if fixed:
            raise DiffoodError(f"{fixed[0]} is the scorer's own; load another: diffood.load({fixed[0]}=...)")
        base = dict(checkpoint=str(self.checkpoint.path), ood=None if ood is None else tuple(ood),
                    sampler=self.reference.sampler, steps=self.reference.steps, seed=self.reference.seed,
                    data_dir=self.data_dir, tpr=self.reference.tpr)
        return evaluate(EvalConfig(**(base | settings)), self.checkpoint, progress, default_only=default_only)

    def explain(self, image: Input, n: int = 5, invert: bool | None = None) -> Explanation:
        """The verdict on one image and its n nearest ID training images in the model's feature space."""
        entry = as_entries(image, self.checkpoint.data.channels)[0]
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
         data_dir: str | None = None, score: ScoreSpec | str | None = None) -> Scorer:
    """A Scorer for a checkpoint folder or a shipped model by name ("fashionmnist", the default; "mnist"), with
    its recorded score or `score` (a spec, or a name as `diffood evaluate --score` takes it). The ID validation
    statistics of that score alone come from the checkpoint's shipped tables or the cache, else are computed."""
    device = torch.device(device) if device else default_device()
    ckpt = load_checkpoint(checkpoint, device=device, precision=precision)
    reference = Reference.fit(ckpt, score, tpr, sampler, steps, seed, data_dir=data_dir)
    return Scorer(ckpt, reference, data_dir, get_lpips(str(device)))


def fit(data: str, out: str, image_size: int = 28, channels: int = 1, max_minutes: float | None = None,
        progress: Callable[[str], None] | None = None, **settings) -> Checkpoint:
    """From images to a ready model, as `diffood fit` does: train, export, choose the score on the model's own
    proxies, build its bank and tables; resumable. `settings` are FitConfig's other fields (max_steps, epochs,
    batch_size, seed, data_dir, device); `progress` gets one line per stage. Returns the loaded checkpoint."""
    cfg = FitConfig(data=data, out=out, image_size=image_size, channels=channels, max_minutes=max_minutes, **settings)
    _fit(cfg, say=progress or (lambda line: None))
    return load_checkpoint(out, device=cfg.device or "cpu")


def as_entries(inputs: Input | Iterable[Input], channels: int = 1) -> list[Entry]:
    """Whatever `Scorer.score` takes, as named entries: file bytes (inputs.py reads paths), or in-memory images
    as float pixels with `channels` channels where they were colour-converted."""
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
                out.append(Entry(f"#{i}", as_pixels(item, channels)))
            except (TypeError, ValueError) as e:
                out.append(Entry(f"#{i}", error=f"not an image ({e})"))
    return out
