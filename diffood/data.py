"""Datasets (ID FashionMNIST, OOD sets by name), the one preprocessing they all share, and user uploads.

Images travel as uint8 tensors of shape (N, 28, 28) until `to_model_input` maps them to the model's
range, float (N, 1, 28, 28) in [-1, 1]. Every set goes through that same function, so preprocessing
alone can never separate ID from OOD.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from safetensors.torch import load_file

from .errors import DataUnavailableError, ImageInputError

IMAGE_SIZE = 28
ID_DATASET = "fashionmnist"
FASHIONMNIST_TRAIN_SIZE = 60_000
VAL_SIZE = 2000  # held out of the FashionMNIST training set for z-score statistics, never trained on
_SPLIT_SEED = 20231118  # fixes the train/val split for every run, whatever the run's own seed
SAMPLES_PATH = Path(__file__).parent / "assets" / "samples.safetensors"
MAX_UPLOAD_PIXELS = 40_000_000
MAX_UPLOAD_BYTES = 50 * 1024 * 1024


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """Explicit argument > $DIFFOOD_DATA_DIR > ~/.cache/diffood/data."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get("DIFFOOD_DATA_DIR"):
        return Path(os.environ["DIFFOOD_DATA_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "diffood" / "data"


def download_allowed() -> bool:
    """Downloads are opt-in ($DIFFOOD_DOWNLOAD=1 or the CLI's --download): no default path goes online."""
    return os.environ.get("DIFFOOD_DOWNLOAD", "") not in ("", "0", "false", "no")


_TORCHVISION_SETS = {"fashionmnist": "FashionMNIST", "mnist": "MNIST", "kmnist": "KMNIST"}


def _torchvision_images(name: str, train: bool, data_dir: Path, download: bool) -> torch.Tensor:
    import torchvision

    cls_name = _TORCHVISION_SETS[name]
    try:
        ds = getattr(torchvision.datasets, cls_name)(str(data_dir), train=train, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found. You can use download=True ..."
        raise DataUnavailableError(
            f"{cls_name} is not in {data_dir} (expected torchvision's layout: "
            f"{data_dir / cls_name / 'raw'}/*-idx?-ubyte). Point DIFFOOD_DATA_DIR or --data-dir at a "
            f"folder that has it, or allow a download with --download / DIFFOOD_DOWNLOAD=1."
        ) from e
    except OSError as e:  # a download that could not reach the network
        raise DataUnavailableError(f"could not download {cls_name} into {data_dir}: {e}") from e
    return ds.data  # uint8 (N, 28, 28)


def _seeded_subset(images: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    """The first n of a seed-fixed permutation: same seed, same images; n=None keeps all, shuffled."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    return images[order[:n] if n is not None else order]


def _id_train_val(data_dir: Path, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    images = _torchvision_images(ID_DATASET, True, data_dir, download)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(_SPLIT_SEED))
    return images[order[VAL_SIZE:]], images[order[:VAL_SIZE]]


def _source(name: str, split: str, data_dir: Path, download: bool) -> torch.Tensor:
    if name == ID_DATASET:
        if split == "test":
            return _torchvision_images(name, False, data_dir, download)
        train, val = _id_train_val(data_dir, download)
        return {"train": train, "val": val}[split]
    if split != "test":
        raise ValueError(f"OOD set {name!r} has only a 'test' split")
    return _torchvision_images(name, False, data_dir, download)


def _synthetic(kind: str) -> Callable[[int, int], torch.Tensor]:
    def make(n: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        shape = (n, IMAGE_SIZE, IMAGE_SIZE)
        if kind == "gaussian":  # FashionMNIST's pixel mean and std, clipped
            x = 0.286 + 0.353 * torch.randn(shape, generator=g)
        else:
            x = torch.rand(shape, generator=g)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8)

    return make


def _transformed(transform: Callable[[torch.Tensor, int], torch.Tensor]) -> Callable[..., torch.Tensor]:
    def make(n: int, seed: int, data_dir: Path, download: bool) -> torch.Tensor:
        return transform(load_images(ID_DATASET, "test", n, seed, data_dir, download), seed)

    return make


def _patch_shuffle(images: torch.Tensor, seed: int, grid: int = 4) -> torch.Tensor:
    """Each image cut into grid x grid patches, put back in a random order (one order per image)."""
    n, p = len(images), IMAGE_SIZE // grid
    patches = images.reshape(n, grid, p, grid, p).permute(0, 1, 3, 2, 4).reshape(n, grid * grid, p, p)
    g = torch.Generator().manual_seed(seed + 1)
    order = torch.stack([torch.randperm(grid * grid, generator=g) for _ in range(n)])
    patches = patches[torch.arange(n)[:, None], order]
    return patches.reshape(n, grid, grid, p, p).permute(0, 1, 3, 2, 4).reshape(n, IMAGE_SIZE, IMAGE_SIZE)


# every OOD set the app and the CLI offer, by name
OOD_SETS: dict[str, str] = {
    "mnist": "MNIST handwritten digits (test split)",
    "kmnist": "Kuzushiji-MNIST (test split; downloads when allowed)",
    "fashionmnist-vflip": "FashionMNIST test images flipped upside down",
    "fashionmnist-hflip": "FashionMNIST test images mirrored left-right (near-OOD: most clothes are symmetric)",
    "fashionmnist-invert": "FashionMNIST test images with inverted intensities (dark clothes on a light background)",
    "fashionmnist-shuffle": "FashionMNIST test images cut into 4 x 4 patches and shuffled (local texture kept, shape lost)",
    "gaussian-noise": "Gaussian pixel noise with FashionMNIST's mean and std",
    "uniform": "uniform pixel noise",
}
_DERIVED = {
    "fashionmnist-vflip": _transformed(lambda x, seed: x.flip(-2)),
    "fashionmnist-hflip": _transformed(lambda x, seed: x.flip(-1)),
    "fashionmnist-invert": _transformed(lambda x, seed: 255 - x),
    "fashionmnist-shuffle": _transformed(_patch_shuffle),
}
_SYNTHETIC = {"gaussian-noise": _synthetic("gaussian"), "uniform": _synthetic("uniform")}


def load_images(
    name: str,
    split: str = "test",
    n: int | None = None,
    seed: int = 0,
    data_dir: str | Path | None = None,
    download: bool | None = None,
) -> torch.Tensor:
    """n images (uint8, N x 28 x 28) of a dataset, chosen by seed.

    `name` is the ID set ("fashionmnist", splits train/val/test) or a key of OOD_SETS. When the
    data folder lacks the set, the small sample bundle shipped with the package answers requests it
    covers (seed 0, n up to its size), so the app's default views work on a fresh clone offline.
    """
    if name in _SYNTHETIC:
        return _SYNTHETIC[name](n if n is not None else 1000, seed)
    root = resolve_data_dir(data_dir)
    download = download_allowed() if download is None else download
    if name in _DERIVED:
        return _DERIVED[name](n, seed, root, download)
    if name != ID_DATASET and name not in OOD_SETS:
        raise ValueError(f"unknown dataset {name!r}; choose {ID_DATASET!r} or one of {sorted(OOD_SETS)}")
    try:
        return _seeded_subset(_source(name, split, root, download), n, seed)
    except DataUnavailableError:
        bundled = _bundled(name, split, n, seed)
        if bundled is None:
            raise
        return bundled


def _bundled(name: str, split: str, n: int | None, seed: int) -> torch.Tensor | None:
    if seed != 0 or n is None or not SAMPLES_PATH.is_file():
        return None
    try:
        images = load_file(SAMPLES_PATH).get(f"{name}/{split}")
    except Exception as e:  # safetensors raises its own error type for a corrupt file
        raise DataUnavailableError(f"{name} is not in the data folder and the shipped sample {SAMPLES_PATH} is "
                                   f"unreadable ({str(e)[:200]}); reinstall diffood or point --data-dir at the data") from e
    return images[:n] if images is not None and n <= len(images) else None


def sample_bundle(data_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The tensors `samples.safetensors` ships: the seed-0 subsets the default views ask for
    (validation: enough for the default z-score statistics, so any sampler works offline)."""
    root = resolve_data_dir(data_dir)
    sets = {(ID_DATASET, "test"): 256, (ID_DATASET, "val"): 500, ("mnist", "test"): 256}
    return {f"{name}/{split}": _seeded_subset(_source(name, split, root, False), n, 0) for (name, split), n in sets.items()}


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) or float [0, 1] (N, 1, H, W) -> float (N, 1, 28, 28) in [-1, 1]."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    if x.dim() == 3:
        x = x[:, None]
    if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1) * 2 - 1


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Model range [-1, 1] -> [0, 1], for display and pixel-space errors."""
    return ((x + 1) / 2).clamp(0, 1)


def _to_gray01(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> float32 grayscale in [0, 1]; alpha is composited over white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            lo, hi = float(arr.min()), float(arr.max())
            return ((arr - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)
        scale = 65535.0 if arr.max() > 255 else 255.0
        return np.clip(arr / scale, 0, 1).astype(np.float32)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def load_user_image(
    data: bytes,
    invert: bool | None = None,
    max_pixels: int = MAX_UPLOAD_PIXELS,
    max_bytes: int = MAX_UPLOAD_BYTES,
) -> torch.Tensor:
    """Any image file's bytes -> one model-ready tensor (1, 1, 28, 28) in [-1, 1].

    EXIF orientation applied; first frame of an animation; alpha composited over white; any mode to
    grayscale; the longer side resized to 28 and the rest padded with background, so aspect is kept.
    `invert=None` inverts when the border is mostly light, so the object ends up bright on dark as
    in FashionMNIST; True/False force it. Problems raise ImageInputError.
    """
    if not data:
        raise ImageInputError("the file is empty")
    if len(data) > max_bytes:
        raise ImageInputError(f"the file is {len(data) / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.0f} MiB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageInputError(f"not a readable image ({type(e).__name__})") from e
    except Exception as e:  # Pillow's format plugins raise assorted errors on garbage headers
        raise ImageInputError(f"not a readable image ({e})") from e
    w, h = img.size
    if w * h > max_pixels:
        raise ImageInputError(f"the image is {w}x{h} = {w * h / 1e6:.0f} MP; the limit is {max_pixels / 1e6:.0f} MP")
    if w == 0 or h == 0:
        raise ImageInputError("the image has no pixels")
    try:
        img.seek(0)
        img = ImageOps.exif_transpose(img)
        img.load()
        gray = _to_gray01(img)
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated or corrupt pixel data
        raise ImageInputError(f"the image data is truncated or corrupt ({e})") from e
    x = torch.from_numpy(np.ascontiguousarray(gray))
    border = torch.cat([x[0], x[-1], x[:, 0], x[:, -1]])
    if invert if invert is not None else bool(border.mean() > 0.5):
        x = 1 - x
    x = x[None, None]
    scale = IMAGE_SIZE / max(x.shape[-2:])
    size = (max(1, round(x.shape[-2] * scale)), max(1, round(x.shape[-1] * scale)))
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    pad_h, pad_w = IMAGE_SIZE - size[0], IMAGE_SIZE - size[1]
    background = float(torch.cat([x[0, 0, 0], x[0, 0, -1], x[0, 0, :, 0], x[0, 0, :, -1]]).median())
    x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=background)
    return to_model_input(x)
