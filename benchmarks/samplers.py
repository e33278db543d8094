"""Samplers head to head: wall time, network calls and AUROC of each, relative to `chain`.

    python benchmarks/samplers.py                 # t in {100, 250, 500}, 256 ID + 256 OOD images
    python benchmarks/samplers.py --n 64 --t 500  # quicker
"""

from __future__ import annotations

import torch
from common import id_and_ood, parser, report, timer

from diffood.diffusion import (
    STEPPED,
    ddim_timesteps,
    default_device,
    make_scheduler,
    noise_for,
    reconstruct,
    sampler_name,
)
from diffood.metrics import auroc
from diffood.model import DEFAULT_CHECKPOINT, load_checkpoint
from diffood.perceptual import get_lpips
from diffood.scoring import reconstruction_errors

VARIANTS = [("chain", 0), ("strided", 5), ("strided", 10), ("strided", 20),
            ("ddim", 5), ("ddim", 10), ("ddim", 20), ("ddim", 50), ("plms", 0)]


def calls(sampler: str, steps: int, t: int) -> int:
    if sampler in STEPPED:
        return len(ddim_timesteps(t, steps)) - 1
    if sampler == "plms":
        return len(range(t - 1, -1, -10)) + 1
    return t


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--n", type=int, default=256, help="ID and OOD images each")
    p.add_argument("--t", type=int, nargs="+", default=[100, 250, 500])
    p.add_argument("--batch-size", type=int, default=128)
    a = p.parse_args()
    device = torch.device(a.device) if a.device else default_device()
    ckpt = load_checkpoint(a.checkpoint or DEFAULT_CHECKPOINT, device=device)
    lpips = get_lpips(str(device))
    x_id, x_ood = id_and_ood(a.n, a.data_dir, device)
    x = torch.cat([x_id, x_ood])
    sched = make_scheduler()
    rows = []
    for t in a.t:
        noise = torch.cat([noise_for(a.n, t, 0), noise_for(a.n, t, 0)])
        base, base_rec = None, None
        for sampler, steps in VARIANTS:
            with timer(device) as tm:
                _, rec = reconstruct(ckpt.model, x, t, sched, sampler, steps, torch.Generator().manual_seed(t),
                                     a.batch_size, noise=noise.to(device))
            err = reconstruction_errors(x, rec, lpips)
            row = {"t": t, "sampler": sampler_name(sampler, steps),
                   "calls_per_image": calls(sampler, steps, t), "seconds": tm["s"],
                   "img_per_s": len(x) / tm["s"],
                   "auroc_mse": auroc(err["mse"][: a.n], err["mse"][a.n:]),
                   "auroc_mse_lpips": auroc(err["mse+lpips"][: a.n], err["mse+lpips"][a.n:]) if lpips else float("nan")}
            if base is None:
                base, base_rec = row, rec
            row["speedup_vs_chain"] = base["seconds"] / row["seconds"]
            row["d_auroc_mse_vs_chain"] = row["auroc_mse"] - base["auroc_mse"]
            row["d_auroc_mse_lpips_vs_chain"] = row["auroc_mse_lpips"] - base["auroc_mse_lpips"]
            row["recon_mse_vs_chain"] = float(((rec - base_rec) ** 2).mean())
            rows.append(row)
            print(row, flush=True)
    report(rows, "samplers", device, a.out)


if __name__ == "__main__":
    main()
