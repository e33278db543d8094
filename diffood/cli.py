"""`python -m diffood {evaluate,reconstruct,score,sample,train,export}`: the same functions the app calls."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import pandas as pd
import torch

from .diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS, PRECISIONS, SAMPLERS, STEPPED
from .errors import DiffoodError
from .model import DEFAULT_CHECKPOINT


def _add_train(sub) -> None:
    from .model import ModelConfig
    from .train import TrainConfig

    p = sub.add_parser("train", help="train the denoiser on FashionMNIST (resumable; runs under torchrun)")
    p.add_argument("--run-dir", default=TrainConfig.run_dir, help="where state, log and checkpoints go")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir exactly")
    p.add_argument("--epochs", type=float, default=TrainConfig.epochs, help="length of the learning-rate schedule")
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--ema-decay", type=float, default=TrainConfig.ema_decay)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--save-every", type=int, default=TrainConfig.save_every, help="steps between saved states")
    p.add_argument("--channels", default=",".join(map(str, ModelConfig.block_out_channels)), help="UNet block_out_channels")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--max-steps", type=int, help="stop (and save) at this total step")
    p.add_argument("--max-minutes", type=float, help="stop (and save) after this many minutes")
    p.add_argument("--export", dest="export_dir", help="write the EMA checkpoint here when stopping")
    p.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--data-dir", help="folder with torchvision's FashionMNIST (default $DIFFOOD_DATA_DIR)")
    p.add_argument("--download", action="store_true", help="allow torchvision to download FashionMNIST")
    p.add_argument("--limit-images", type=int, help="train on this many images only (smoke tests)")


def _cmd_train(a) -> int:
    from .model import ModelConfig
    from .train import TrainConfig, run

    cfg = TrainConfig(
        run_dir=a.run_dir, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, ema_decay=a.ema_decay,
        seed=a.seed, save_every=a.save_every, channels_last=not a.no_channels_last, compile=a.compile,
        data_dir=a.data_dir, limit_images=a.limit_images, model=ModelConfig(block_out_channels=tuple(int(c) for c in a.channels.split(","))),
    )
    run(cfg, resume=a.resume, max_steps=a.max_steps, max_minutes=a.max_minutes, export_dir=a.export_dir,
        device=a.device)
    return 0


def _add_export(sub) -> None:
    from .train import TrainConfig

    p = sub.add_parser("export", help="write a run's EMA weights as a diffusers-layout checkpoint (no data needed)")
    p.add_argument("--run-dir", default=TrainConfig.run_dir)
    p.add_argument("--out", required=True, help="checkpoint folder to write")


def _cmd_export(a) -> int:
    from .train import export_run

    step, folder = export_run(a.run_dir, a.out)
    print(f"exported step {step} to {folder}")
    return 0


def _add_common(p, sampler=True) -> None:
    p.add_argument("--checkpoint", help="checkpoint folder (default: the shipped model)")
    if sampler:
        p.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=list(SAMPLERS))
        p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"network calls for {' and '.join(STEPPED)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--precision", default="auto", choices=list(PRECISIONS),
                   help="the UNet's: auto = bf16 on CUDA and on CPUs with native bf16 (AMX, AVX-512-bf16), else fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (pays off on long runs only)")
    p.add_argument("--data-dir", help="torchvision data folder (default $DIFFOOD_DATA_DIR, then ~/.cache/diffood/data)")
    p.add_argument("--download", action="store_true", help="allow torchvision to download missing data sets")


def _setup(a) -> None:
    if getattr(a, "download", False):
        os.environ["DIFFOOD_DOWNLOAD"] = "1"


def _load(a):
    from .diffusion import default_device
    from .model import load_checkpoint

    return load_checkpoint(a.checkpoint or DEFAULT_CHECKPOINT, device=a.device or default_device(), precision=a.precision,
                           compile=a.compile)


def _progress_bar():
    """A tqdm bar and the `progress(done, total, what)` callback that drives it."""
    from tqdm.auto import tqdm

    bar = tqdm(unit="img", dynamic_ncols=True)

    def progress(done, total, what):
        bar.total = total
        bar.set_description(what)
        bar.update(done - bar.n)

    return bar, progress


def _add_evaluate(sub) -> None:
    from .data import OOD_SETS
    from .evaluate import DEFAULT_MULTI_TS, DEFAULT_TS, EvalConfig

    p = sub.add_parser("evaluate", help="score ID vs OOD sets over t; print AUROC / FPR95, write CSVs")
    _add_common(p)
    p.add_argument("--ood", nargs="+", default=["mnist"], choices=sorted(OOD_SETS), help="OOD sets")
    p.add_argument("--t", nargs="+", type=int, default=list(DEFAULT_TS), help="timesteps to score at")
    p.add_argument("--multi-t", nargs="+", default=list(DEFAULT_MULTI_TS),
                   help="timesteps combined into multi-t, or 'all' for every --t (default: %(default)s)")
    p.add_argument("--draws", type=int, default=EvalConfig.draws, help="noise draws the default score averages")
    p.add_argument("--detector-t", nargs="+", type=int, default=list(EvalConfig.detector_ts), help="t of the default score")
    p.add_argument("--detector-metrics", nargs="+", default=list(EvalConfig.detector_metrics), choices=["mse", "lpips"])
    p.add_argument("--n", type=int, default=EvalConfig.n, help="ID test images, and images per OOD set")
    p.add_argument("--n-val", type=int, default=EvalConfig.n_val, help="ID validation images (z-score statistics)")
    p.add_argument("--no-lpips", action="store_true", help="MSE only")
    p.add_argument("--batch-size", type=int, default=EvalConfig.batch_size)
    p.add_argument("--cache-dir", help="where score tables are cached (default ~/.cache/diffood/evals)")
    p.add_argument("--recompute", action="store_true", help="read no cached or shipped table: compute everything")
    p.add_argument("--out", default="diffood_eval", help="prefix of the CSVs written: PREFIX_scores.csv, PREFIX_summary.csv")


def _cmd_evaluate(a) -> int:
    from .evaluate import EvalConfig, evaluate

    cfg = EvalConfig(checkpoint=a.checkpoint, ood=tuple(a.ood), ts=tuple(a.t), multi_ts=None if a.multi_t == ["all"] else tuple(map(int, a.multi_t)),
                     draws=a.draws, detector_ts=tuple(a.detector_t), detector_metrics=tuple(a.detector_metrics),
                     sampler=a.sampler, steps=a.steps, n=a.n, n_val=a.n_val, seed=a.seed, lpips=not a.no_lpips,
                     recompute=a.recompute, precision=a.precision, batch_size=a.batch_size, data_dir=a.data_dir,
                     cache_dir=a.cache_dir, device=a.device)
    bar, progress = _progress_bar()
    result = evaluate(cfg, _load(a), progress)
    bar.close()
    result.scores.to_csv(f"{a.out}_scores.csv", index=False)
    result.summary.to_csv(f"{a.out}_summary.csv", index=False)
    with pd.option_context("display.max_rows", None, "display.width", 120):
        print(result.summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    source = "computed" if result.computed else f"read from {result.cache_file}"
    print(f"\nscores {source}; wrote {a.out}_scores.csv and {a.out}_summary.csv")
    return 0


def _add_select(sub) -> None:
    from .select import SelectConfig

    d = SelectConfig()
    p = sub.add_parser("select", help="choose the default score on proxy OOD sets (never MNIST); print and write the table")
    _add_common(p)
    p.set_defaults(steps=d.steps)
    p.add_argument("--proxies", nargs="+", default=list(d.proxies), help="proxy OOD sets (default: %(default)s)")
    p.add_argument("--t", nargs="+", type=int, default=list(d.ts), help="candidate t; candidates take runs of them")
    p.add_argument("--max-draws", type=int, default=d.max_draws)
    p.add_argument("--max-calls", type=int, default=d.max_calls, help="network calls per image, at most")
    p.add_argument("--n-ref", type=int, default=d.n_ref, help="ID validation images for the z-score reference")
    p.add_argument("--n-id", type=int, default=d.n_id, help="further ID validation images: the ID side of each AUROC")
    p.add_argument("--n-proxy", type=int, default=d.n_proxy, help="images per proxy set")
    p.add_argument("--cache-dir", help="where score tables are cached (default ~/.cache/diffood/evals)")
    p.add_argument("--out", default="diffood_select.csv", help="CSV of every candidate")


def _cmd_select(a) -> int:
    from .select import SelectConfig, choose, score_candidates

    cfg = SelectConfig(checkpoint=a.checkpoint, proxies=tuple(a.proxies), ts=tuple(a.t), max_draws=a.max_draws,
                       sampler=a.sampler, steps=a.steps, max_calls=a.max_calls, n_ref=a.n_ref, n_id=a.n_id,
                       n_proxy=a.n_proxy, seed=a.seed, precision=a.precision, data_dir=a.data_dir,
                       cache_dir=a.cache_dir, device=a.device)
    bar, progress = _progress_bar()
    table = score_candidates(cfg, _load(a), progress)
    bar.close()
    table.to_csv(a.out, index=False)
    with pd.option_context("display.max_rows", 40, "display.width", 200):
        print(table.head(25).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    best = choose(table, cfg.tolerance)
    print(f"\n{len(table)} candidates; chosen: t = {best['ts']}, {best['draws']} draws, {best['metrics']}, "
          f"{best['calls']} calls/image, mean proxy AUROC {best['mean']:.4f} (worst {best['worst']:.4f}); wrote {a.out}")
    return 0


def _add_reconstruct(sub) -> None:
    from .data import ID_DATASET, OOD_SETS

    p = sub.add_parser("reconstruct", help="PNG grid: original, then noised / reconstruction / |error| per t")
    _add_common(p)
    p.add_argument("--dataset", default=ID_DATASET, choices=[ID_DATASET, *sorted(OOD_SETS)])
    p.add_argument("--t", nargs="+", type=int, default=[500])
    p.add_argument("--n", type=int, default=8, help="images (rows)")
    p.add_argument("--out", default="reconstruction.png")


def _cmd_reconstruct(a) -> int:
    from torchvision.utils import save_image

    from .data import load_images, to_model_input, to_pixels
    from .diffusion import make_scheduler, reconstruct
    from .scoring import noise_for

    ckpt = _load(a)
    device = next(ckpt.model.parameters()).device
    x0 = to_model_input(load_images(a.dataset, "test", a.n, a.seed, a.data_dir)).to(device)
    columns = [to_pixels(x0)]
    for t in a.t:
        xt, recon = reconstruct(ckpt.model, x0, t, make_scheduler(), a.sampler, a.steps,
                                torch.Generator().manual_seed(a.seed + t), noise=noise_for(len(x0), t, a.seed),
                                precision=ckpt.precision)
        columns += [to_pixels(xt), to_pixels(recon), (to_pixels(recon) - to_pixels(x0)).abs()]
    grid = torch.stack(columns, dim=1).flatten(0, 1)  # row-major: one row per image
    save_image(grid, a.out, nrow=len(columns), padding=2, pad_value=0.5)
    print(f"wrote {a.out}: {a.n} {a.dataset} images; columns: original" + "".join(
        f", noised/reconstruction/|error| at t={t}" for t in a.t))
    return 0


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="score image files, folders and .zip archives against the ID statistics")
    _add_common(p)
    p.add_argument("images", nargs="+", help="image files (any format Pillow reads), folders of them, .zip archives")
    p.add_argument("--no-invert", action="store_true", help="never invert light backgrounds")
    p.add_argument("--out", help="write the table (file, score, percentile, verdict, error) to this CSV")


def _cmd_score(a) -> int:
    from .evaluate import EvalConfig, evaluate
    from .inputs import collect
    from .perceptual import get_lpips
    from .verdict import Reference, judge_entries

    ckpt = _load(a)
    device = next(ckpt.model.parameters()).device
    result = evaluate(EvalConfig(checkpoint=a.checkpoint, ood=(), sampler=a.sampler, steps=a.steps, seed=a.seed,
                                 data_dir=a.data_dir, device=str(device)), ckpt)
    reference = Reference.from_result(result)
    entries = list(collect(a.images))
    bar, progress = _progress_bar()
    table = judge_entries(entries, ckpt, reference, a.sampler, a.steps, a.seed, get_lpips(str(device)),
                          invert=False if a.no_invert else None, progress=lambda done, total: progress(done, total, "scoring"))
    bar.close()
    for row in table.itertuples():
        print(f"{row.file}: error: {row.error}" if row.error else
              f"{row.file}: {row.verdict}: score {row.score:+.2f} (ID validation percentile {row.percentile:.1f})")
    print(f"threshold {reference.threshold:+.2f} accepts 95% of ID validation images; score: {reference.detector.describe()}")
    if a.out:
        table.to_csv(a.out, index=False)
        print(f"wrote {a.out}")
    return 1 if (table["error"] != "").any() else 0


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="PNG grid of images generated from pure noise (DDIM)")
    _add_common(p, sampler=False)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps from t = T")
    p.add_argument("--out", default="samples.png")


def _cmd_sample(a) -> int:
    from torchvision.utils import save_image

    from .data import to_pixels
    from .diffusion import generate, make_scheduler

    ckpt = _load(a)
    device = next(ckpt.model.parameters()).device
    x = generate(ckpt.model, a.n, make_scheduler(ckpt.meta.num_train_timesteps), a.steps,
                 torch.Generator().manual_seed(a.seed), ckpt.meta.image_size, device, ckpt.precision)
    save_image(to_pixels(x), a.out, nrow=int(a.n**0.5 + 0.999), padding=2, pad_value=0.5)
    print(f"wrote {a.out}: {a.n} samples, DDIM {a.steps} steps, seed {a.seed}")
    return 0


COMMANDS = {
    "evaluate": (_add_evaluate, _cmd_evaluate),
    "select": (_add_select, _cmd_select),
    "reconstruct": (_add_reconstruct, _cmd_reconstruct),
    "score": (_add_score, _cmd_score),
    "sample": (_add_sample, _cmd_sample),
    "train": (_add_train, _cmd_train),
    "export": (_add_export, _cmd_export),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m diffood", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def _warn(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    _setup(a)
    warnings.showwarning = _warn  # one line per warning, no source lines
    try:
        return COMMANDS[a.command][1](a)
    except (DiffoodError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
