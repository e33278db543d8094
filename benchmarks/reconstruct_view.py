"""What one move of the Reconstruct page's t slider costs: n images per set, reconstructed from t with
the default sampler and scored (MSE + LPIPS), for the ID and the OOD set. Median of repeats.

    python benchmarks/reconstruct_view.py          # 8 images, t in {250, 500, 900}
"""

from __future__ import annotations

import statistics

import torch
from common import machine, parser, report, timer

from diffood.diffusion import (
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    default_device,
    make_scheduler,
    noise_for,
    reconstruct,
    sampler_name,
)
from diffood.images import to_model_input
from diffood.model import DEFAULT_CHECKPOINT, load_checkpoint
from diffood.perceptual import get_lpips
from diffood.scoring import reconstruction_errors
from diffood.sets import load_images


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--t", type=int, nargs="+", default=[250, 500, 900])
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    device = torch.device(a.device) if a.device else default_device()
    ckpt = load_checkpoint(a.checkpoint or DEFAULT_CHECKPOINT, device=device)
    lpips, sched = get_lpips(str(device)), make_scheduler()
    rows = []
    for dataset in ("fashionmnist", "mnist"):
        x0 = to_model_input(load_images(dataset, "test", a.n, 0, a.data_dir)).to(device)
        for t in a.t:
            times = []
            for _ in range(a.repeats + 1):  # the first run warms up
                with timer(device) as tm:
                    _, rec = reconstruct(ckpt.model, x0, t, sched, noise=noise_for(a.n, t, 0), precision=ckpt.precision)
                    reconstruction_errors(x0, rec, lpips)
                times.append(tm["s"])
            rows.append({"machine": machine(device), "precision": ckpt.precision, "dataset": dataset, "images": a.n, "t": t,
                         "sampler": sampler_name(DEFAULT_SAMPLER, DEFAULT_STEPS),
                         "median_s": statistics.median(times[1:]), "max_s": max(times[1:])})
    report(rows, "reconstruct_view", device, a.out)


if __name__ == "__main__":
    main()
