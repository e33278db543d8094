"""Images by name for a checkpoint's ID set: its splits, OOD sets (other data sets, folders, transforms of the
ID test images, noise), the one preprocessing they share, and user uploads.

Images travel as uint8 tensors (N, C, S, S), fitted to the ID set's size and channels, until
`to_model_input` maps them to the model's range [-1, 1]. Every set goes through the same fitting, so
preprocessing alone can never separate ID from OOD.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from safetensors.torch import load_file

from .datasets import TORCHVISION, DataSpec, DataSpecError, fit, load_split
from .errors import DataUnavailableError, ImageInputError

SAMPLES_PATH = Path(__file__).parent / "assets" / "samples.safetensors"
MAX_UPLOAD_PIXELS = 40_000_000
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
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
    from .datasets import describe

    return IdData.from_dict({"spec": asdict(spec.recorded()), **describe(spec, train), "default_ood": default_ood(spec)})


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


def _seeded_subset(images: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    """The first n of a seed-fixed permutation: same seed, same images; n=None keeps all, shuffled."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    return images[order[:n] if n is not None else order]


def _noise(kind: str, n: int, seed: int, id: IdData) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
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
    (its test images transformed), `gaussian-noise`, `uniform`, a torchvision name (its test split) or a
    folder / .zip of images (all of them). When the data folder lacks a set, the small sample bundle
    shipped with the package answers requests it covers (seed 0, n up to its size), so the default views
    of the shipped models work on a fresh clone offline.
    """
    name = id.resolve(name)
    if name in ("gaussian-noise", "uniform"):
        return _noise(name, n if n is not None else 1000, seed, id)
    root = resolve_data_dir(data_dir)
    download = download_allowed() if download is None else download
    prefix, _, kind = name.rpartition("-")
    if prefix == id.name and kind in _TRANSFORM_FNS:
        return _TRANSFORM_FNS[kind](load_images(id.name, "test", n, seed, data_dir, download, id), seed)
    if name in (id.name, id.spec.source):
        spec = id.spec
    else:
        if split != "test":
            raise ValueError(f"OOD set {name!r} has only a 'test' split")
        spec = replace(id.spec, source=name)
        split = "test" if spec.is_torchvision else "all"
    try:
        return _seeded_subset(load_split(spec, split, root, download).pixels, n, seed)
    except (DataUnavailableError, DataSpecError):
        bundled = _bundled(spec.name, "test" if split == "all" else split, n, seed, id)
        if bundled is None:
            raise
        return bundled


def _bundled(name: str, split: str, n: int | None, seed: int, id: IdData) -> torch.Tensor | None:
    if seed != 0 or n is None or not SAMPLES_PATH.is_file() or (id.size, id.channels) != (28, 1):
        return None
    try:
        images = load_file(SAMPLES_PATH).get(f"{name}/{split}")
    except Exception as e:  # safetensors raises its own error type for a corrupt file
        raise DataUnavailableError(f"{name} is not in the data folder and the shipped sample {SAMPLES_PATH} is "
                                   f"unreadable ({str(e)[:200]}); reinstall diffood or point --data-dir at the data") from e
    if images is None or n > len(images):
        return None
    return images[:n, None] if images.dim() == 3 else images[:n]


# what samples.safetensors ships: the seed-0 subsets the shipped models' default views ask for (validation:
# enough for the default z-score statistics, so any sampler works offline)
BUNDLE = {("fashionmnist", "test"): 256, ("fashionmnist", "val"): 500, ("mnist", "test"): 256, ("mnist", "val"): 500}


def sample_bundle(data_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The tensors `samples.safetensors` ships (N x 28 x 28 each)."""
    root = resolve_data_dir(data_dir)
    out = {}
    for (name, split), n in BUNDLE.items():
        images = load_split(DataSpec(name), split, root, False).pixels
        out[f"{name}/{split}"] = _seeded_subset(images, n, 0)[:, 0]
    return out


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, S, S) or float [0, 1] -> float in [-1, 1]; (N, S, S) gains its channel axis."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    if x.dim() == 3:
        x = x[:, None]
    return x.clamp(0, 1) * 2 - 1


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Model range [-1, 1] -> [0, 1], for display and pixel-space errors."""
    return ((x + 1) / 2).clamp(0, 1)


def _pillow_to01(img: Image.Image, channels: int) -> np.ndarray:
    """Any Pillow mode -> float32 (H, W) grayscale or (H, W, 3) RGB in [0, 1]; alpha composited over white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo if hi > lo else 1.0)
        else:
            arr = np.clip(arr / (65535.0 if arr.max() > 255 else 255.0), 0, 1)
        arr = arr.astype(np.float32)
        return arr if channels == 1 else np.repeat(arr[..., None], 3, axis=-1)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0


def decode_image(data: bytes, channels: int = 1, max_pixels: int = MAX_UPLOAD_PIXELS,
                 max_bytes: int = MAX_UPLOAD_BYTES) -> torch.Tensor:
    """An image file's bytes -> float (channels, H, W) in [0, 1]: EXIF orientation applied, first frame
    of an animation, alpha composited over white, any mode converted. Problems raise ImageInputError."""
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
        arr = _pillow_to01(img, channels)
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated or corrupt pixel data
        raise ImageInputError(f"the image data is truncated or corrupt ({e})") from e
    x = torch.from_numpy(np.ascontiguousarray(arr))
    return x[None] if x.dim() == 2 else x.permute(2, 0, 1).contiguous()


def load_user_image(data: bytes, invert: bool | None = None, id: IdData = FASHIONMNIST,
                    max_pixels: int = MAX_UPLOAD_PIXELS, max_bytes: int = MAX_UPLOAD_BYTES) -> torch.Tensor:
    """Any image file's bytes -> one model-ready tensor (1, C, S, S) in [-1, 1], by the checkpoint's rule.

    Decoded (`decode_image`) to the ID set's channels; the longer side resized to its size and the rest
    padded with the border's colour, so aspect is kept (`datasets.fit`, as the training images were).
    `invert=None` inverts a grayscale upload when the ID set's backgrounds are dark and the upload's border
    is mostly light, so the object ends up bright on dark as in training; True/False force it (grayscale
    models only: a colour model sees its colours as they are). Problems raise ImageInputError.
    """
    x = decode_image(data, id.channels, max_pixels, max_bytes)
    if id.channels == 1:
        border = torch.cat([x[0, 0], x[0, -1], x[0, :, 0], x[0, :, -1]])
        auto = id.invert_uploads and bool(border.mean() > 0.5)
        if invert if invert is not None else auto:
            x = 1 - x
    return to_model_input(fit(x, id.size, id.channels)[None])
