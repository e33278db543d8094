"""Time the full default evaluation from nothing: 1000 FashionMNIST test + 1000 MNIST test + 500 ID
validation images, the default t list, the default score's extra noise draws and feature term (with the
checkpoint's bank), MSE + LPIPS. No cached
or shipped table is read (EvalConfig.recompute); the table is written to a temporary folder.

    python benchmarks/sweep.py                               # the defaults (precision auto)
    python benchmarks/sweep.py --precision fp32 bf16         # both, one after the other, AUROC compared
    python benchmarks/sweep.py --compile                     # compiled (model.compile_for_inference), compilation included
    TORCHINDUCTOR_CACHE_DIR=/tmp/ind python benchmarks/sweep.py --compile   # twice: cold, then warm on-disk cache
"""

from __future__ import annotations

import tempfile

import torch
from common import machine, parser, report, timer, unet_gflop

from diffood.diffusion import PRECISIONS, default_device, sampler_name
from diffood.evaluate import EvalConfig, evaluate, pending_calls, pending_images
from diffood.model import DEFAULT_CHECKPOINT, load_checkpoint


def config(checkpoint: str, data_dir: str | None, cache_dir: str, device: str, **kw) -> EvalConfig:
    """The benchmark's evaluation: the defaults, computed from scratch."""
    return EvalConfig(checkpoint=checkpoint, data_dir=data_dir, cache_dir=cache_dir, device=device, recompute=True, **kw)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--precision", nargs="+", default=["auto"], choices=list(PRECISIONS))
    p.add_argument("--batch-size", type=int, default=EvalConfig.batch_size)
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (compile time included)")
    a = p.parse_args()
    device = torch.device(a.device) if a.device else default_device()
    rows, summaries = [], {}
    for precision in a.precision:
        ckpt = load_checkpoint(a.checkpoint or DEFAULT_CHECKPOINT, device=device, precision=precision, compile=a.compile)
        cfg = config(str(ckpt.path), a.data_dir, tempfile.mkdtemp(prefix="diffood-sweep-"), str(device),
                     batch_size=a.batch_size)
        from tqdm.auto import tqdm

        calls, images = pending_calls(cfg, ckpt), pending_images(cfg, ckpt)  # everything: recompute reads no table
        bar = tqdm(unit="img")
        with timer(device) as tm:
            result = evaluate(cfg, ckpt, lambda done, total, what: (setattr(bar, "total", total), bar.update(done - bar.n)))
        bar.close()
        gflop = calls * unet_gflop(ckpt.model, device)
        rows.append({"machine": machine(device), "precision": ckpt.precision, "compile": a.compile,
                     "images_x_parts": images, "network_calls": calls,
                     "sampler": sampler_name(cfg.sampler, cfg.steps), "seconds": tm["s"], "calls_per_s": calls / tm["s"],
                     "unet_gflop_per_s": gflop / tm["s"]})
        summaries[ckpt.precision] = result.summary
        print(result.summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        print(f"table ({ckpt.precision}): {result.cache_file}")
    report(rows, "sweep", device, a.out)
    if len(summaries) == 2:
        (pa, sa), (pb, sb) = summaries.items()
        diff = (sa["auroc"] - sb["auroc"]).abs()
        print(f"\nAUROC {pa} vs {pb}: largest difference {diff.max():.4f} over {len(diff)} rows "
              f"({sa.loc[diff.idxmax(), 'metric']} t={sa.loc[diff.idxmax(), 't']})")


if __name__ == "__main__":
    main()
