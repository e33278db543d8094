"""The ID set as a spec: a torchvision name or a folder / .zip of images, at one size and channel count.

`DataSpec` is what training is told and what a checkpoint records. `load_split` turns it into uint8
images (N, C, S, S), every one through the same `fit` (aspect kept, padded with the border's colour),
and splits them by a fixed seed: torchvision sets hold their validation images out of the training
split and keep their test split; a folder holds out a validation and a test part of its own.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import DataUnavailableError, DiffoodError, ImageInputError
from .images import GRAY_MODES, decode_image, fit, image_mode, to_uint8
from .inputs import IMAGE_SUFFIXES, InputError, is_image_name, scan_folder, source_entries
from .paths import from_env, user_cache

SPLIT_SEED = 20231118  # fixes the train/val split for every run, whatever the run's own seed
VAL_SIZE = 2000  # held out of training for z-score statistics, never trained on
MIN_HELD_OUT = 4  # a folder needs at least this many validation and test images (and twice as many to train)
SIZES = range(28, 65)
CHANNELS = (1, 3)


class DataSpecError(DiffoodError):
    """A data spec that names nothing usable, or a folder that cannot make a data set."""


@dataclass(frozen=True)
class TorchvisionSet:
    cls: str
    channels: int
    split_arg: bool = False  # SVHN takes split="train"/"test" rather than train=True/False


TORCHVISION = {
    "fashionmnist": TorchvisionSet("FashionMNIST", 1),
    "mnist": TorchvisionSet("MNIST", 1),
    "kmnist": TorchvisionSet("KMNIST", 1),
    "cifar10": TorchvisionSet("CIFAR10", 3),
    "cifar100": TorchvisionSet("CIFAR100", 3),
    "svhn": TorchvisionSet("SVHN", 3, split_arg=True),
}


@dataclass(frozen=True)
class DataSpec:
    """An image set: `source` is a torchvision name (TORCHVISION) or a path to a folder or .zip of images
    (flat or one subfolder per class). Images are fitted to `image_size` px and `channels` (1 or 3)."""

    source: str = field(default="fashionmnist", metadata={
        "help": f"the ID set: {', '.join(TORCHVISION)}, or a folder or .zip of images", "flags": ("--data",)})
    image_size: int = field(default=28, metadata={"help": "images are fitted to this many px (28-64)"})
    channels: int = field(default=1, metadata={"help": "1 grayscale, 3 RGB", "choices": CHANNELS})
    val_size: int = field(default=VAL_SIZE, metadata={
        "help": "validation images held out (folders: at most this, a tenth of the images when that is fewer)"})
    split_seed: int = field(default=SPLIT_SEED, metadata={"help": "fixes which images are held out"})

    def __post_init__(self):
        if self.image_size not in SIZES:
            raise DataSpecError(f"image size {self.image_size}: choose {SIZES.start}-{SIZES.stop - 1} px")
        if self.channels not in CHANNELS:
            raise DataSpecError(f"channels {self.channels}: choose 1 (grayscale) or 3 (RGB)")

    @property
    def is_torchvision(self) -> bool:
        return self.source.lower() in TORCHVISION

    @property
    def name(self) -> str:
        """Short name: the torchvision name, or the folder's / archive's name without its suffix."""
        if self.is_torchvision:
            return self.source.lower()
        return Path(self.source.rstrip("/\\")).stem or "images"

    def recorded(self) -> "DataSpec":
        """The spec as a checkpoint stores it: a relative path as given, an absolute one by its name only."""
        if self.is_torchvision or not Path(self.source).is_absolute():
            return self
        return DataSpec(Path(self.source).name, self.image_size, self.channels, self.val_size, self.split_seed)

    @classmethod
    def from_dict(cls, d: dict) -> "DataSpec":
        return cls(**d)


@dataclass(frozen=True)
class Images:
    """A decoded image set: uint8 (N, C, S, S), the class of each image (-1: none) and the class names."""

    pixels: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=(), compare=False)  # what was skipped, resized or converted


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """Explicit argument > $DIFFOOD_DATA_DIR > ~/.cache/diffood/data."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    return from_env("DIFFOOD_DATA_DIR", "data")


def download_allowed() -> bool:
    """Downloads are opt-in ($DIFFOOD_DOWNLOAD=1 or the CLI's --download): no default path goes online."""
    return os.environ.get("DIFFOOD_DOWNLOAD", "") not in ("", "0", "false", "no")


def seeded_order(size: int, n: int | None, seed: int) -> torch.Tensor:
    """The positions of the first n of a seed-fixed permutation of `size` items (n=None: all of them)."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    return order[:n] if n is not None else order


def seeded_subset(images: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    """The first n of a seed-fixed permutation: same seed, same images; n=None keeps all, shuffled."""
    return images[seeded_order(len(images), n, seed)]


# --- torchvision sets ----------------------------------------------------------------------------
def _torchvision(name: str, train: bool, data_dir: Path, download: bool) -> Images:
    import torchvision

    tv = TORCHVISION[name]
    cls = getattr(torchvision.datasets, tv.cls)
    try:
        if tv.split_arg:
            ds = cls(str(data_dir / tv.cls), split="train" if train else "test", download=download)
        else:
            ds = cls(str(data_dir), train=train, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found. You can use download=True ..."
        raise DataUnavailableError(
            f"{tv.cls} is not in {data_dir} (expected torchvision's layout, as {data_dir / tv.cls / 'raw'} for the "
            f"MNIST family). Point DIFFOOD_DATA_DIR or "
            f"--data-dir at a folder that has it, or allow a download with --download / DIFFOOD_DOWNLOAD=1."
        ) from e
    except OSError as e:  # a download that could not reach the network
        raise DataUnavailableError(f"could not download {tv.cls} into {data_dir}: {e}") from e
    pixels = torch.as_tensor(np.asarray(ds.data))
    if pixels.dim() == 3:
        pixels = pixels[:, None]
    elif pixels.shape[-1] == 3:  # CIFAR keeps (N, H, W, C)
        pixels = pixels.permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor(np.asarray(getattr(ds, "targets", None) if hasattr(ds, "targets") else ds.labels))
    classes = tuple(getattr(ds, "classes", None) or (str(i) for i in range(10)))
    return Images(pixels, labels.long(), classes)


def fetch(spec: DataSpec, data_dir: Path) -> None:
    """Download a torchvision set's train and test splits into `data_dir` (torchvision's layout): only
    when asked, as the dashboard's button and `--download` do. Problems raise DataUnavailableError."""
    if not spec.is_torchvision:
        raise DataSpecError(f"{spec.source} is not a torchvision set, so there is nothing to download")
    for train in (True, False):
        _torchvision(spec.source.lower(), train, data_dir, download=True)


# --- folders and archives ------------------------------------------------------------------------
def _folder(path: Path, size: int, channels: int) -> Images:
    """Every image in a folder or .zip (inputs.source_entries), fitted; one subfolder per class gives labels."""
    names, pixels, bad, others, resized, converted = [], [], [], 0, 0, 0
    try:
        entries, scan = source_entries(path)
        for e in entries:
            if not is_image_name(e.relative):
                others += 1
                continue
            try:
                if e.error:
                    raise ImageInputError(e.error)
                x = decode_image(e.data, channels)
            except DiffoodError as err:
                bad.append(f"{e.relative} ({err})")
                continue
            resized += tuple(x.shape[-2:]) != (size, size)
            converted += image_mode(e.data) not in (GRAY_MODES if channels == 1 else ("RGB",))
            names.append(e.relative)
            pixels.append(to_uint8(fit(x, size, channels)))
    except InputError as e:
        raise DataSpecError(str(e)) from e
    if not pixels and not bad:
        if not others:
            raise DataSpecError(f"{path} is empty")
        raise DataSpecError(f"{path} holds {others} files and no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if not pixels:
        raise DataSpecError(f"{path}: none of its {len(bad)} images could be read (first: {bad[0]})")
    parts = [n.split("/") for n in names]
    while len({p[0] for p in parts}) == 1 and all(len(p) > 1 for p in parts):  # a wrapping folder, as in most archives
        parts = [p[1:] for p in parts]
    tops = {p[0] for p in parts}
    top = sorted(tops) if len(tops) > 1 and all(len(p) == 2 for p in parts) else []  # one subfolder per class
    notes = scan.notes() if scan else []
    if bad:
        notes.append(f"{path.name}: skipped {len(bad)} unreadable file(s): " + "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""))
    if resized:
        notes.append(f"{path.name}: resized {resized} image(s) to {size} x {size} (aspect kept, padded)")
    if converted:
        notes.append(f"{path.name}: converted {converted} image(s) to {'grayscale' if channels == 1 else 'RGB'}")
    labels = [top.index(p[0]) if top else -1 for p in parts]
    return Images(torch.stack(pixels), torch.tensor(labels), tuple(top), tuple(notes))


@functools.lru_cache(maxsize=8)
def _folder_cached(path: str, signature: tuple, size: int, channels: int) -> Images:
    return _folder(Path(path), size, channels)


def _signature(path: Path) -> tuple:
    """Changes when the folder or archive does: re-read then."""
    if path.is_file():
        s = path.stat()
        return (s.st_size, s.st_mtime_ns)
    try:
        files = scan_folder(path).files
    except InputError as e:
        raise DataSpecError(str(e)) from e
    stats = []
    for p in files:
        try:
            s = p.stat()
            stats.append((p.as_posix(), s.st_size, s.st_mtime_ns))
        except OSError:
            continue
    return (len(stats), hash(tuple(stats)))


def _locations_path() -> Path:
    return user_cache("data-locations.json")


def known_locations() -> dict[str, str]:
    """{recorded source: absolute path} of the folder sets trained on this machine."""
    try:
        found = json.loads(_locations_path().read_text())
        return found if isinstance(found, dict) else {}
    except (OSError, ValueError):
        return {}


def remember_location(spec: DataSpec) -> None:
    """Note on this machine where a folder spec given by an absolute path lives: a checkpoint records the
    folder's name only (nothing of the machine), and later commands here find the folder again by it."""
    if spec.is_torchvision or not Path(spec.source).is_absolute():
        return
    found = {**known_locations(), spec.recorded().source: str(Path(spec.source).resolve())}
    path = _locations_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(found, indent=2))
        os.replace(tmp, path)
    except OSError:  # a read-only home: the data folder is then found by --data-dir alone
        pass


def locate(spec: DataSpec, data_dir: Path) -> Path:
    """Where a folder spec's images are: the path as given, else under the data folder by name, else where
    this machine trained on a folder of that name (remember_location)."""
    known = known_locations().get(spec.source)
    candidates = [Path(spec.source).expanduser(), data_dir / spec.source, data_dir / Path(spec.source).name]
    for candidate in candidates + ([Path(known)] if known else []):
        if candidate.is_dir() or (candidate.is_file() and candidate.suffix.lower() == ".zip"):
            return candidate
    given = Path(spec.source).expanduser()
    if given.exists():
        raise DataSpecError(f"{spec.source} is neither a folder nor a .zip archive")
    raise DataSpecError(
        f"{spec.source!r} is neither a known data set ({', '.join(TORCHVISION)}) nor a folder or .zip "
        f"(looked in {given} and {data_dir / Path(spec.source).name}); pass --data-dir with the folder that holds "
        f"it, or set DIFFOOD_DATA_DIR")


def read_all(spec: DataSpec, train: bool, data_dir: Path, download: bool) -> Images:
    """Every image of a spec's source (torchvision: its train or test split), fitted to the spec."""
    if spec.is_torchvision:
        raw = _torchvision(spec.source.lower(), train, data_dir, download)
        if raw.pixels.shape[1:] == (spec.channels, spec.image_size, spec.image_size):
            return raw
        fitted = torch.stack([to_uint8(fit(x.float() / 255, spec.image_size, spec.channels)) for x in raw.pixels])
        return Images(fitted, raw.labels, raw.classes)
    try:
        path = locate(spec, data_dir)
        return _folder_cached(str(path.resolve()), _signature(path), spec.image_size, spec.channels)
    except OSError as e:  # a folder we may not enter, a link we may not follow
        raise DataSpecError(f"{spec.source} cannot be read ({e.strerror or e})") from e


def held_out(spec: DataSpec, n: int) -> int:
    """Validation (and, for folders, test) images a source of n images holds out."""
    if spec.is_torchvision:
        return spec.val_size
    k = min(spec.val_size, n // 10)
    if k < MIN_HELD_OUT or n - 2 * k < 2 * MIN_HELD_OUT:
        need = 10 * MIN_HELD_OUT
        raise DataSpecError(f"{spec.source} has {n} images; at least {need} are needed (a tenth each for "
                            f"validation and test, at least {MIN_HELD_OUT} each, the rest to train)")
    return k


def load_split(spec: DataSpec, split: str, data_dir: Path, download: bool) -> Images:
    """The spec's train, val or test images (uint8, N x C x S x S), split by `spec.split_seed`.

    Torchvision sets: val is held out of the train split, test is the test split. Folders: a seeded
    permutation gives val, then test, then train. `split="all"` is every image (an OOD folder)."""
    if split not in ("train", "val", "test", "all"):
        raise ValueError(f"unknown split {split!r}")
    if spec.is_torchvision:
        if split == "test":
            return read_all(spec, False, data_dir, download)
        images = read_all(spec, True, data_dir, download)
        if split == "all":
            return images
        order = torch.randperm(len(images.pixels), generator=torch.Generator().manual_seed(spec.split_seed))
        k = held_out(spec, len(order))
        pick = order[:k] if split == "val" else order[k:]
    else:
        images = read_all(spec, True, data_dir, download)
        if split == "all":
            return images
        order = torch.randperm(len(images.pixels), generator=torch.Generator().manual_seed(spec.split_seed))
        k = held_out(spec, len(order))
        pick = {"val": order[:k], "test": order[k : 2 * k], "train": order[2 * k :]}[split]
    return Images(images.pixels[pick], images.labels[pick], images.classes, images.notes)


def describe(spec: DataSpec, train: Images) -> dict:
    """What a checkpoint records of its training data besides the spec: how many, class names, per-channel
    pixel mean and std (the noise OOD sets use them), and whether ID backgrounds are dark, which decides
    whether light-background uploads are inverted (grayscale only: a colour model sees colours as they are)."""
    x = train.pixels.float() / 255
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)
    dark = bool(border.mean() < 0.5)
    return {
        "name": spec.name,
        "train_images": len(x),
        "classes": list(train.classes),
        "pixel_mean": [round(float(v), 3) for v in x.mean(dim=(0, 2, 3))],
        "pixel_std": [round(float(v), 3) for v in x.std(dim=(0, 2, 3))],
        "invert_uploads": spec.channels == 1 and dark,
    }
