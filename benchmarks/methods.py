"""Each score method's cost on this machine: its network calls per image, its time per image when scoring a
batch, and its fit on ID training images (fitted kinds). One table; compare rows within one run, since these
machines are noisy.

    python benchmarks/methods.py [--n 256] [--train 512] [--checkpoint mnist] [--device cuda]
"""

from __future__ import annotations

import tempfile
from dataclasses import replace

import torch
from common import id_and_ood, machine, parser, report, timer

from diffood.diffusion import default_device
from diffood.model import load_checkpoint
from diffood.scores import Context, Pick, method_names, parse
from diffood.scores.base import Fitted


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=256, help="images scored per method")
    p.add_argument("--train", type=int, default=512, help="training images each fit uses (the shipped fits: 5,000 "
                                                          "or 10,000; a fit's time grows with them)")
    p.add_argument("--batch-size", type=int, default=256)
    a = p.parse_args()
    device = torch.device(a.device) if a.device else default_device()
    ckpt = load_checkpoint(a.checkpoint or "fashionmnist", device=device)
    x, _ = id_and_ood(a.n, a.data_dir, device)
    ctx = Context(ckpt, batch_size=a.batch_size, data_dir=a.data_dir)
    rows = []
    print(f"{machine(device)}; {ckpt.precision}")
    for name in method_names():
        spec = parse(name, Pick.of(ckpt))
        state, fit_s = None, float("nan")
        if isinstance(spec, Fitted):
            spec = replace(spec, train=min(spec.train, a.train))
            with timer(device) as t:
                state = spec.fit_statistics(spec.training_statistics(ctx))
            fit_s = t["s"]
        else:
            state = spec.fit(ctx)
        spec.components(ctx, x[:8], state)  # warm-up
        with timer(device) as t:
            spec.components(ctx, x, state)
        rows.append({"method": spec.name, "calls per image": spec.calls(), "ms per image": 1000 * t["s"] / len(x),
                     "fit images": getattr(spec, "train", 0), "fit s": fit_s})
    report(rows, "methods", device, a.out)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        main()
