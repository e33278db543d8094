"""Reconstruction throughput: images/s against batch size and execution variant, with peak memory.

Variants: fp32 and bf16 autocast, each plain and channels_last, and torch.compile of each precision's
faster layout; CUDA adds CUDA graphs (torch.compile mode="reduce-overhead"). One strided-10
reconstruction from t = 500 per image. `first_s` is the first call's time: compilation for compiled
variants, which a whole evaluation pays once per batch shape.

    python benchmarks/throughput.py
"""

from __future__ import annotations

import copy
import resource

import torch
from common import parser, report, timer

from diffood.diffusion import default_device, make_scheduler, reconstruct
from diffood.model import DEFAULT_CHECKPOINT, load_checkpoint


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
    if torch.device(device).type == "cuda":
        yield "bf16+cuda_graphs", torch.compile(copy.deepcopy(plain), mode="reduce-overhead"), "bf16"


def peak_memory_mb(device) -> float:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (monotone)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 128, 256, 512])
    p.add_argument("--images", type=int, default=512, help="images per measurement")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device) if a.device else default_device()
    ckpt = load_checkpoint(a.checkpoint or DEFAULT_CHECKPOINT, device=device)
    sched = make_scheduler()
    x = torch.rand((a.images, 1, 28, 28), generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    rows = []
    for name, model, precision in variants(ckpt.model, device):
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
    df = report(rows, "throughput", device, a.out)
    base = df[(df["variant"] == "fp32")].set_index("batch")["img_per_s"]
    df["vs_fp32"] = df["img_per_s"] / df["batch"].map(base)
    print("\nratio to fp32 at the same batch size:")
    print(df.pivot(index="batch", columns="variant", values="vs_fp32").round(2).to_string())


if __name__ == "__main__":
    main()
