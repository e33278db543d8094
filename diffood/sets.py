"""Image sets by name for a checkpoint's ID set: its splits, OOD sets (other data sets, folders, transforms
of the ID test images, noise), and uploads prepared by its rule.

`IdData` is what a checkpoint records of its ID set. `load_images` returns any set by name as uint8
(N, C, S, S) at the ID set's size and channels; every image goes through the same fitting (images.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from . import samples
from .datasets import (
    TORCHVISION,
    DataSpec,
    DataSpecError,
    describe,
    download_allowed,
    load_split,
    resolve_data_dir,
    seeded_order,
    seeded_subset,
)
from .errors import DataUnavailableError
from .images import MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS, fit_upload

FASHIONMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# the OOD set a page or `evaluate` shows first, for an ID set from torchvision; a folder's: its vertical flips
DEFAULT_OOD = {"fashionmnist": "mnist", "mnist": "fashionmnist", "kmnist": "mnist", "cifar10": "svhn",
               "cifar100": "svhn", "svhn": "cifar10"}
TRANSFORMS = {
    "vflip": "test images flipped upside down",
    "hflip": "test images mirrored left-right (near-OOD when most images are symmetric)",
    "invert": "test images with inverted intensities",
    "shuffle": "test images cut into 4 x 4 patches and shuffled (local texture kept, shape lost)",
}


@dataclass(frozen=True)
class IdData:
    """A checkpoint's ID set: the spec it was trained on and what training recorded of it. The defaults
    describe the shipped FashionMNIST model, whose checkpoint predates this record."""

    spec: DataSpec = field(default_factory=DataSpec)
    name: str = "fashionmnist"
    train_images: int = 58_000
    classes: tuple[str, ...] = FASHIONMNIST_CLASSES
    pixel_mean: tuple[float, ...] = (0.286,)
    pixel_std: tuple[float, ...] = (0.353,)
    invert_uploads: bool = True  # grayscale with dark backgrounds: light-background uploads are inverted
    default_ood: str = "mnist"

    @classmethod
    def from_dict(cls, d: dict) -> "IdData":
        d = dict(d)
        spec = DataSpec.from_dict(d.pop("spec", {}))
        tuples = {k: tuple(d[k]) for k in ("classes", "pixel_mean", "pixel_std") if k in d}
        return cls(spec=spec, **{**d, **tuples})

    @property
    def label(self) -> str:
        """The set's name for people: torchvision's spelling, or the folder's name."""
        return TORCHVISION[self.name].cls if self.name in TORCHVISION else self.name

    @property
    def size(self) -> int:
        return self.spec.image_size

    @property
    def channels(self) -> int:
        return self.spec.channels

    def resolve(self, name: str) -> str:
        """A set's full name: a bare transform ("vflip") is the ID set's ("fashionmnist-vflip")."""
        return f"{self.name}-{name}" if name in TRANSFORMS else name

    def transform_names(self) -> dict[str, str]:
        return {f"{self.name}-{k}": f"{self.label} {v}" for k, v in TRANSFORMS.items()}

    def ood_sets(self) -> dict[str, str]:
        """The OOD sets offered by name: other torchvision sets with as many channels, the ID test images
        transformed, and noise. Any folder or .zip of images is an OOD set too, by its path."""
        others = {k: f"{v.cls} (test split{'' if k in ('mnist', 'fashionmnist') else '; downloads when allowed'})"
                  for k, v in TORCHVISION.items() if k != self.name and v.channels == self.channels}
        noise = {"gaussian-noise": f"Gaussian pixel noise with {self.label}'s mean and std", "uniform": "uniform pixel noise"}
        return {**others, **self.transform_names(), **noise}


FASHIONMNIST = IdData()


def default_ood(spec: DataSpec) -> str:
    return DEFAULT_OOD.get(spec.name, f"{spec.name}-vflip")


def describe_data(spec: DataSpec, train) -> IdData:
    """The IdData a training run records (datasets.describe, plus the default OOD set)."""
    return IdData.from_dict({"spec": asdict(spec.recorded()), **describe(spec, train), "default_ood": default_ood(spec)})


# noise images drawn for a split other than "test" come from a stream of their own: a selection proxy is never a
# reported noise image
NOISE_STREAMS = {"test": 0, "val": 1_000_003}
PROXY_SPLITS = tuple(NOISE_STREAMS)  # the splits transforms and noise are made from


def _noise(kind: str, n: int, seed: int, id: IdData, split: str = "test") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + NOISE_STREAMS[split])
    shape = (n, id.channels, id.size, id.size)
    if kind == "gaussian-noise":  # the ID set's pixel mean and std, clipped
        mean, std = torch.tensor(id.pixel_mean)[:, None, None], torch.tensor(id.pixel_std)[:, None, None]
        x = mean + std * torch.randn(shape, generator=g)
    else:
        x = torch.rand(shape, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _patch_shuffle(images: torch.Tensor, seed: int, grid: int = 4) -> torch.Tensor:
    """Each image cut into grid x grid patches, put back in a random order (one order per image); pixels
    past a multiple of `grid` stay where they are."""
    n, c, size = len(images), images.shape[1], images.shape[-1]
    p = size // grid
    core = images[..., : p * grid, : p * grid]
    patches = core.reshape(n, c, grid, p, grid, p).permute(0, 2, 4, 1, 3, 5).reshape(n, grid * grid, c, p, p)
    g = torch.Generator().manual_seed(seed + 1)
    order = torch.stack([torch.randperm(grid * grid, generator=g) for _ in range(n)])
    patches = patches[torch.arange(n)[:, None], order]
    out = images.clone()
    out[..., : p * grid, : p * grid] = patches.reshape(n, grid, grid, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(n, c, p * grid, p * grid)
    return out


_TRANSFORM_FNS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "vflip": lambda x, seed: x.flip(-2),
    "hflip": lambda x, seed: x.flip(-1),
    "invert": lambda x, seed: 255 - x,
    "shuffle": _patch_shuffle,
}


def load_images(
    name: str,
    split: str = "test",
    n: int | None = None,
    seed: int = 0,
    data_dir: str | Path | None = None,
    download: bool | None = None,
    id: IdData = FASHIONMNIST,
) -> torch.Tensor:
    """n images (uint8, N x C x S x S, the ID set's size and channels) of a set, chosen by seed.

    `name`: the ID set (`id.name`; splits train/val/test), `<id>-vflip` / `-hflip` / `-invert` / `-shuffle`
    (its `split` images transformed: test, or val for the selection's proxies), `gaussian-noise`, `uniform`
    (a noise stream per split), a torchvision name (its test split) or a
    folder / .zip of images (all of them). When the data folder lacks a set, the small sample bundle
    shipped with the package answers requests it covers (seed 0, n up to its size), so the default views
    of the shipped models work on a fresh clone offline.
    """
    name = id.resolve(name)
    prefix, _, kind = name.rpartition("-")
    made = name in ("gaussian-noise", "uniform") or (prefix == id.name and kind in _TRANSFORM_FNS)
    if made and split not in PROXY_SPLITS:
        raise ValueError(f"{name} is made from the {' or '.join(PROXY_SPLITS)} split, not {split!r}")
    if name in ("gaussian-noise", "uniform"):
        return _noise(name, n if n is not None else 1000, seed, id, split)
    root = resolve_data_dir(data_dir)
    download = download_allowed() if download is None else download
    if made:
        return _TRANSFORM_FNS[kind](load_images(id.name, split, n, seed, data_dir, download, id), seed)
    if name in (id.name, id.spec.source):
        spec = id.spec
    else:
        if split != "test":
            raise ValueError(f"OOD set {name!r} has only a 'test' split")
        spec = replace(id.spec, source=name)
        split = "test" if spec.is_torchvision else "all"
    try:
        return seeded_subset(load_split(spec, split, root, download).pixels, n, seed)
    except (DataUnavailableError, DataSpecError):
        bundled = samples.bundled(spec.name, "test" if split == "all" else split, n, seed, id.size, id.channels)
        if bundled is None:
            raise
        return bundled


def provenance(name: str, split: str = "test", n: int | None = None, seed: int = 0, data_dir: str | Path | None = None,
               id: IdData = FASHIONMNIST) -> set[tuple[str, int]]:
    """The source images `load_images(name, split, n, seed)` is made of, as (source, position) pairs; two sets
    share an image exactly when these meet. An ID split's image (and its transforms) by its position in the
    split, noise by its generator stream and row; any other set is its own source."""
    name = id.resolve(name)
    prefix, _, kind = name.rpartition("-")
    if name in ("gaussian-noise", "uniform"):
        return {(f"{name}, noise stream {seed + NOISE_STREAMS[split]}", i) for i in range(n if n is not None else 1000)}
    if prefix == id.name and kind in _TRANSFORM_FNS:
        name = id.name
    if name != id.name:
        return {(name, i) for i in range(n if n is not None else 0)}  # another set: never an ID image
    size = len(load_split(id.spec, split, resolve_data_dir(data_dir), False).pixels)
    return {(f"{id.name}/{split}", int(i)) for i in seeded_order(size, n, seed)}


def load_user_image(data: bytes | torch.Tensor, invert: bool | None = None, id: IdData = FASHIONMNIST,
                    max_pixels: int = MAX_UPLOAD_PIXELS, max_bytes: int = MAX_UPLOAD_BYTES) -> torch.Tensor:
    """Any image file's bytes (or images.as_pixels' tensor) -> one model-ready tensor (1, C, S, S) in [-1, 1],
    by the checkpoint's rule.

    Decoded to the ID set's channels; the longer side resized to its size and the rest padded with the
    border's colour, so aspect is kept, as the training images were (images.fit_upload). `invert=None`
    inverts a grayscale upload when the ID set's backgrounds are dark and the upload's border is mostly
    light, so the object ends up bright on dark as in training; True/False force it (grayscale models
    only: a colour model sees its colours as they are). Problems raise ImageInputError.
    """
    auto = None if id.invert_uploads else False
    return fit_upload(data, id.size, id.channels, auto if invert is None else invert, max_pixels, max_bytes)
