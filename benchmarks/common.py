"""Helpers the benchmark scripts share: argument defaults, image sets, a timer, table output."""

from __future__ import annotations

import argparse
import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch

from diffood.images import to_model_input
from diffood.sets import load_images


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--checkpoint", help="default: the shipped model")
    p.add_argument("--device", help="default: cuda if present, else cpu")
    p.add_argument("--data-dir", help="torchvision data folder (default $DIFFOOD_DATA_DIR)")
    p.add_argument("--out", help="CSV to write (default benchmarks/results/<script>-<device>.csv)")
    return p


def id_and_ood(n: int, data_dir: str | None, device, ood: str = "mnist") -> tuple[torch.Tensor, torch.Tensor]:
    x_id = to_model_input(load_images("fashionmnist", "test", n, 0, data_dir)).to(device)
    x_ood = to_model_input(load_images(ood, "test", n, 0, data_dir)).to(device)
    return x_id, x_ood


@contextmanager
def timer(device):
    """Wall time of the block, synchronising CUDA so queued kernels are counted."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    sync()
    box = {"s": 0.0}
    start = time.perf_counter()
    yield box
    sync()
    box["s"] = time.perf_counter() - start


def cpu_model() -> str:
    """The CPU's model name and the flags that decide its precision (lscpu's view, from /proc/cpuinfo)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name or platform.machine()} ({' '.join(shown) or 'no AVX2'})"


def machine(device) -> str:
    d = torch.device(device)
    if d.type == "cuda":
        return torch.cuda.get_device_name(d)
    return f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def unet_gflop(model, device) -> float:
    """GFLOP of one network call on one 28 x 28 image (torch's FLOP counter: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = getattr(model, "_orig_mod", model)  # counted eagerly; compiled or not, the same arithmetic
    x = torch.zeros((1, 1, 28, 28), device=device, dtype=next(model.parameters()).dtype)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x, torch.zeros(1, dtype=torch.long, device=device))
    return counter.get_total_flops() / 1e9


def report(rows: list[dict], name: str, device, out: str | None) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    path = Path(out) if out else Path(__file__).parent / "results" / f"{name}-{torch.device(device).type}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    with pd.option_context("display.max_rows", None, "display.width", 160):
        print(f"\n{name} on {machine(device)} (torch {torch.__version__})")
        print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nwrote {path}")
    return df
