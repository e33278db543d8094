import io

import numpy as np
import pytest
import torch
from PIL import Image

from diffood.datasets import VAL_SIZE, DataSpecError, resolve_data_dir
from diffood.errors import DataUnavailableError, ImageInputError
from diffood.images import to_model_input
from diffood.sets import FASHIONMNIST, load_images, load_user_image
from tests.conftest import DATA_DIR, needs_data


def test_data_dir_resolution(monkeypatch, tmp_path):
    assert resolve_data_dir(tmp_path) == tmp_path
    monkeypatch.setenv("DIFFOOD_DATA_DIR", "/somewhere")
    assert str(resolve_data_dir()) == "/somewhere"
    monkeypatch.delenv("DIFFOOD_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert resolve_data_dir() == tmp_path / "diffood" / "data"


def test_missing_data_names_the_folder_and_layout(tmp_path):
    with pytest.raises(DataUnavailableError) as e:
        load_images("mnist", "test", 300, seed=1, data_dir=tmp_path)
    assert str(tmp_path) in str(e.value) and "MNIST/raw" in str(e.value) and "--download" in str(e.value)
    with pytest.raises(DataUnavailableError):
        load_images("kmnist", "test", 10, data_dir=tmp_path)


def test_unknown_set_and_split():
    with pytest.raises(DataSpecError, match="neither a known data set .* nor a folder"):
        load_images("cifar", "test", 3)
    with pytest.raises(ValueError, match="only a 'test' split"):
        load_images("mnist", "train", 3)


@needs_data
def test_subsets_are_deterministic_and_the_val_split_is_held_out():
    a = load_images("fashionmnist", "test", 50, seed=3)
    assert torch.equal(a, load_images("fashionmnist", "test", 50, seed=3))
    assert not torch.equal(a, load_images("fashionmnist", "test", 50, seed=4))
    assert torch.equal(load_images("fashionmnist", "test", 20, seed=3), a[:20])
    train, val = load_images("fashionmnist", "train"), load_images("fashionmnist", "val")
    assert len(val) == VAL_SIZE and len(train) == 60000 - VAL_SIZE
    train_keys = {bytes(x.numpy()) for x in train}
    assert not any(bytes(x.numpy()) in train_keys for x in val[:300])  # FashionMNIST has no duplicates here


@needs_data
@pytest.mark.parametrize("name", [n for n in FASHIONMNIST.ood_sets() if n != "kmnist"])
def test_every_offline_ood_set_loads_in_the_shared_shape(name):
    x = load_images(name, "test", 16, seed=0)
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.uint8
    y = to_model_input(x)
    assert y.shape == (16, 1, 28, 28) and y.min() >= -1 and y.max() <= 1


@needs_data
def test_flipped_sets_are_flips_of_the_id_test_images():
    x = load_images("fashionmnist", "test", 4, seed=2)
    assert torch.equal(load_images("fashionmnist-vflip", "test", 4, seed=2), x.flip(-2))
    assert torch.equal(load_images("fashionmnist-hflip", "test", 4, seed=2), x.flip(-1))
    assert torch.equal(load_images("fashionmnist-invert", "test", 4, seed=2), 255 - x)


@needs_data
def test_patch_shuffled_images_keep_their_patches_in_another_order():
    x = load_images("fashionmnist", "test", 3, seed=2)
    y = load_images("fashionmnist-shuffle", "test", 3, seed=2)
    patches = lambda a: sorted(p.flatten().tolist() for p in a.unfold(0, 7, 7).unfold(1, 7, 7).reshape(16, 7, 7))  # noqa: E731
    for a, b in zip(x[:, 0], y[:, 0]):
        assert patches(a) == patches(b) and not torch.equal(a, b)
    assert torch.equal(y, load_images("fashionmnist-shuffle", "test", 3, seed=2))


def test_a_corrupt_sample_bundle_is_one_clear_error(tmp_path, monkeypatch):
    from diffood import samples

    bad = tmp_path / "samples.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    monkeypatch.setattr(samples, "SAMPLES_PATH", bad)
    with pytest.raises(DataUnavailableError, match="shipped sample .* is unreadable"):
        load_images("mnist", "test", 8, seed=0, data_dir=tmp_path)


@needs_data
def test_the_shipped_bundle_stands_in_exactly_when_data_is_missing(tmp_path):
    real = load_images("mnist", "test", 64, seed=0, data_dir=DATA_DIR)
    assert torch.equal(load_images("mnist", "test", 64, seed=0, data_dir=tmp_path), real)
    real_val = load_images("fashionmnist", "val", 32, seed=0, data_dir=DATA_DIR)
    assert torch.equal(load_images("fashionmnist", "val", 32, seed=0, data_dir=tmp_path), real_val)
    with pytest.raises(DataUnavailableError):  # beyond the bundle: the real error
        load_images("mnist", "test", 64, seed=1, data_dir=tmp_path)


# --- uploads ---------------------------------------------------------------------------------

def _png(img: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _shirt(size=(40, 60), fg=255, bg=0, mode="L") -> Image.Image:
    img = Image.new(mode, size, bg)
    img.paste(fg, (10, 10, size[0] - 10, size[1] - 10))
    return img


def test_a_plain_image_becomes_one_model_ready_tensor():
    x = load_user_image(_png(_shirt()))
    assert x.shape == (1, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    # aspect kept: 40x60 -> about 19x28, padded left and right with background
    assert (x[0, 0, :, 0] == -1).all() and (x[0, 0, :, -1] == -1).all() and x[0, 0, 14, 14] > 0.9


def test_light_backgrounds_are_inverted_unless_told_not_to():
    dark_on_light = _png(_shirt(fg=0, bg=255))
    x = load_user_image(dark_on_light)
    assert x[0, 0, 0, 0] == -1 and x[0, 0, 14, 14] > 0.9
    y = load_user_image(dark_on_light, invert=False)
    assert y[0, 0, 0, 0] == 1 and y[0, 0, 14, 14] < -0.9


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P", "CMYK", "I;16", "I", "F", "1"])
def test_any_mode_is_read(mode):
    base = _shirt(size=(30, 30)).convert("RGB")
    img = base.convert(mode) if mode not in ("I;16", "I", "F") else Image.fromarray(
        (np.asarray(base.convert("L"), dtype=np.float32) * (257 if mode != "F" else 1 / 255)).astype(
            {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
    fmt = {"CMYK": "JPEG", "F": "TIFF", "I": "TIFF"}.get(mode, "PNG")
    x = load_user_image(_png(img, fmt))
    assert x.shape == (1, 1, 28, 28)
    assert x[0, 0, 14, 14] > 0.8 and x[0, 0, 1, 1] < -0.8, mode


def test_alpha_is_composited_and_exif_orientation_applied():
    rgba = Image.new("RGBA", (30, 30), (0, 0, 0, 0))
    rgba.paste((0, 0, 0, 255), (8, 8, 22, 22))  # a black square on transparency: dark on white
    x = load_user_image(_png(rgba))
    assert x[0, 0, 0, 0] == -1 and x[0, 0, 14, 14] > 0.9
    tall = _shirt(size=(40, 80))  # a 20 x 60 bright bar, upright
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees: the bar lies flat
    x = load_user_image(_png(tall.convert("RGB"), "JPEG", exif=exif.tobytes()))[0, 0]
    assert (x[14] > 0).sum() > 15 and (x[:, 14] > 0).sum() < 10


def test_animated_images_use_the_first_frame():
    frames = [_shirt(size=(28, 28)), Image.new("L", (28, 28), 0)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    x = load_user_image(buf.getvalue())
    assert x[0, 0, 14, 14] > 0.9


def test_bad_uploads_raise_our_error():
    with pytest.raises(ImageInputError, match="empty"):
        load_user_image(b"")
    with pytest.raises(ImageInputError, match="not a readable image"):
        load_user_image(b"this is plain text, not an image" * 10)
    png = _png(Image.effect_noise((64, 64), 50).convert("L"))
    with pytest.raises(ImageInputError, match="truncated or corrupt"):
        load_user_image(png[: len(png) // 2])
    with pytest.raises(ImageInputError, match="limit"):
        load_user_image(_png(Image.new("L", (200, 200))), max_pixels=10_000)
    with pytest.raises(ImageInputError, match="MiB"):
        load_user_image(b"x" * 2000, max_bytes=1000)


def test_decompression_bombs_are_refused_before_decoding():
    # a 30000 x 30000 PNG of zeros compresses to ~1 MB but would decode to 900 MB
    bomb = _png(Image.new("1", (30000, 30000)))
    assert len(bomb) < 2_000_000
    with pytest.raises(ImageInputError):
        load_user_image(bomb)
