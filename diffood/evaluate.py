"""The evaluation sweep: model x ID set x OOD sets x t -> a tidy score table and an AUROC summary.

Scores are cached on disk, one CSV per (checkpoint, sampler, steps, n, n_val, seed, LPIPS), holding
every (set, t) computed so far: asking for another t or OOD set computes only what is missing. The
shipped checkpoint carries its tables in `<checkpoint>/evals/`, so the app opens without computing.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from .data import ID_DATASET, load_images, to_model_input
from .diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS, STEPPED, default_device, make_scheduler
from .metrics import auroc, fpr_at_95_tpr
from .model import DEFAULT_CHECKPOINT, Checkpoint, atomic_write_text, load_checkpoint, publish, temp_beside
from .perceptual import get_lpips
from .scoring import METRICS, MULTI_T, combined_ts, id_statistics, multi_t_scores, score_images

SCORES_VERSION = 1  # bump when the meaning of a cached score changes
# dense where detection happens, sparse below; 7 t keep the default sweep under 10 min on 2 CPU cores
DEFAULT_TS = (100, 300, 500, 600, 700, 800, 900)
# multi-t combines the upper half: below t = T/2 the error tracks how much ink an image has rather than
# whether it is in-distribution (MNIST digits, mostly black, then reconstruct *better* than clothes)
DEFAULT_MULTI_TS = tuple(t for t in DEFAULT_TS if t >= 500)
SCORE_COLUMNS = ["dataset", "split", "role", "index", "t", *METRICS]
SUMMARY_COLUMNS = ["ood", "metric", "t", "auroc", "fpr95", "n_id", "n_ood"]
ROLES = {"id_val": (ID_DATASET, "val"), "id": (ID_DATASET, "test")}


def default_cache_dir() -> Path:
    if os.environ.get("DIFFOOD_CACHE_DIR"):
        return Path(os.environ["DIFFOOD_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "diffood" / "evals"


@dataclass
class EvalConfig:
    checkpoint: str | None = None  # None: the shipped default
    ood: tuple[str, ...] = ("mnist",)
    ts: tuple[int, ...] = DEFAULT_TS
    multi_ts: tuple[int, ...] | None = DEFAULT_MULTI_TS  # the t combined into multi-t; None: all of `ts`
    sampler: str = DEFAULT_SAMPLER
    steps: int = DEFAULT_STEPS
    n: int = 1000  # ID test images, and images per OOD set
    n_val: int = 500  # ID validation images for the z-score statistics and the verdict threshold
    seed: int = 0
    lpips: bool = True
    batch_size: int = 64  # on CPU, larger batches ran slower (benchmarks/throughput.py)
    data_dir: str | None = None
    cache_dir: str | None = None
    device: str | None = None

    def cache_key(self, checkpoint_sha: str, lpips_available: bool) -> str:
        steps = self.steps if self.sampler in STEPPED else None  # the other samplers ignore it
        settings = {"checkpoint": checkpoint_sha, "sampler": self.sampler, "steps": steps, "n": self.n,
                    "n_val": self.n_val, "seed": self.seed, "lpips": lpips_available, "version": SCORES_VERSION}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]


@dataclass
class EvalResult:
    scores: pd.DataFrame  # one row per image x t, SCORE_COLUMNS
    summary: pd.DataFrame  # SUMMARY_COLUMNS; t is NaN on multi-t rows
    config: EvalConfig
    cache_file: Path | None = None
    computed: list[tuple[str, str, int]] = field(default_factory=list)  # (role, set, t) computed, not read

    @property
    def stats(self) -> pd.DataFrame:
        return id_statistics(self.scores[self.scores["role"] == "id_val"])

    @property
    def multi_ts(self) -> tuple[int, ...]:
        """The t the multi-t rows combine."""
        return combined_ts(self.config.multi_ts, self.scores["t"])


@lru_cache(maxsize=16)
def _read_csv(path: str, mtime_ns: int) -> pd.DataFrame:
    return pd.read_csv(path)


def _read_cached(paths: list[Path]) -> tuple[pd.DataFrame, Path | None]:
    """The first table that exists, read once per version of the file (the app asks on every rerun)."""
    for p in paths:
        if p.is_file():
            return _read_csv(str(p), p.stat().st_mtime_ns).copy(), p
    return pd.DataFrame(columns=SCORE_COLUMNS), None


def _write_atomic_csv(df: pd.DataFrame, path: Path) -> None:
    tmp = temp_beside(path)
    try:
        df.to_csv(tmp, index=False, float_format="%.6g", compression="gzip")
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def summarize(scores: pd.DataFrame, multi_ts=None) -> pd.DataFrame:
    """AUROC and FPR95 of ID test vs each OOD set, per metric and t, plus the multi-t rows."""
    stats = id_statistics(scores[scores["role"] == "id_val"])
    id_rows = scores[scores["role"] == "id"]
    rows = []
    for ood, ood_rows in scores[scores["role"] == "ood"].groupby("dataset", sort=False):
        for t in sorted(set(ood_rows["t"]) & set(id_rows["t"])):
            a, b = id_rows[id_rows["t"] == t], ood_rows[ood_rows["t"] == t]
            for m in METRICS:
                if a[m].notna().all() and b[m].notna().all():
                    rows.append([ood, m, t, auroc(a[m], b[m]), fpr_at_95_tpr(a[m], b[m]), len(a), len(b)])
        ts = combined_ts(multi_ts, set(ood_rows["t"]) & set(id_rows["t"]) & set(stats.index))
        if ts:
            mi = multi_t_scores(id_rows, stats, ts)[MULTI_T]
            mo = multi_t_scores(ood_rows, stats, ts)[MULTI_T]
            rows.append([ood, MULTI_T, np.nan, auroc(mi, mo), fpr_at_95_tpr(mi, mo), len(mi), len(mo)])
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _plan(cfg: EvalConfig, checkpoint: Checkpoint, lpips_available: bool):
    """(cached scores, where they came from, where to write, [((role, set, split, n), [t missing])])."""
    key = cfg.cache_key(checkpoint.sha256, lpips_available)
    write_path = Path(cfg.cache_dir or default_cache_dir()) / f"{key}.csv.gz"
    cached, found = _read_cached([write_path, checkpoint.path / "evals" / f"{key}.csv.gz"])
    sets = [("id_val", *ROLES["id_val"], cfg.n_val)]  # ID test images only matter against an OOD set
    sets += [("id", *ROLES["id"], cfg.n)] if cfg.ood else []
    sets += [("ood", name, "test", cfg.n) for name in cfg.ood]
    have = set(zip(cached["role"], cached["dataset"], cached["t"]))
    todo = [(s, [t for t in cfg.ts if (s[0], s[1], t) not in have]) for s in sets]
    return cached, found, write_path, [(s, ts) for s, ts in todo if ts]


def pending_images(cfg: EvalConfig, checkpoint: Checkpoint) -> int:
    """How many image reconstructions `evaluate(cfg)` still has to run (0: it only reads the cache)."""
    lpips_available = cfg.lpips and get_lpips("cpu") is not None
    return sum(s[3] * len(ts) for s, ts in _plan(cfg, checkpoint, lpips_available)[3])


def evaluate(
    cfg: EvalConfig,
    checkpoint: Checkpoint | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> EvalResult:
    """Score ID validation, ID test and each OOD set at every t (reading what the cache has) and
    summarise. `progress(done, total, what)` is called as images are scored."""
    device = torch.device(cfg.device) if cfg.device else default_device()
    if checkpoint is None:
        checkpoint = load_checkpoint(cfg.checkpoint or DEFAULT_CHECKPOINT, device=device)
    model = checkpoint.model
    device = next(model.parameters()).device
    lpips_net = get_lpips(str(device)) if cfg.lpips else None
    cached, found, write_path, todo = _plan(cfg, checkpoint, lpips_net is not None)
    total = sum(s[3] * len(ts) for s, ts in todo)
    done, frames, computed = 0, [cached], []
    scheduler = make_scheduler(checkpoint.meta.num_train_timesteps)
    for (role, name, split, n), ts in todo:
        x0 = to_model_input(load_images(name, split, n, cfg.seed, cfg.data_dir)).to(device)

        def step(k: int, _name=name) -> None:
            nonlocal done
            done += k
            if progress:
                progress(done, total, _name)

        df = score_images(model, x0, ts, scheduler, cfg.sampler, cfg.steps, cfg.seed, lpips_net, cfg.batch_size, step)
        frames.append(df.assign(dataset=name, split=split, role=role))
        computed += [(role, name, t) for t in ts]
    scores = pd.concat([f for f in frames if len(f)], ignore_index=True)[SCORE_COLUMNS]
    if computed:
        _write_atomic_csv(scores, write_path)
        settings = {k: v for k, v in asdict(cfg).items() if k not in ("checkpoint", "data_dir", "cache_dir", "device")}
        atomic_write_text(write_path.with_suffix("").with_suffix(".json"),
                          json.dumps({"checkpoint_sha256": checkpoint.sha256, **settings}, indent=2))
        found = write_path
    wanted = scores["t"].isin(cfg.ts) & (scores["role"].isin(["id_val", "id"]) | scores["dataset"].isin(cfg.ood))
    scores = scores[wanted].reset_index(drop=True)
    return EvalResult(scores, summarize(scores, cfg.multi_ts), cfg, found, computed)
