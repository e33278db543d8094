"""What a verdict costs: one uploaded image scored with the default score (every t and noise draw it
needs, in one batch per t), and a batch of images through the same path as the CLI `score` and the
page's table. Median of repeats, after a warm-up.

    python benchmarks/upload.py
"""

from __future__ import annotations

import io
import statistics

import torch
from common import machine, parser, report, timer
from PIL import Image

from diffood.diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS, PRECISIONS, default_device, sampler_name
from diffood.evaluate import EvalConfig, evaluate
from diffood.inputs import Entry
from diffood.model import DEFAULT_CHECKPOINT, load_checkpoint
from diffood.perceptual import get_lpips
from diffood.sets import load_images
from diffood.verdict import Reference, judge_entries


def png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--batch", type=int, default=100, help="images in the batch measurement")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--precision", nargs="+", default=["auto"], choices=list(PRECISIONS))
    a = p.parse_args()
    device = torch.device(a.device) if a.device else default_device()
    images = [png(x[0].numpy()) for x in load_images("fashionmnist", "test", a.batch, 0, a.data_dir)]
    rows = []
    for precision in a.precision:
        ckpt = load_checkpoint(a.checkpoint or DEFAULT_CHECKPOINT, device=device, precision=precision)
        reference = Reference.from_result(evaluate(EvalConfig(checkpoint=str(ckpt.path), ood=(), device=str(device)), ckpt))
        lpips = get_lpips(str(device))
        for n in (1, a.batch):
            entries = [Entry(f"{i}.png", images[i]) for i in range(n)]
            times = []
            for _ in range(a.repeats + 1):  # the first run warms up
                with timer(device) as tm:
                    judge_entries(entries, ckpt, reference, lpips)
                times.append(tm["s"])
            median = statistics.median(times[1:])
            rows.append({"machine": machine(device), "precision": ckpt.precision, "images": n,
                         "score": reference.detector.describe(), "sampler": sampler_name(DEFAULT_SAMPLER, DEFAULT_STEPS),
                         "calls_per_image": reference.detector.calls(), "median_s": median, "ms_per_image": 1000 * median / n})
            print(rows[-1], flush=True)
    report(rows, "upload", device, a.out)


if __name__ == "__main__":
    main()
