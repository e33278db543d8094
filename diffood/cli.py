"""`diffood {evaluate,select,bank,reconstruct,score,sample,train,export,fit,import,app}` (also `python -m diffood`): the
functions the app and the Python API call."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import time
import tomllib
import warnings
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from .diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS, PRECISIONS, SAMPLERS, STEPPED, default_device
from .errors import DiffoodError
from .model import COMPILE_MODES, SHIPPED_MODELS
from .verdict import TARGET_TPR

# torchrun reads an abbreviated option after the module name as its own: --t as its --tee, --n as ambiguous
TORCHRUN_NOTE = " (under torchrun, spell out the long name)"
OOD_HELP = ("another torchvision set (mnist, fashionmnist, ...), a folder or .zip of images, <id>-vflip / -hflip / "
            "-invert / -shuffle (the ID test images transformed), gaussian-noise, uniform")


def _add_train(sub) -> None:
    from .datasets import DataSpec
    from .model import ModelConfig
    from .options import add_options
    from .train import TrainConfig

    p = sub.add_parser("train", help="train the denoiser on an image set (resumable; runs under torchrun)")
    add_options(p, DataSpec)
    add_options(p, ModelConfig, skip=("image_size", "channels", "attention"))  # size and channels: the data's
    add_options(p, TrainConfig, skip=("data", "model"))
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir exactly")
    p.add_argument("--max-steps", type=int, help="stop (and save) at this total step")
    p.add_argument("--max-minutes", type=float, help="stop (and save) after this many minutes")
    p.add_argument("--export", dest="export_dir", help="write the EMA checkpoint here when stopping")
    p.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--download", action="store_true", help="allow torchvision to download the set")


def _cmd_train(a) -> int:
    from .datasets import DataSpec
    from .model import ModelConfig
    from .options import from_args
    from .train import TrainConfig, run

    data = from_args(DataSpec, a)
    cfg = from_args(TrainConfig, a, data=data, model=from_args(ModelConfig, a))
    run(cfg, resume=a.resume, max_steps=a.max_steps, max_minutes=a.max_minutes, export_dir=a.export_dir,
        device=a.device)
    return 0


def _add_export(sub) -> None:
    from .model import WEIGHT_DTYPES
    from .train import TrainConfig

    p = sub.add_parser("export", help="write a run's EMA weights as a diffusers-layout checkpoint (no data needed)")
    p.add_argument("--run-dir", default=TrainConfig.run_dir)
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--weights", default="fp32", choices=list(WEIGHT_DTYPES), help="stored precision (fp16: half the size)")


def _cmd_export(a) -> int:
    from .train import export_run

    step, folder = export_run(a.run_dir, a.out, a.weights)
    print(f"exported step {step} to {folder}")
    return 0


def _add_common(p, sampler=True, compile=False) -> None:
    p.add_argument("--checkpoint", help=f"checkpoint folder, or a shipped model: {', '.join(SHIPPED_MODELS)} "
                                        "(default: fashionmnist)")
    if sampler:
        p.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=list(SAMPLERS))
        p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"network calls for {' and '.join(STEPPED)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--precision", default="auto", choices=list(PRECISIONS),
                   help="the UNet's: auto = bf16 on CUDA and on CPUs with native bf16 (AMX, AVX-512-bf16), else fp32")
    if compile:
        p.add_argument("--compile", default="auto", choices=list(COMPILE_MODES),
                       help="torch.compile the UNet with inductor freezing for long runs: auto = where it was "
                            "measured to repay its first call (docs/performance.md)")
    p.add_argument("--data-dir", help="torchvision data folder (default $DIFFOOD_DATA_DIR, then ~/.cache/diffood/data)")
    p.add_argument("--download", action="store_true", help="allow torchvision to download missing data sets")


def _main() -> bool:
    """Whether this process writes the command's files: always, except on ranks other than 0 under torchrun."""
    from . import distributed

    return distributed.is_main()


def _setup(a) -> None:
    if getattr(a, "download", False):
        os.environ["DIFFOOD_DOWNLOAD"] = "1"


def _load(a):
    from .model import load_checkpoint

    return load_checkpoint(a.checkpoint, device=a.device or default_device(), precision=a.precision)


def _compiled(a, ckpt, calls: int):
    """The checkpoint with its UNet compiled when `--compile` says so for a run of `calls` network calls."""
    from .model import compile_for_inference, resolve_compile

    device = next(ckpt.model.parameters()).device
    if resolve_compile(getattr(a, "compile", "off"), calls, device):
        print(f"compiling the UNet for {calls:,} network calls (--compile {a.compile})", file=sys.stderr)
        ckpt.model = compile_for_inference(ckpt.model, ckpt.precision)
    return ckpt


class _Bar:
    """A tqdm bar driven by `progress(done, total, what)`, made on the first report so that an error
    before any work prints alone."""

    def __init__(self):
        self.bar = None

    def __call__(self, done, total, what):
        from tqdm.auto import tqdm

        from . import distributed

        self.bar = self.bar or tqdm(unit="img", dynamic_ncols=True, disable=not distributed.is_main())
        self.bar.total = total
        self.bar.set_description(what)
        self.bar.update(min(done, total) - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _progress_bar():
    """A progress bar and the `progress(done, total, what)` callback that drives it (the same object)."""
    bar = _Bar()
    return bar, bar


def _score_help() -> str:
    from .scores import KINDS

    return ("names: default, reconstruction, features, both, multi-t (the checkpoint's own), or a kind: "
            f"{', '.join(k for k in KINDS if k != 'zmean')}")


def _add_evaluate(sub) -> None:
    from .evaluate import EvalConfig
    from .options import add_options

    p = sub.add_parser("evaluate", help="score ID vs OOD sets over t; print AUROC / FPR95, write CSVs")
    add_options(p, EvalConfig, more_help={"score": "; " + _score_help(), "methods": " ('all': every kind)"})
    p.add_argument("--compile", default="auto", choices=list(COMPILE_MODES),
                   help="torch.compile the UNet with inductor freezing for long runs: auto = where it was "
                        "measured to repay its first call (docs/performance.md)")
    p.add_argument("--download", action="store_true", help="allow torchvision to download missing data sets")
    p.add_argument("--quick", action="store_true", help="the default score alone: no per-t curve, no other score "
                   "(one to four network calls per image for the shipped models)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="the paired AUROC difference of two named scores "
                   "(default, reconstruction, features, both, multi-t, a --methods kind) with its paired DeLong interval")
    p.add_argument("--seeds", type=int, nargs="+", metavar="SEED", help="evaluate once per seed (other images where "
                   "a set is subsampled, other noise) and report each score's AUROC and FPR95 as mean ± sd over them "
                   "(PREFIX_seeds.csv); the tables and summary written are those of the first seed")
    p.add_argument("--out", default="diffood_eval", help="prefix of the CSVs written: PREFIX_scores.csv, PREFIX_summary.csv")


def _methods(names) -> tuple[str, ...]:
    """--methods as given, with 'all' for every registered kind but the composite (scores.method_names)."""
    from .scores import method_names

    out = []
    for name in names:
        out += method_names() if name == "all" else [name]
    return tuple(dict.fromkeys(out))


def _cmd_evaluate(a) -> int:
    from .evaluate import EvalConfig, evaluate, pending_calls
    from .options import from_args

    cfg = from_args(EvalConfig, a)
    cfg = replace(cfg, methods=_methods(cfg.methods), seed=a.seeds[0] if a.seeds else cfg.seed)
    ckpt = _load(a)
    ckpt = _compiled(a, ckpt, pending_calls(cfg, ckpt, default_only=a.quick) * len(a.seeds or [0]))
    bar, progress = _progress_bar()
    result = evaluate(cfg, ckpt, progress, default_only=a.quick)
    bar.close()
    if _main():
        result.scores.to_csv(f"{a.out}_scores.csv", index=False)
        result.summary.to_csv(f"{a.out}_summary.csv", index=False)
    with pd.option_context("display.max_rows", None, "display.width", 120):
        print(result.summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    source = "computed" if result.computed else f"read from {result.cache_file}"
    for note in result.notes:
        print(f"note: {note}")
    for name, spec in result.named.items():
        print(f"{name}: {spec.describe()}")
    if a.compare:
        from .summary import describe_difference

        try:
            table = result.compare(*a.compare)
        except ValueError as e:
            raise DiffoodError(str(e)) from e
        for row in table.to_dict("records"):
            print(f"{row['ood']}: {describe_difference(row)} (paired DeLong, 95 %)")
        if _main():
            table.to_csv(f"{a.out}_compare.csv", index=False)
    if a.seeds:
        _over_seeds(a, cfg, ckpt, result)
    print(f"\nscores {source}; wrote {a.out}_scores.csv and {a.out}_summary.csv")
    return 0


def _over_seeds(a, cfg, ckpt, first) -> None:
    """`evaluate --seeds`: the same evaluation at each further seed, and each score's spread over them."""
    from .evaluate import evaluate
    from .summary import over_seeds

    summaries = {cfg.seed: first.summary}
    for seed in [s for s in a.seeds if s != cfg.seed]:
        bar, progress = _progress_bar()
        summaries[seed] = evaluate(replace(cfg, seed=seed), ckpt, progress, default_only=a.quick).summary
        bar.close()
    table = over_seeds(summaries)
    print(f"\nover seeds {', '.join(map(str, summaries))}: AUROC and FPR95, mean ± sd")
    for row in table.to_dict("records"):
        print(f"  {row['ood']}: {row['metric']}: AUROC {row['auroc_mean']:.4f} ± {row['auroc_sd']:.4f}, "
              f"FPR95 {row['fpr95_mean']:.3f} ± {row['fpr95_sd']:.3f}")
    if _main():
        table.to_csv(f"{a.out}_seeds.csv", index=False)


def _add_explain(sub) -> None:
    from .evaluate import EvalConfig
    from .options import add_options

    p = sub.add_parser("explain", help="the hardest cases of the default score: the ID test images it rejects and the "
                                       "OOD images it accepts, most wrong first, as a contact sheet PNG and a CSV")
    add_options(p, EvalConfig, more_help={"score": "; " + _score_help()})
    p.add_argument("--hardest", type=int, default=20, metavar="K", help="false alarms and misses listed, K of each")
    p.add_argument("--download", action="store_true", help="allow torchvision to download missing data sets")
    p.add_argument("--out", default="diffood_hardest", help="prefix of the files written: PREFIX.png, PREFIX.csv")


def _cmd_explain(a) -> int:
    from torchvision.utils import save_image

    from .evaluate import EvalConfig, evaluate
    from .hardest import CASES, TITLES, case_images, contact_sheet, wrong_cases
    from .options import from_args
    from .verdict import Reference

    if a.hardest < 1:
        raise DiffoodError(f"--hardest takes a positive number of images, got {a.hardest}")
    cfg = from_args(EvalConfig, a)
    ckpt = _load(a)
    bar, progress = _progress_bar()
    result = evaluate(cfg, ckpt, progress, default_only=True)
    bar.close()
    reference = Reference.from_result(result, tpr=cfg.tpr)
    cases = wrong_cases(result.score_frame(reference.spec), reference.threshold, reference.val_scores, a.hardest)
    images = case_images(result.config, cases, ckpt)
    cases["image_at_hand"] = [x is not None for x in images]
    if _main():
        cases.to_csv(f"{a.out}.csv", index=False)
    print(f"{reference.describe_threshold()}; score: {reference.spec.describe()}")
    for case in CASES.values():
        part = cases[cases["case"] == case]
        print(f"{TITLES[case]}: {len(part)}" + "".join(f"\n  {r.dataset} #{r.index}: score {r.score:+.3f}, ID validation "
                                                f"percentile {r.percentile:.1f}" for r in part.itertuples()))
    wrote = [f"{a.out}.csv"]
    if len(cases) and any(x is not None for x in images) and _main():
        save_image(contact_sheet(images), f"{a.out}.png")
        wrote.insert(0, f"{a.out}.png")
    missing = int((~cases["image_at_hand"]).sum())
    if missing:
        print(f"note: {missing} of the images are not at hand (grey in the sheet): point --data-dir at the data, or "
              f"--download")
    print(f"wrote {' and '.join(wrote)} (false alarms first, then misses, each most wrong first)")
    return 0


def _add_select(sub) -> None:
    from .options import add_options
    from .select import SelectConfig

    p = sub.add_parser("select", help="choose the default score on proxy OOD sets (never MNIST); print and write the table")
    add_options(p, SelectConfig)
    p.add_argument("--compile", default="auto", choices=list(COMPILE_MODES), help="as for evaluate")
    p.add_argument("--download", action="store_true", help="allow torchvision to download missing data sets")
    p.add_argument("--out", default="diffood_select.csv", help="CSV of every candidate")
    p.add_argument("--no-record", action="store_true", help="do not write the pick into the checkpoint's diffood.json")


def _cmd_select(a) -> int:
    from .evaluate import pending_calls
    from .model import record_score
    from .options import from_args
    from .scores import Pick
    from .select import SelectConfig, choose, fit_pick, pick_record, score_candidates, spec_of

    cfg = from_args(SelectConfig, a)
    ckpt = _load(a)
    cfg = cfg.for_checkpoint(ckpt)
    ckpt = _compiled(a, ckpt, pending_calls(cfg.eval_config(), ckpt))
    bar, progress = _progress_bar()
    table = score_candidates(cfg, ckpt, progress)
    bar.close()
    if _main():
        table.to_csv(a.out, index=False)
    with pd.option_context("display.max_rows", 40, "display.width", 200):
        print(table.head(25).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    best = choose(table)
    print(f"\n{len(table)} candidates; chosen: {spec_of(best).describe()}; {best['calls']} calls/image, "
          f"mean proxy AUROC {best['mean']:.4f} (worst {best['worst']:.4f}; the best's minus this one's: "
          f"{-best['diff_hi']:+.4f} to {-best['diff_lo']:+.4f}); wrote {a.out}")
    if not a.no_record and _main():
        record = pick_record(table, cfg)
        path = record_score(ckpt.path, record)
        for fitted in fit_pick(ckpt, record, cfg):
            print(f"fitted what the pick needs: {fitted}")
        needs = Pick.from_record(record).embedding_term
        print(f"recorded the pick in {path}" + (f"; build the bank it needs with `diffood bank --checkpoint {ckpt.path}`"
                                                 if needs else ""))
    return 0


def _add_bank(sub) -> None:
    from .features import LAYERS, POOLINGS

    pick = " (default: what the checkpoint's recorded pick needs)"
    p = sub.add_parser("bank", help="embed ID training images with the checkpoint's UNet: the feature bank beside its weights")
    _add_common(p, sampler=False)
    p.add_argument("--layer", choices=list(LAYERS), help="the block whose output is embedded" + pick)
    p.add_argument("--feature-t", type=int, help="t the images are noised to before the UNet call" + pick)
    p.add_argument("--pooling", choices=list(POOLINGS), help="pooling over space" + pick)
    p.add_argument("--n", "--images", dest="n", type=int, help=f"training images, 0: all{pick}{TORCHRUN_NOTE}")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--cache-dir", help="reuse embeddings `select` cached here (default ~/.cache/diffood/evals)")
    p.add_argument("--out", help="bank file (default: feature_bank.safetensors in the checkpoint folder)")


def _cmd_bank(a) -> int:
    from .evaluate import default_cache_dir
    from .features import BANK_DRAW, BANK_NAME, FeatureSpec, build_bank, cached_embeddings
    from .scores import Pick

    ckpt = _load(a)
    want = Pick.of(ckpt).bank_term
    spec = FeatureSpec(a.layer or want.layer, a.feature_t or want.t, a.pooling or want.pooling)
    n = (want.bank if a.n is None else a.n) or None
    start = time.perf_counter()
    reused = cached_embeddings(a.cache_dir or default_cache_dir(), ckpt, ckpt.data.name, "train", n, spec.t, BANK_DRAW, a.seed)
    bar, progress = _progress_bar()
    bank = build_bank(ckpt, spec, n, a.seed, a.data_dir, a.batch_size, lambda done, total: progress(done, total, "bank"),
                      embeddings=None if reused is None else reused[spec.layer, spec.pooling])
    bar.close()
    if _main():
        out = bank.save(a.out or ckpt.path / BANK_NAME)
        how = "from cached embeddings" if reused is not None else f"{bank.n} network calls"
        print(f"wrote {out}: {bank.describe()}; {out.stat().st_size / 2**20:.2f} MiB, {time.perf_counter() - start:.1f} s "
              f"({how})")
    return 0


def _add_reconstruct(sub) -> None:
    p = sub.add_parser("reconstruct", help="PNG grid: original, then noised / reconstruction / |error| per t")
    _add_common(p)
    p.add_argument("--dataset", help="the checkpoint's ID set (default) or an OOD set: " + OOD_HELP)
    p.add_argument("--t", nargs="+", type=int, default=[500])
    p.add_argument("--n", type=int, default=8, help="images (rows)")
    p.add_argument("--out", default="reconstruction.png")


def _cmd_reconstruct(a) -> int:
    from torchvision.utils import save_image

    from .diffusion import noise_for, reconstruct
    from .images import to_model_input, to_pixels
    from .sets import load_images

    ckpt = _load(a)
    device = next(ckpt.model.parameters()).device
    dataset = a.dataset or ckpt.data.name
    x0 = to_model_input(load_images(dataset, "test", a.n, a.seed, a.data_dir, id=ckpt.data)).to(device)
    columns = [to_pixels(x0)]
    for t in a.t:
        xt, recon = reconstruct(ckpt.model, x0, t, ckpt.scheduler, a.sampler, a.steps,
                                torch.Generator().manual_seed(a.seed + t), noise=noise_for(len(x0), t, a.seed, x0.shape[1:]),
                                precision=ckpt.precision)
        columns += [to_pixels(xt), to_pixels(recon), (to_pixels(recon) - to_pixels(x0)).abs()]
    grid = torch.stack(columns, dim=1).flatten(0, 1)  # row-major: one row per image
    if _main():
        save_image(grid, a.out, nrow=len(columns), padding=2, pad_value=0.5)
    print(f"wrote {a.out}: {a.n} {dataset} images; columns: original" + "".join(
        f", noised/reconstruction/|error| at t={t}" for t in a.t))
    return 0


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="score image files, folders and .zip archives against the ID statistics")
    _add_common(p, compile=True)
    p.add_argument("images", nargs="+", help="image files (any format Pillow reads), folders of them, .zip archives")
    p.add_argument("--tpr", type=float, default=TARGET_TPR, help="share of ID validation images the verdict threshold "
                                                                 "accepts (default %(default)s)")
    p.add_argument("--score", help="the score (default: the checkpoint's recorded pick), with parameters as in "
                                    "'features(k=5)'; " + _score_help())
    p.add_argument("--no-invert", action="store_true", help="never invert light backgrounds")
    p.add_argument("--out", help="write the table (file, score, percentile, verdict, threshold, tpr, error) to this CSV")


def _cmd_score(a) -> int:
    from .api import as_entries, load

    scorer = load(a.checkpoint, a.device, a.precision, a.tpr, a.sampler, a.steps, a.seed, a.data_dir, a.score)
    entries = as_entries(a.images, scorer.checkpoint.data.channels)
    scorer.checkpoint = _compiled(a, scorer.checkpoint, len(entries) * scorer.spec.calls(a.sampler, a.steps))
    bar, progress = _progress_bar()
    table = scorer.score(entries, invert=False if a.no_invert else None,
                         progress=lambda done, total: progress(done, total, "scoring"))
    bar.close()
    for row in table.itertuples():
        print(f"{row.file}: error: {row.error}" if row.error else
              f"{row.file}: {row.verdict}: score {row.score:+.2f} (ID validation percentile {row.percentile:.1f})")
    print(f"{scorer.reference.describe_threshold()}; score: {scorer.spec.describe()}")
    if a.out and _main():
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

    from .diffusion import generate
    from .images import to_pixels

    ckpt = _load(a)
    device = next(ckpt.model.parameters()).device
    x = generate(ckpt.model, a.n, ckpt.scheduler, a.steps,
                 torch.Generator().manual_seed(a.seed), ckpt.meta.image_size, device, ckpt.precision)
    if _main():
        save_image(to_pixels(x), a.out, nrow=int(a.n**0.5 + 0.999), padding=2, pad_value=0.5)
    print(f"wrote {a.out}: {a.n} samples, DDIM {a.steps} steps, seed {a.seed}")
    return 0


def _add_fit(sub) -> None:
    from .fit import FitConfig
    from .options import add_options

    p = sub.add_parser("fit", help="from images to a ready model: train, export, select, bank and tables (resumable)")
    add_options(p, FitConfig)
    p.add_argument("--download", action="store_true", help="allow torchvision to download the ID set")


def _cmd_fit(a) -> int:
    from .fit import FitConfig, fit
    from .options import from_args

    started = time.perf_counter()
    done = fit(from_args(FitConfig, a))
    pick, files = done["pick"], done["files"]
    print(f"\n{a.out} is ready ({time.perf_counter() - started:.0f} s; " +
          ", ".join(f"{k} {v:.0f} s" for k, v in done["seconds"].items()) + ")")
    print(f"  score: {pick.default.describe()} ({pick.calls} network call{'s' * (pick.calls != 1)} per image), "
          f"chosen on {', '.join(f'{k} {v:.3f}' for k, v in pick.proxies.items())}; mean {pick.mean:.4f}")
    print(f"  default evaluation: AUROC {done['auroc']:.4f} against {done['ood']}")
    print("  files: " + ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in files.items() if v > 2**16))
    print(f"  next: diffood score --checkpoint {a.out} IMAGES · DIFFOOD_MODELS_DIR={Path(a.out).parent} diffood app")
    return 0


def _add_import(sub) -> None:
    p = sub.add_parser("import", help="make a diffood checkpoint of a DDPM saved by diffusers' DDPMPipeline.save_pretrained")
    p.add_argument("pipeline", help="the pipeline folder: model_index.json, unet/, scheduler/")
    p.add_argument("--data", required=True, help="the ID set the model was trained on: a torchvision name, or a folder or .zip")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--data-dir", help="torchvision's data folder, where folder specs are also looked for")
    p.add_argument("--download", action="store_true", help="allow torchvision to download the ID set")


def _cmd_import(a) -> int:
    from .importer import import_pipeline

    folder = import_pipeline(a.pipeline, a.data, a.out, a.data_dir)
    meta = json.loads((folder / "diffood.json").read_text())
    print(f"wrote {folder}: {meta['image_size']} px, {meta['beta_schedule']} schedule, {meta['prediction_type']} "
          f"prediction; ID set {meta['data']['name']}. Next: `diffood bank --checkpoint {folder}`, then `diffood "
          f"evaluate --checkpoint {folder}`")
    return 0


def _add_app(sub) -> None:
    sub.add_parser("app", help="open the dashboard: `streamlit run app.py` with the settings of .streamlit/config.toml",
                   description="Opens the dashboard. Options after it go to `streamlit run`, e.g. `diffood app "
                               "--server.port 8502`, and win over the shipped settings.")


def app_script() -> Path:
    """The dashboard's app.py: in the clone this diffood runs from, or installed beside it as `diffood_app`."""
    clone = Path(__file__).resolve().parents[1]
    spec = importlib.util.find_spec("diffood_app")
    for folder in [clone, *(spec.submodule_search_locations or [] if spec else [])]:
        if (Path(folder) / "app.py").is_file() and (Path(folder) / "pages" / "common.py").is_file():
            return Path(folder) / "app.py"
    raise DiffoodError("the dashboard's files (app.py, pages/) are not installed; reinstall diffood")


def streamlit_flags(config: Path) -> list[str]:
    """A Streamlit config.toml as `streamlit run` options, so the installed app runs with the same settings
    from any working directory."""
    if not config.is_file():
        return []
    flags = []
    for section, options in tomllib.loads(config.read_text()).items():
        for key, value in options.items():
            flags.append(f"--{section}.{key}={str(value).lower() if isinstance(value, bool) else value}")
    return flags


def _add_fit_score(sub) -> None:
    p = sub.add_parser("fit-score", help="fit a method's density or covariance on ID training images, kept beside "
                                         "the checkpoint (fits/)")
    _add_common(p, sampler=False)
    p.add_argument("--score", nargs="+", required=True, help="the methods to fit, named as --methods names them "
                                                              "('all': every method that fits something)")
    p.add_argument("--batch-size", type=int, default=256)


def _cmd_fit_score(a) -> int:
    from .scores import Context, Pick, parse
    from .scores.base import Fitted, fit_and_save

    ckpt = _load(a)
    pick = Pick.of(ckpt)
    specs = [parse(m, pick) for m in _methods(a.score)]
    if "all" in a.score:
        specs = [s for s in specs if isinstance(s, Fitted)]
    for spec in specs:
        start = time.perf_counter()
        bar, progress = _progress_bar()
        done = [0]

        def step(k: int, spec=spec) -> None:
            done[0] += k
            progress(done[0], spec.train, spec.name)

        path = fit_and_save(spec, Context(ckpt, batch_size=a.batch_size, data_dir=a.data_dir, progress=step), a.seed)
        bar.close()
        print(f"wrote {path}: {spec.describe()}; {time.perf_counter() - start:.1f} s, "
              f"{spec.calls() * spec.train:,} network calls at most")
    return 0


def _cmd_app(a) -> int:
    script = app_script()
    extra = a.streamlit_args
    command = [sys.executable, "-m", "streamlit", "run", str(script),
               *streamlit_flags(script.parent / ".streamlit" / "config.toml"), *extra]
    return subprocess.call(command)


COMMANDS = {
    "evaluate": (_add_evaluate, _cmd_evaluate),
    "select": (_add_select, _cmd_select),
    "bank": (_add_bank, _cmd_bank),
    "fit-score": (_add_fit_score, _cmd_fit_score),
    "reconstruct": (_add_reconstruct, _cmd_reconstruct),
    "score": (_add_score, _cmd_score),
    "explain": (_add_explain, _cmd_explain),
    "sample": (_add_sample, _cmd_sample),
    "train": (_add_train, _cmd_train),
    "export": (_add_export, _cmd_export),
    "fit": (_add_fit, _cmd_fit),
    "import": (_add_import, _cmd_import),
    "app": (_add_app, _cmd_app),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffood", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def _warn(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    from . import distributed

    parser = build_parser()
    a, rest = parser.parse_known_args(argv)
    if rest and a.command != "app":  # only `app` passes options on (to streamlit)
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    a.streamlit_args = rest
    _setup(a)
    warnings.showwarning = _warn  # one line per warning, no source lines
    if a.command == "app":
        return COMMANDS["app"][1](a)
    if a.command not in ("train", "export", "import", "fit"):  # under torchrun: join the group (train does so itself); a GPU per local rank
        a.device = distributed.device_for_rank(a.device)
        distributed.init(a.device or default_device())
    ok = False
    try:
        with contextlib.redirect_stdout(io.StringIO()) if not distributed.is_main() else contextlib.nullcontext():
            rc = COMMANDS[a.command][1](a)  # rank 0 alone prints and writes
        ok = True
        return rc
    except (DiffoodError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        ok = True  # every rank meets the same bad input
        return 2
    finally:
        distributed.close(ok)
