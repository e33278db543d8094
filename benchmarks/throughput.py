"""Reconstruction throughput: images/s against batch size and execution variant, with peak memory.

Variants: fp32 and bf16 autocast, each plain and channels_last; torch.compile of each precision's
faster layout; `compile_for_inference` (inductor freezing, bf16 weights, one static batch shape: what
`--compile on` runs); CUDA adds CUDA graphs (torch.compile mode="reduce-overhead"). One strided-10
reconstruction from t = 500 per image. `first_s` is the first call's time: compilation for compiled
variants, which a whole evaluation pays once per batch shape (once in all for the static one).
`--sharded 1 2` adds the same bf16 reconstruction split across 1 and 2 processes by torchrun
(distributed.py), timed inside the processes, and their ratio.

    python benchmarks/throughput.py
    python benchmarks/throughput.py --batch-sizes 256 --variants bf16 bf16+freezing --sharded 1 2
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys

import torch
from common import parser, report, timer

from diffood import distributed
from diffood.diffusion import default_device, make_scheduler, reconstruct
from diffood.model import DEFAULT_CHECKPOINT, compile_for_inference, load_checkpoint


def variants(model, device):
    """(name, model, precision)."""
    plain = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    yield "fp32", plain, "fp32"
    yield "fp32+channels_last", cl, "fp32"
    yield "bf16", plain, "bf16"
    yield "bf16+channels_last", cl, "bf16"
    yield "fp32+compile", torch.compile(copy.deepcopy(plain)), "fp32"
    yield "bf16+compile", torch.compile(copy.deepcopy(plain)), "bf16"
    yield "fp32+freezing", compile_for_inference(copy.deepcopy(cl), "fp32"), "fp32"
    yield "bf16+freezing", compile_for_inference(copy.deepcopy(plain), "bf16"), "bf16"  # bf16 weights too
    if torch.device(device).type == "cuda":
        yield "bf16+cuda_graphs", torch.compile(copy.deepcopy(plain), mode="reduce-overhead"), "bf16"


def peak_memory_mb(device) -> float:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (monotone)


def sharded_worker(a) -> None:
    """One process of a torchrun group: time the bf16 reconstruction of every image, shared among the ranks."""
    distributed.init(a.device or "cpu")
    device = torch.device(distributed.device_for_rank(a.device) or default_device())
    ckpt = load_checkpoint(a.checkpoint or DEFAULT_CHECKPOINT, device=device, precision="bf16")
    x = torch.rand((a.images, 1, 28, 28), generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    bs = a.batch_sizes[0]
    reconstruct(ckpt.model, x[:bs * distributed.world()], 500, make_scheduler(), "strided", 10, batch_size=bs, precision="bf16")
    distributed.barrier()  # every rank warm
    with timer(device) as tm:  # reconstruct ends in a gather: every rank's share is in
        reconstruct(ckpt.model, x, 500, make_scheduler(), "strided", 10, batch_size=bs, precision="bf16")
    distributed.close()
    if distributed.rank() == 0:
        print(json.dumps({"seconds": tm["s"]}))


def sharded_rows(a, device) -> list[dict]:
    """The reconstruction of `--images` images by 1, 2, ... processes (torchrun on this machine)."""
    rows = []
    for n in a.sharded:
        cmd = [sys.executable, *(["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"] if n > 1 else []),
               __file__, "--sharded-worker", "--images", str(a.images), "--batch-sizes", str(a.batch_sizes[0])]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        seconds = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])["seconds"]
        rows.append({"variant": f"bf16, {n} process{'es' * (n > 1)}", "batch": a.batch_sizes[0], "first_s": float("nan"),
                     "img_per_s": a.images / seconds, "net_img_per_s": 10 * a.images / seconds, "peak_mb": float("nan")})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 128, 256, 512])
    p.add_argument("--images", type=int, default=512, help="images per measurement")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    p.add_argument("--variants", nargs="+", help="only these variants (default: all)")
    p.add_argument("--sharded", type=int, nargs="*", default=[], help="also time 1, 2, ... torchrun processes")
    p.add_argument("--sharded-worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.sharded_worker:
        return sharded_worker(a)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device) if a.device else default_device()
    ckpt = load_checkpoint(a.checkpoint or DEFAULT_CHECKPOINT, device=device)
    sched = make_scheduler()
    x = torch.rand((a.images, 1, 28, 28), generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    rows = []
    for name, model, precision in variants(ckpt.model, device):
        if a.variants and name not in a.variants:
            continue
        for bs in a.batch_sizes:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            with timer(device) as first:
                reconstruct(model, x[:bs], 500, sched, "strided", 10, batch_size=bs, precision=precision)
            with timer(device) as tm:
                reconstruct(model, x, 500, sched, "strided", 10, batch_size=bs, precision=precision)
            rows.append({"variant": name, "batch": bs, "first_s": first["s"], "img_per_s": a.images / tm["s"],
                         "net_img_per_s": 10 * a.images / tm["s"], "peak_mb": peak_memory_mb(device)})
            print(rows[-1], flush=True)
    rows += sharded_rows(a, device)
    df = report(rows, "throughput", device, a.out)
    base_name = "fp32" if "fp32" in set(df["variant"]) else df["variant"].iloc[0]
    base = df[(df["variant"] == base_name)].set_index("batch")["img_per_s"]
    df["vs_base"] = df["img_per_s"] / df["batch"].map(base)
    print(f"\nratio to {base_name} at the same batch size:")
    print(df.pivot(index="batch", columns="variant", values="vs_base").round(2).to_string())


if __name__ == "__main__":
    main()
