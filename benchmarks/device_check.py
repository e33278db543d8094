"""The device check: on a GPU machine (or a CPU, with fewer rows), one table of what diffood does there.

    python benchmarks/device_check.py [--data-dir DIR] [--calls 20000] [--skip-tests]

Rows: the CUDA tests (pytest -k cuda), UNet throughput (fp32, bf16, bf16 compiled with inductor freezing), the
default evaluation from nothing (FashionMNIST model vs MNIST, every table recomputed), one upload's verdict
(load + score), and LPIPS on the device against the CPU. Prints the device's name first.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from common import machine, parser, report, timer

from diffood.diffusion import default_device
from diffood.model import DEFAULT_CHECKPOINT, compile_for_inference, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def cuda_tests() -> dict:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda or gpu",
                          "--run-slow", "tests/test_model.py"], cwd=ROOT, capture_output=True, text=True)
    last = (out.stdout.strip().splitlines() or ["no output"])[-1]
    return {"check": "CUDA tests (pytest -k cuda)", "result": last, "seconds": time.perf_counter() - start}


def throughput(device, calls: int, compiled: bool = True, batch: int = 256) -> list[dict]:
    rows = []
    for variant in ("fp32", "bf16", "bf16 compiled")[:3 if compiled else 2]:
        precision = variant.split()[0]
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            continue
        ckpt = load_checkpoint(DEFAULT_CHECKPOINT, device=device, precision=precision)
        model = compile_for_inference(ckpt.model, precision) if "compiled" in variant else ckpt.model
        x = torch.randn(batch, 1, 28, 28, device=device)
        t = torch.full((batch,), 499, device=device, dtype=torch.long)
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else torch.autocast(
            device.type, enabled=False)
        compile_start = time.perf_counter()
        with torch.inference_mode(), ctx:
            for _ in range(3):  # warm-up (and the compilation)
                model(x, t)
            first = time.perf_counter() - compile_start
            steps = max(1, calls // batch)
            with timer(device) as tm:
                for _ in range(steps):
                    model(x, t)
        rows.append({"check": f"UNet throughput, {variant}, batch {batch}",
                     "result": f"{steps * batch / tm['s']:,.0f} calls/s", "seconds": tm["s"] + first})
    return rows


def default_evaluation(device, data_dir, n: int = 1000) -> dict:
    from diffood.evaluate import EvalConfig, evaluate, pending_calls

    cfg = EvalConfig(ood=("mnist",), recompute=True, n=n, n_val=min(500, n), cache_dir=tempfile.mkdtemp(prefix="diffood-check-"),
                     data_dir=data_dir, device=str(device))
    ckpt = load_checkpoint(DEFAULT_CHECKPOINT, device=device)
    calls = pending_calls(cfg, ckpt)
    with timer(device) as tm:
        result = evaluate(cfg, ckpt)
    s = result.summary[result.summary["t"].isna()].set_index("metric")["auroc"]
    figures = ", ".join(f"{name} {s[name]:.4f}" for name in ("default", "reconstruction", "multi-t") if name in s)
    return {"check": f"default evaluation from nothing ({ckpt.precision}, {n} + {n} images)",
            "result": f"{calls:,} calls, {calls / tm['s']:,.0f} calls/s; AUROC vs MNIST: {figures}", "seconds": tm["s"]}


def upload_verdict(device, data_dir) -> dict:
    import diffood
    from diffood.sets import load_images

    image = load_images("mnist", "test", 1, 0, data_dir)[0]
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[0].numpy()).save(buf, format="PNG")
    start = time.perf_counter()
    scorer = diffood.load(device=device, data_dir=data_dir)
    loaded = time.perf_counter() - start
    with timer(device) as tm:
        row = scorer.score([buf.getvalue()]).iloc[0]
    return {"check": "one upload's verdict (a digit)", "result": f"{row['verdict']}, score {row['score']:+.2f}; "
            f"load {loaded:.2f} s, score {tm['s'] * 1000:.0f} ms", "seconds": loaded + tm["s"]}


def lpips_on_device(device) -> dict:
    from diffood.perceptual import get_lpips

    cpu, dev = get_lpips("cpu"), get_lpips(str(device))
    if cpu is None:
        return {"check": "LPIPS", "result": "unavailable (no AlexNet weights)", "seconds": 0.0}
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(64, 1, 28, 28, generator=g) * 2 - 1, torch.rand(64, 1, 28, 28, generator=g) * 2 - 1
    with timer(device) as tm:
        on_device = dev(a.to(device), b.to(device)).cpu()
    diff = (on_device - cpu(a, b)).abs().max().item()
    return {"check": f"LPIPS on {device.type} vs the CPU, 64 pairs", "result": f"max |difference| {diff:.2e}; "
            f"net on {next(dev.parameters()).device}, CPU net on {next(cpu.parameters()).device}", "seconds": tm["s"]}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--calls", type=int, default=20_000, help="network calls timed per throughput row")
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--skip-compile", action="store_true")
    p.add_argument("--eval-n", type=int, default=1000, help="images per set of the default evaluation (1000: the default)")
    a = p.parse_args()
    device = torch.device(a.device) if a.device else default_device()
    print(f"device check on {machine(device)}, torch {torch.__version__}", flush=True)
    rows = [] if a.skip_tests or device.type != "cuda" else [cuda_tests()]
    for step in (lambda: throughput(device, a.calls, not a.skip_compile),
                 lambda: [default_evaluation(device, a.data_dir, a.eval_n)],
                 lambda: [upload_verdict(device, a.data_dir)], lambda: [lpips_on_device(device)]):
        try:
            rows += step()
        except Exception as e:  # a check that fails is a row saying so; the others still run
            rows.append({"check": "a check", "result": f"failed: {type(e).__name__}: {str(e)[:300]}",
                         "seconds": float("nan")})
        print(pd.DataFrame(rows[-1:]).to_string(index=False, header=False), flush=True)
    report(rows, "device_check", device, a.out)


if __name__ == "__main__":
    main()
