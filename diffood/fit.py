"""One command from images to a ready model: train, export, choose the score on the model's own proxies
(`select`, recorded in the checkpoint), build the bank it needs, and compute the tables the dashboard's
default views read. Each stage starts from what the earlier ones left, so an interrupted fit resumes.

The protocol's budget follows the set's size: the z-score reference and the ID side of each AUROC take
half of the held-out validation images each (at most 1000), each proxy as many (transforms of the reference
images, or noise); candidates: reconstruction at t = 600-800 with 1-2 draws, features of mid_block,
up_blocks.0 and up_blocks.1, mean or max pooled, at t_f = 10, 50, 100, 200, k = 1 or 5, 1-2 draws, a bank
of every training image (at most 10,000), the gaussian head on the same embeddings. The methods that need a
density fitted first (DiffPath, MSMA, the likelihood) are left to `diffood fit-score` and `evaluate --methods`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .datasets import DataSpec, download_allowed, held_out, load_split, resolve_data_dir
from .evaluate import DEFAULT_MULTI_TS, DEFAULT_TS, FEATURE_CURVE_TS, EvalConfig, evaluate
from .features import BANK_NAME, BankError, build_bank, checkpoint_bank
from .model import META_NAME, WEIGHTS_NAME, ModelConfig, file_sha256, load_checkpoint, record_score
from .options import doc
from .scores import Pick
from .select import SelectConfig, fit_pick, pick_record, score_candidates
from .train import TrainConfig, export_run, run

STAGES = ("train", "export", "select", "bank", "tables")


@dataclass
class FitConfig:
    """From images to a ready model: what to train on, where it goes, how long."""

    data: str = field(metadata=doc("the ID set: a torchvision name (fashionmnist, mnist, ...), or a folder or .zip "
                                     "of images"))
    out: str = field(metadata=doc("the checkpoint folder (its training run lives in OUT/run)"))
    image_size: int = field(default=28, metadata=doc("images are fitted to this many px (28-64)"))
    channels: int = field(default=1, metadata=doc("1 grayscale, 3 RGB", choices=(1, 3)))
    epochs: float = field(default=20.0, metadata=doc("length of the learning-rate schedule"))
    max_steps: int | None = field(default=None, metadata=doc("train this many steps at most, then go on"))
    max_minutes: float | None = field(default=None, metadata=doc("train this many minutes at most, then go on"))
    batch_size: int = field(default=128, metadata=doc("training images per step"))
    seed: int = field(default=0, metadata=doc("fixes the training order, the noise and the protocol's images"))
    data_dir: str | None = field(default=None, metadata=doc("torchvision's data folder, where folder specs are "
                                                              "also looked for"))
    device: str | None = field(default=None, metadata=doc("cuda, mps or cpu (default: the best available)"))


def select_budget(spec: DataSpec, data_dir: Path) -> dict:
    """The protocol's settings for a set of this size (the module docstring)."""
    n = len(load_split(spec, "all", data_dir, download_allowed()).pixels) if not spec.is_torchvision else None
    val = held_out(spec, n) if n is not None else spec.val_size
    train = n - 2 * val if n is not None else 10_000
    half = min(1000, val // 2)  # the reference, the ID side and (transforms of the reference) each proxy
    return dict(n_ref=half, n_id=half, n_proxy=half, methods=(), ts=(600, 700, 800),
                max_draws=2, feature_ts=(10, 50, 100, 200), layers=("mid_block", "up_blocks.0", "up_blocks.1"),
                poolings=("mean", "max"), ks=(1, 5), bank_sizes=(min(10_000, train),), max_feature_draws=2)


def _earlier_pick(out: Path) -> tuple[str, dict] | None:
    """(weights sha256, recorded pick) of a checkpoint an earlier fit left in `out`, if it recorded one."""
    try:
        score = json.loads((out / META_NAME).read_text()).get("score")
        return (file_sha256(out / WEIGHTS_NAME), score) if score else None
    except (OSError, ValueError):
        return None


def fit(cfg: FitConfig, say: Callable[[str], None] = print) -> dict:
    """Run every stage that is not done yet; returns what the summary names (the pick, files, seconds)."""
    out, data_dir = Path(cfg.out), resolve_data_dir(cfg.data_dir)
    spec = DataSpec(cfg.data, cfg.image_size, cfg.channels)
    run_dir, seconds = out / "run", {}

    def stage(name: str) -> float:
        say(f"[{STAGES.index(name) + 1}/{len(STAGES)}] {name}")
        return time.perf_counter()

    start = stage("train")
    train = TrainConfig(run_dir=str(run_dir), data=spec, model=ModelConfig(image_size=cfg.image_size, channels=cfg.channels),
                        epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed, data_dir=cfg.data_dir)
    run(train, resume=(run_dir / "state.json").is_file(), max_steps=cfg.max_steps, max_minutes=cfg.max_minutes,
        device=cfg.device)
    seconds["train"] = time.perf_counter() - start

    start = stage("export")
    earlier = _earlier_pick(out)
    step, _ = export_run(run_dir, out)
    ckpt = load_checkpoint(out, device=cfg.device or "cpu")
    if earlier is not None and earlier[0] == ckpt.sha256:  # the same weights keep the pick made for them
        record_score(out, earlier[1])
        ckpt.meta.score = earlier[1]
    say(f"exported step {step} to {out}")
    seconds["export"] = time.perf_counter() - start

    start = stage("select")
    if not ckpt.meta.score:
        select = SelectConfig(checkpoint=str(out), data_dir=cfg.data_dir, device=cfg.device, seed=cfg.seed,
                              **select_budget(spec, data_dir))
        table = score_candidates(select, ckpt)
        table.to_csv(out / "select.csv", index=False)
        ckpt.meta.score = pick_record(table, select.for_checkpoint(ckpt))
        record_score(out, ckpt.meta.score)
        fit_pick(ckpt, ckpt.meta.score, select)
    pick = Pick.of(ckpt)
    say(f"pick: {pick.default.describe()}, mean proxy AUROC {pick.mean:.4f} over {pick.candidates} candidates")
    seconds["select"] = time.perf_counter() - start

    start = stage("bank")
    want = pick.bank_term
    spec_f = want.spec
    try:
        bank = checkpoint_bank(ckpt)
    except BankError:  # a bank of earlier weights: built again
        bank = None
    if bank is None or bank.spec != spec_f or bank.n != want.bank:
        build_bank(ckpt, spec_f, want.bank, cfg.seed, cfg.data_dir).save(out / BANK_NAME)
    seconds["bank"] = time.perf_counter() - start

    start = stage("tables")
    result = evaluate(EvalConfig(checkpoint=str(out), ts=DEFAULT_TS, multi_ts=DEFAULT_MULTI_TS,
                                 feature_ts=FEATURE_CURVE_TS, seed=cfg.seed, data_dir=cfg.data_dir,
                                 cache_dir=str(out / "evals"), device=cfg.device), ckpt)
    seconds["tables"] = time.perf_counter() - start
    default = result.summary[(result.summary["metric"] == "default")].iloc[0]
    files = {p.relative_to(out).as_posix(): p.stat().st_size for p in sorted(out.rglob("*"))
             if p.is_file() and "run" not in p.relative_to(out).parts and not p.name.endswith(".lock")}
    return {"pick": pick, "ood": default["ood"], "auroc": float(default["auroc"]), "files": files, "seconds": seconds,
            "step": step}
