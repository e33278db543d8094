"""The shipped sample bundle: the seed-0 subsets of FashionMNIST and MNIST that the shipped models'
default views ask for, so they work on a fresh clone offline (`samples.safetensors`, 1.2 MB)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from .datasets import DataSpec, load_split, resolve_data_dir, seeded_subset
from .errors import DataUnavailableError

SAMPLES_PATH = Path(__file__).parent / "assets" / "samples.safetensors"
# validation: enough for the default z-score statistics, so any sampler works offline
BUNDLE = {("fashionmnist", "test"): 256, ("fashionmnist", "val"): 500, ("mnist", "test"): 256, ("mnist", "val"): 500}


def bundled(name: str, split: str, n: int | None, seed: int, size: int, channels: int) -> torch.Tensor | None:
    """The first n images of a set's split in seed-0 order, from the bundle; None when it does not hold them."""
    if seed != 0 or n is None or not SAMPLES_PATH.is_file() or (size, channels) != (28, 1):
        return None
    try:
        images = load_file(SAMPLES_PATH).get(f"{name}/{split}")
    except Exception as e:  # safetensors raises its own error type for a corrupt file
        raise DataUnavailableError(f"{name} is not in the data folder and the shipped sample {SAMPLES_PATH} is "
                                   f"unreadable ({str(e)[:200]}); reinstall diffood or point --data-dir at the data") from e
    if images is None or n > len(images):
        return None
    return images[:n, None] if images.dim() == 3 else images[:n]


def sample_bundle(data_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The tensors `samples.safetensors` ships (N x 28 x 28 each), made from the data folder."""
    root = resolve_data_dir(data_dir)
    out = {}
    for (name, split), n in BUNDLE.items():
        images = load_split(DataSpec(name), split, root, False).pixels
        out[f"{name}/{split}"] = seeded_subset(images, n, 0)[:, 0]
    return out
