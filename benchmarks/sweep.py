"""Time the full default evaluation (1000 FashionMNIST test + 1000 MNIST test + 500 ID validation
images, the default t list, MSE + LPIPS) from an empty cache.

    python benchmarks/sweep.py                              # times it, table in a temp folder
    python benchmarks/sweep.py --cache-dir diffood/assets/model/evals   # and keep the table there
"""

from __future__ import annotations

import tempfile

import torch
from common import machine, parser, report, timer

from diffood.diffusion import default_device, sampler_name
from diffood.evaluate import EvalConfig, evaluate
from diffood.model import DEFAULT_CHECKPOINT, load_checkpoint


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--cache-dir", help="write the score table here (default: a temporary folder)")
    p.add_argument("--batch-size", type=int, default=EvalConfig.batch_size)
    a = p.parse_args()
    device = torch.device(a.device) if a.device else default_device()
    ckpt = load_checkpoint(a.checkpoint or DEFAULT_CHECKPOINT, device=device)
    cache = a.cache_dir or tempfile.mkdtemp(prefix="diffood-sweep-")
    cfg = EvalConfig(checkpoint=str(ckpt.path), data_dir=a.data_dir, cache_dir=cache, batch_size=a.batch_size,
                     device=str(device))
    from tqdm.auto import tqdm

    bar = tqdm(unit="img")
    with timer(device) as tm:
        result = evaluate(cfg, ckpt, lambda done, total, what: (setattr(bar, "total", total), bar.update(done - bar.n)))
    bar.close()
    n_images = (cfg.n_val + 2 * cfg.n) * len(cfg.ts)
    report([{"machine": machine(device), "images": cfg.n_val + 2 * cfg.n, "t_values": len(cfg.ts),
             "reconstructions": n_images, "sampler": sampler_name(cfg.sampler, cfg.steps), "seconds": tm["s"],
             "minutes": tm["s"] / 60, "recon_per_s": n_images / tm["s"]}], "sweep", device, a.out)
    print(result.summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"table: {result.cache_file}")


if __name__ == "__main__":
    main()
