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

from diffood.data import ID_DATASET, load_images, to_model_input


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--checkpoint", help="default: the shipped model")
    p.add_argument("--device", help="default: cuda if present, else cpu")
    p.add_argument("--data-dir", help="torchvision data folder (default $DIFFOOD_DATA_DIR)")
    p.add_argument("--out", help="CSV to write (default benchmarks/results/<script>-<device>.csv)")
    return p


def id_and_ood(n: int, data_dir: str | None, device, ood: str = "mnist") -> tuple[torch.Tensor, torch.Tensor]:
    x_id = to_model_input(load_images(ID_DATASET, "test", n, 0, data_dir)).to(device)
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


def machine(device) -> str:
    d = torch.device(device)
    if d.type == "cuda":
        return torch.cuda.get_device_name(d)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


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
