"""One image: decoded from a file's bytes, fitted to a model's size and channels, mapped to its range.

Every image diffood reads (training sets, OOD sets, uploads) goes through `decode_image` and `fit`, so
preprocessing alone can never separate ID from OOD. Images travel as uint8 (N, C, S, S) until
`to_model_input` maps them to the model's range [-1, 1].
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageInputError

MAX_UPLOAD_PIXELS = 40_000_000
MAX_UPLOAD_BYTES = 50 * 1024 * 1024  # one image file; archives have their own limits (inputs.py)
GRAY_MODES = ("1", "L", "I", "I;16", "F")


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


def image_mode(data: bytes) -> str:
    """The Pillow mode an image file decodes to (only its header is read)."""
    return Image.open(io.BytesIO(data)).mode


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


def fit(x: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """float (C, H, W) in [0, 1] -> (channels, size, size): colour converted (ITU-R 601 luma), longer
    side resized to `size` and the rest padded with the border's median colour, so aspect is kept."""
    if x.shape[0] != channels:
        if channels == 1:
            x = (x * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0, keepdim=True) if x.shape[0] == 3 else x[:1]
        else:
            x = x[:1].expand(3, -1, -1)
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x.clamp(0, 1)
    scale = size / max(h, w)
    new = (max(1, round(h * scale)), max(1, round(w * scale)))
    x = F.interpolate(x[None], size=new, mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)
    pad_h, pad_w = size - new[0], size - new[1]
    if pad_h or pad_w:
        border = torch.cat([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], dim=1)
        background = border.median(dim=1).values
        canvas = background[:, None, None].expand(-1, size, size).clone()
        canvas[:, pad_h // 2 : pad_h // 2 + new[0], pad_w // 2 : pad_w // 2 + new[1]] = x
        x = canvas
    return x


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


def to_png(image: torch.Tensor) -> bytes:
    """uint8 (C, S, S) -> PNG bytes (grayscale or RGB)."""
    array = image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, S, S) or float [0, 1] -> float in [-1, 1]; (N, S, S) gains its channel axis."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    if x.dim() == 3:
        x = x[:, None]
    return x.clamp(0, 1) * 2 - 1


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Model range [-1, 1] -> [0, 1], for display and pixel-space errors."""
    return ((x + 1) / 2).clamp(0, 1)


def as_pixels(item, channels: int) -> torch.Tensor:
    """An in-memory image (PIL image, array or tensor: H x W, H x W x C or C x H x W; uint8, or floats in
    [0, 1]) -> float (C, H, W) in [0, 1], as decode_image gives a file's: no encoding on the way."""
    if isinstance(item, Image.Image):
        arr = _pillow_to01(item, channels)
    else:
        a = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
        if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
            a = a.transpose(1, 2, 0)  # C x H x W -> H x W x C
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)) or a.size == 0:
            raise ValueError(f"shape {a.shape}: expected H x W, H x W x C or C x H x W")
        if a.dtype == np.uint8 or (a.ndim == 3 and a.shape[-1] == 4):  # Pillow converts modes and alpha
            u8 = a if a.dtype == np.uint8 else (np.clip(a.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
            arr = _pillow_to01(Image.fromarray(u8), channels)
        elif np.issubdtype(a.dtype, np.number) or a.dtype == bool:
            arr = np.clip(a.astype(np.float32), 0, 1)
        else:
            raise ValueError(f"dtype {a.dtype}: expected uint8 or floats in [0, 1]")
    x = torch.from_numpy(np.ascontiguousarray(arr))
    return x[None] if x.dim() == 2 else x.permute(2, 0, 1).contiguous()


def fit_upload(data: bytes | torch.Tensor, size: int, channels: int, invert: bool,
               max_pixels: int = MAX_UPLOAD_PIXELS, max_bytes: int = MAX_UPLOAD_BYTES) -> torch.Tensor:
    """An uploaded file's bytes (or an image as_pixels gave) -> one model-ready tensor (1, C, S, S) in [-1, 1]:
    decoded, inverted when `invert` (grayscale only) or, with `invert=None`, when its border is mostly light,
    then fitted."""
    x = decode_image(data, channels, max_pixels, max_bytes) if isinstance(data, bytes) else data
    if channels == 1:
        border = torch.cat([x[0, 0], x[0, -1], x[0, :, 0], x[0, :, -1]])
        if invert if invert is not None else bool(border.mean() > 0.5):
            x = 1 - x
    return to_model_input(fit(x, size, channels)[None])
