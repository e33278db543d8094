"""Data specs: torchvision names, folders and archives of images, their splits, and bad data."""

import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from diffood.datasets import MIN_HELD_OUT, DataSpec, DataSpecError, load_split
from diffood.images import fit
from diffood.sets import IdData, load_images, load_user_image
from tests.conftest import DATA_DIR, needs_data


def shape_image(kind: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """A coloured disc or square on a dark background of another colour."""
    bg = tuple(int(v) for v in rng.integers(0, 60, 3))
    fg = tuple(int(v) for v in rng.integers(120, 256, 3))
    img = Image.new("RGB", (size, size), bg)
    a, b = sorted(rng.integers(4, size - 4, 2))
    b = max(b, a + 6)
    from PIL import ImageDraw

    draw = ImageDraw.Draw(img)
    (draw.ellipse if kind == "discs" else draw.rectangle)((a, a, b, b), fill=fg)
    return img


def stripe_image(rng: np.random.Generator, size: int = 32) -> Image.Image:
    """Diagonal coloured stripes: another kind of image altogether."""
    period = int(rng.integers(3, 8))
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    on = ((i + j) // period) % 2 == 0
    colour = rng.integers(0, 256, 3)
    arr = np.where(on[..., None], colour, 255 - colour).astype(np.uint8)
    return Image.fromarray(arr)


def write_shapes(folder, n_per_class: int = 30, seed: int = 0, size: int = 32):
    """A folder with one subfolder per class (discs, squares) of RGB PNGs."""
    rng = np.random.default_rng(seed)
    for kind in ("discs", "squares"):
        (folder / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            shape_image(kind, rng, size).save(folder / kind / f"{i:03d}.png")
    return folder


def write_stripes(folder, n: int = 24, seed: int = 1):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        stripe_image(rng).save(folder / f"stripes_{i:03d}.jpg", quality=95)
    return folder


def test_spec_checks_size_and_channels():
    with pytest.raises(DataSpecError, match="28-64"):
        DataSpec("mnist", image_size=100)
    with pytest.raises(DataSpecError, match="1 .* or 3"):
        DataSpec("mnist", channels=2)


def test_a_spec_that_is_neither_a_name_nor_a_path_is_one_line(tmp_path):
    with pytest.raises(DataSpecError, match="neither a known data set .* nor a folder"):
        load_split(DataSpec("no-such-set"), "train", tmp_path, False)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataSpecError, match="neither a folder nor a .zip"):
        load_split(DataSpec(str(tmp_path / "notes.txt")), "train", tmp_path, False)


def test_a_class_folder_splits_into_disjoint_seeded_parts(tmp_path):
    write_shapes(tmp_path / "shapes")
    spec = DataSpec(str(tmp_path / "shapes"), 32, 3)
    parts = {s: load_split(spec, s, tmp_path, False) for s in ("train", "val", "test")}
    assert parts["train"].classes == ("discs", "squares")
    assert [len(p.pixels) for p in parts.values()] == [48, 6, 6]  # a tenth each held out
    assert parts["val"].pixels.shape[1:] == (3, 32, 32) and parts["val"].pixels.dtype == torch.uint8
    keys = {s: {bytes(x.numpy()) for x in p.pixels} for s, p in parts.items()}
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    again = load_split(DataSpec(str(tmp_path / "shapes"), 32, 3), "val", tmp_path, False)
    assert torch.equal(again.pixels, parts["val"].pixels)  # same seed, same split
    other = load_split(DataSpec(str(tmp_path / "shapes"), 32, 3, split_seed=1), "val", tmp_path, False)
    assert not torch.equal(other.pixels, parts["val"].pixels)
    assert set(parts["train"].labels.tolist()) == {0, 1}


def test_a_zip_and_a_wrapping_folder_read_like_the_folder(tmp_path):
    write_shapes(tmp_path / "shapes")
    archive = tmp_path / "shapes.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted((tmp_path / "shapes").rglob("*.png")):
            z.write(p, f"shapes/{p.relative_to(tmp_path / 'shapes').as_posix()}")  # wrapped, as most archives are
    a = load_split(DataSpec(str(tmp_path / "shapes"), 32, 3), "train", tmp_path, False)
    b = load_split(DataSpec(str(archive), 32, 3), "train", tmp_path, False)
    assert torch.equal(a.pixels, b.pixels) and a.classes == b.classes


def test_a_folder_spec_is_recorded_without_the_machines_path(tmp_path):
    spec = DataSpec(str(tmp_path / "my-photos"), 32, 3)
    assert spec.recorded().source == "my-photos" and spec.name == "my-photos"
    assert DataSpec("data/my-photos").recorded().source == "data/my-photos"  # relative: as given
    write_shapes(tmp_path / "my-photos")  # found again under the data folder by its name
    assert len(load_split(spec.recorded(), "val", tmp_path, False).pixels) == 6


def test_bad_folders_get_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSpecError, match="is empty"):
        load_split(DataSpec(str(tmp_path / "empty")), "train", tmp_path, False)
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("not an image")
    with pytest.raises(DataSpecError, match="no images"):
        load_split(DataSpec(str(tmp_path / "texts")), "train", tmp_path, False)
    write_shapes(tmp_path / "few", n_per_class=10)
    with pytest.raises(DataSpecError, match=f"20 images; at least {10 * MIN_HELD_OUT}"):
        load_split(DataSpec(str(tmp_path / "few"), 32, 3), "train", tmp_path, False)
    (tmp_path / "broken").mkdir()
    for i in range(3):
        (tmp_path / "broken" / f"{i}.png").write_bytes(b"garbage")
    with pytest.raises(DataSpecError, match="none of its 3 images could be read"):
        load_split(DataSpec(str(tmp_path / "broken")), "train", tmp_path, False)


def test_mixed_sizes_and_modes_are_fitted_and_unreadable_files_listed(tmp_path):
    folder = write_shapes(tmp_path / "mixed", n_per_class=25)
    Image.new("L", (50, 20), 200).save(folder / "discs" / "gray-wide.png")
    Image.new("RGBA", (64, 64), (255, 0, 0, 128)).save(folder / "discs" / "rgba-big.png")
    (folder / "squares" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    images = load_split(DataSpec(str(folder), 32, 3), "all", tmp_path, False)
    assert images.pixels.shape == (52, 3, 32, 32)
    notes = " | ".join(images.notes)
    assert "skipped 1 unreadable" in notes and "squares/broken.png" in notes
    assert "resized 2 image(s) to 32 x 32" in notes and "converted 2 image(s) to RGB" in notes


def test_fit_keeps_aspect_and_pads_with_the_border_colour():
    x = torch.zeros(3, 20, 40)
    x[0] = 1.0  # a red 40 x 20 image
    y = fit(x, 32, 3)
    assert y.shape == (3, 32, 32) and torch.allclose(y[:, 0, 0], torch.tensor([1.0, 0, 0]))
    gray = fit(x, 32, 1)
    assert gray.shape == (1, 32, 32) and abs(float(gray[0, 16, 16]) - 0.299) < 1e-6


def test_rgb_uploads_stay_rgb_and_are_never_inverted():
    rgb = IdData.from_dict({"spec": {"source": "shapes", "image_size": 32, "channels": 3}, "name": "shapes",
                            "invert_uploads": False, "pixel_mean": [0.1] * 3, "pixel_std": [0.2] * 3})
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (250, 250, 250)).save(buf, format="PNG")
    x = load_user_image(buf.getvalue(), id=rgb)
    assert x.shape == (1, 3, 32, 32) and float(x.min()) > 0.9  # light stays light


def test_derived_sets_and_noise_follow_the_id_set(tmp_path):
    write_shapes(tmp_path / "shapes")
    data = IdData.from_dict({"spec": {"source": str(tmp_path / "shapes"), "image_size": 32, "channels": 3},
                             "name": "shapes", "pixel_mean": [0.1, 0.2, 0.3], "pixel_std": [0.1, 0.1, 0.1],
                             "invert_uploads": False, "default_ood": "shapes-vflip"})
    test = load_images("shapes", "test", 4, id=data)
    assert torch.equal(load_images("vflip", "test", 4, id=data), test.flip(-2))
    shuffled = load_images("shapes-shuffle", "test", 4, id=data)
    assert shuffled.shape == (4, 3, 32, 32) and not torch.equal(shuffled, test)
    noise = load_images("gaussian-noise", "test", 500, id=data).float() / 255
    assert noise.shape == (500, 3, 32, 32)
    assert torch.allclose(noise.mean(dim=(0, 2, 3)), torch.tensor([0.1, 0.2, 0.3]), atol=0.03)
    write_stripes(tmp_path / "stripes")
    assert load_images(str(tmp_path / "stripes"), "test", None, id=data).shape == (24, 3, 32, 32)


@needs_data
def test_the_fashionmnist_spec_gives_the_images_the_shipped_model_was_trained_and_evaluated_on():
    spec = DataSpec()
    val = load_split(spec, "val", DATA_DIR, False).pixels
    order = torch.randperm(60_000, generator=torch.Generator().manual_seed(20231118))
    import torchvision

    raw = torchvision.datasets.FashionMNIST(str(DATA_DIR), train=True).data
    assert torch.equal(val[:, 0], raw[order[:2000]])
    assert load_split(spec, "train", DATA_DIR, False).pixels.shape == (58_000, 1, 28, 28)
