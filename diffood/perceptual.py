"""Perceptual distance: LPIPS v0.1 (Zhang et al. 2018) with an ImageNet AlexNet backbone.

The backbone weights are resolved in order: torchvision's cache (or its download, when downloads are
allowed); the file named by $DIFFOOD_ALEXNET_WEIGHTS; the copy shipped in `diffood/assets/`
(torchvision's AlexNet conv weights, BSD-3-Clause, see assets/LICENSE-alexnet.md). With none of them
LPIPS is unavailable: scores that need it are left out, never computed on random weights.

Grayscale inputs are repeated to 3 channels. Inputs smaller than 32 px (AlexNet's smallest workable
size here) are padded to 32 with the background value -1, not resized, so pixels are compared as is.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from .datasets import download_allowed

SHIPPED_ALEXNET = Path(__file__).parent / "assets" / "alexnet_imagenet1k_v1_features.safetensors"
TORCHVISION_ALEXNET = "alexnet-owt-7be5be79.pth"
MIN_SIZE = 32
# torchvision `features.N` -> the `sliceK.N` LPIPS keeps it in
_SLICE_OF_FEATURE = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}


@dataclass(frozen=True)
class LPIPSStatus:
    available: bool
    source: str  # where the backbone came from, or why there is none

    def __str__(self) -> str:
        return f"LPIPS (AlexNet) from {self.source}" if self.available else f"LPIPS unavailable: {self.source}"


class PerceptualDistance(torch.nn.Module):
    """LPIPS distance per image pair; inputs in [-1, 1], shape (N, 1 or 3, H, W)."""

    def __init__(self, net: torch.nn.Module, status: LPIPSStatus):
        super().__init__()
        self.net, self.status = net, status

    @staticmethod
    def prepare(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h, w = x.shape[-2:]
        if h < MIN_SIZE or w < MIN_SIZE:
            ph, pw = max(0, MIN_SIZE - h), max(0, MIN_SIZE - w)
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=-1.0)
        return x

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        out = [self.net(self.prepare(a), self.prepare(b)).flatten() for a, b in zip(x.split(batch_size), y.split(batch_size))]
        return torch.cat(out).float()


def _features_into_lpips(model: torch.nn.Module, features: dict[str, torch.Tensor]) -> None:
    state = {}
    for key, value in features.items():
        _, n, kind = key.split(".")
        state[f"slice{_SLICE_OF_FEATURE[int(n)]}.{n}.{kind}"] = value
    model.net.load_state_dict(state, strict=True)


def _build(pnet_rand: bool):
    import lpips

    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=` argument
        warnings.simplefilter("ignore", UserWarning)
        return lpips.LPIPS(net="alex", version="0.1", pnet_rand=pnet_rand, verbose=False).eval()


def _from_safetensors(path: Path):
    from safetensors.torch import load_file

    model = _build(pnet_rand=True)
    _features_into_lpips(model, load_file(path))
    return model


def _torchvision_cached() -> bool:
    return (Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_ALEXNET).is_file()


def load_lpips(shipped: Path | None = SHIPPED_ALEXNET, allow_torchvision: bool = True) -> PerceptualDistance | LPIPSStatus:
    """The LPIPS net from the first backbone source that works, or an LPIPSStatus saying why none did."""
    tried = []
    if allow_torchvision and (_torchvision_cached() or download_allowed()):
        try:
            return PerceptualDistance(_build(pnet_rand=False), LPIPSStatus(True, "torchvision's ImageNet weights"))
        except Exception as e:  # offline download, corrupt cache
            tried.append(f"torchvision ({e})")
    env = os.environ.get("DIFFOOD_ALEXNET_WEIGHTS")
    candidates = ([("$DIFFOOD_ALEXNET_WEIGHTS", Path(env))] if env else []) + ([("the copy shipped with diffood", shipped)] if shipped else [])
    for label, path in candidates:
        if not path.is_file():
            tried.append(f"{label}: {path} not found")
            continue
        try:
            return PerceptualDistance(_from_safetensors(path), LPIPSStatus(True, f"{label} ({path.name})"))
        except Exception as e:  # wrong keys or shapes, corrupt file
            tried.append(f"{label}: {path} unusable ({e})")
    return LPIPSStatus(False, "no ImageNet AlexNet weights found; tried " + "; ".join(tried or ["nothing"]))


@lru_cache(maxsize=1)
def _resolved() -> PerceptualDistance | LPIPSStatus:
    """The backbone search runs once per process, found or not (the app asks on every rerun)."""
    return load_lpips()


@lru_cache(maxsize=4)
def get_lpips(device: str = "cpu") -> PerceptualDistance | None:
    """The LPIPS net on `device`, one per device (a copy of the one resolved on the CPU, which stays there:
    `Module.to` moves in place), or None when unavailable."""
    result = _resolved()
    return copy.deepcopy(result).to(device) if isinstance(result, PerceptualDistance) else None


def lpips_status() -> LPIPSStatus:
    result = _resolved()
    return result.status if isinstance(result, PerceptualDistance) else result
