"""The evaluation sweep: model x ID set x OOD sets x t (x noise draws) -> a tidy score table and a summary.

Scores are cached on disk, one gzip CSV per (checkpoint, sampler, steps, n, n_val, seed, LPIPS), holding
every (set, t, draw) computed so far: asking for another t, draw or OOD set computes only what is
missing, and one process computes a table while the others wait for it (a file lock per table). The
shipped checkpoint carries its tables in `<checkpoint>/evals/`, so the app opens without computing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import warnings
import zlib
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from filelock import FileLock, Timeout

from .data import ID_DATASET, load_images, to_model_input
from .diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS, STEPPED, default_device, make_scheduler, network_calls
from .files import atomic_path, atomic_write_text, move_aside
from .metrics import auroc, fpr_at_95_tpr
from .model import DEFAULT_CHECKPOINT, Checkpoint, load_checkpoint
from .perceptual import get_lpips
from .scoring import METRICS, Detector, draw_column, score_images

SCORES_VERSION = 1  # bump when the meaning of a cached score changes
# dense where detection happens, sparse below
DEFAULT_TS = (100, 300, 500, 600, 700, 800, 900)
# the seed's multi-t combines the upper half: below t = T/2 the error tracks how much ink an image has
# rather than whether it is in-distribution (MNIST digits, mostly black, then reconstruct *better*)
DEFAULT_MULTI_TS = tuple(t for t in DEFAULT_TS if t >= 500)
# the default score, as `python -m diffood select` chose it on proxy OOD sets (README "Choosing the default")
DEFAULT_DETECTOR = Detector(ts=(700,), draws=4, metrics=("mse",))
DEFAULT, MULTI_T = "default", "multi-t"  # the names of the two combined scores in tables and pages
SCORE_COLUMNS = ["dataset", "split", "role", "index", "t", "draw", *METRICS]
SUMMARY_COLUMNS = ["ood", "metric", "t", "auroc", "fpr95", "n_id", "n_ood", "calls"]
ROLES = {"id_val": (ID_DATASET, "val"), "id": (ID_DATASET, "test")}


class CacheWarning(UserWarning):
    """A cached table could not be read; it was moved aside and is recomputed."""


def default_cache_dir() -> Path:
    if os.environ.get("DIFFOOD_CACHE_DIR"):
        return Path(os.environ["DIFFOOD_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "diffood" / "evals"


@dataclass
class EvalConfig:
    checkpoint: str | None = None  # None: the shipped default
    ood: tuple[str, ...] = ("mnist",)
    ts: tuple[int, ...] = DEFAULT_TS  # scored with one noise draw each: the per-t curves
    multi_ts: tuple[int, ...] | None = DEFAULT_MULTI_TS  # the t the seed's multi-t combines; None: all of `ts`
    draws: int = DEFAULT_DETECTOR.draws  # noise draws averaged by the default score
    detector_ts: tuple[int, ...] = DEFAULT_DETECTOR.ts
    detector_metrics: tuple[str, ...] = DEFAULT_DETECTOR.metrics
    sampler: str = DEFAULT_SAMPLER
    steps: int = DEFAULT_STEPS
    n: int = 1000  # ID test images, and images per OOD set
    n_val: int = 500  # ID validation images for the z-score statistics and the verdict threshold
    seed: int = 0
    lpips: bool = True
    id_test: bool = True  # score FashionMNIST test images (the ID side of every AUROC)
    recompute: bool = False  # read no cached table: compute everything (and replace the cache's table)
    precision: str = "auto"  # the UNet's, when evaluate() loads the checkpoint itself
    batch_size: int = 256
    data_dir: str | None = None
    cache_dir: str | None = None
    device: str | None = None

    @property
    def detector(self) -> Detector:
        return Detector(tuple(self.detector_ts), self.draws, tuple(self.detector_metrics))

    def cache_key(self, checkpoint_sha: str, lpips_available: bool) -> str:
        """Settings that change a score. Not the draws, t or sets (the table holds each one computed), and
        not the precision: bf16 and fp32 tables agree within 0.002 AUROC (README, Performance)."""
        steps = self.steps if self.sampler in STEPPED else None  # the other samplers ignore it
        settings = {"checkpoint": checkpoint_sha, "sampler": self.sampler, "steps": steps, "n": self.n,
                    "n_val": self.n_val, "seed": self.seed, "lpips": lpips_available, "version": SCORES_VERSION}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]

    def needed(self) -> dict[int, int]:
        """Draws needed per t: one at each sweep t, `draws` at each t of the default score."""
        need = {t: 1 for t in self.ts}
        for t in self.detector_ts:
            need[t] = max(need.get(t, 0), self.draws)
        return need


def combined_ts(multi_ts, available) -> tuple[int, ...]:
    """The t that multi-t combines: the chosen ones that were scored, or every scored t when none
    of them was (or none was chosen)."""
    available = sorted({int(t) for t in available})
    chosen = [t for t in available if multi_ts is None or t in set(multi_ts)]
    return tuple(chosen or available)


@dataclass
class EvalResult:
    scores: pd.DataFrame  # one row per image x t x draw, SCORE_COLUMNS
    summary: pd.DataFrame  # SUMMARY_COLUMNS; t is NaN on the rows of combined scores
    config: EvalConfig
    cache_file: Path | None = None
    computed: list[tuple[str, str, int]] = field(default_factory=list)  # (role, set, t) computed, not read

    @property
    def reference(self) -> pd.DataFrame:
        """The ID validation rows: what z-scores and thresholds are taken against."""
        return self.scores[self.scores["role"] == "id_val"]

    @property
    def multi_ts(self) -> tuple[int, ...]:
        """The t the seed's multi-t combines."""
        return combined_ts(self.config.multi_ts, self.scores["t"])

    @property
    def detectors(self) -> dict[str, Detector]:
        """The combined scores: the default and the seed's multi-t (z-mean of MSE and LPIPS, one draw)."""
        return {DEFAULT: self.config.detector, MULTI_T: Detector(self.multi_ts, 1, ("mse", "lpips"))}

    def detector_scores(self, name: str, keys=("role", "dataset")) -> pd.DataFrame:
        return self.detectors[name].scores(self.scores, self.reference, list(keys))


def summarize(scores: pd.DataFrame, detectors: dict[str, Detector], sampler: str = DEFAULT_SAMPLER,
              steps: int = DEFAULT_STEPS) -> pd.DataFrame:
    """AUROC and FPR95 of ID test vs each OOD set: per metric and t (draw 0), and per combined score."""
    reference = scores[scores["role"] == "id_val"]
    single = scores[draw_column(scores) == 0]
    id_rows = single[single["role"] == "id"]
    rows = []
    for ood, ood_rows in single[single["role"] == "ood"].groupby("dataset", sort=False):
        for t in sorted(set(ood_rows["t"]) & set(id_rows["t"])):
            a, b = id_rows[id_rows["t"] == t], ood_rows[ood_rows["t"] == t]
            for m in METRICS:
                if a[m].notna().all() and b[m].notna().all():
                    rows.append([ood, m, t, auroc(a[m], b[m]), fpr_at_95_tpr(a[m], b[m]), len(a), len(b),
                                 network_calls(sampler, steps, t)])
        these = scores[scores["role"].eq("id") | (scores["role"].eq("ood") & scores["dataset"].eq(ood))]
        for name, det in detectors.items():
            try:
                s = det.scores(these, reference, ["role"])
            except ValueError:  # the table lacks some (t, draw) this score needs
                continue
            a, b = s.loc[s["role"] == "id", "score"], s.loc[s["role"] == "ood", "score"]
            if len(a) and len(b):
                rows.append([ood, name, np.nan, auroc(a, b), fpr_at_95_tpr(a, b), len(a), len(b), det.calls(sampler, steps)])
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


@lru_cache(maxsize=16)
def _read_csv(path: str, mtime_ns: int) -> pd.DataFrame:
    df = pd.read_csv(path)
    missing = set(SCORE_COLUMNS) - {"draw"} - set(df.columns)
    if missing:
        raise ValueError(f"columns {sorted(missing)} missing")
    if "draw" not in df.columns:  # tables from before noise draws: one draw each
        df.insert(SCORE_COLUMNS.index("draw"), "draw", 0)
    df = df[SCORE_COLUMNS].astype({"index": int, "t": int, "draw": int})
    return df


def _read_cached(paths: list[Path]) -> tuple[pd.DataFrame, Path | None]:
    """The first readable table, read once per version of the file (the app asks on every rerun). An
    unreadable one is moved aside, with a warning, so that it is computed afresh."""
    for p in paths:
        if not p.is_file():
            continue
        try:
            return _read_csv(str(p), p.stat().st_mtime_ns).copy(), p
        except (OSError, EOFError, ValueError, KeyError, zlib.error, gzip.BadGzipFile, pd.errors.ParserError,
                UnicodeDecodeError) as e:
            try:
                where = f"moved to {move_aside(p)}"
            except OSError:  # a read-only install: leave it, compute into the cache folder instead
                where = "left in place"
            warnings.warn(f"unreadable score table {p} ({type(e).__name__}: {str(e)[:200]}); {where}, recomputing",
                          CacheWarning, stacklevel=3)
    return pd.DataFrame(columns=SCORE_COLUMNS), None


def _write_table(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g", compression="gzip")


@dataclass
class _Plan:
    cached: pd.DataFrame
    found: Path | None
    write_path: Path
    todo: list[tuple[tuple[str, str, str, int], int, list[int]]]  # ((role, set, split, n), t, draws missing)

    @property
    def images(self) -> int:
        return sum(s[3] * len(draws) for s, _, draws in self.todo)


def _plan(cfg: EvalConfig, checkpoint: Checkpoint, lpips_available: bool) -> _Plan:
    key = cfg.cache_key(checkpoint.sha256, lpips_available)
    write_path = Path(cfg.cache_dir or default_cache_dir()) / f"{key}.csv.gz"
    if cfg.recompute:
        cached, found = pd.DataFrame(columns=SCORE_COLUMNS), None
    else:
        cached, found = _read_cached([write_path, checkpoint.path / "evals" / f"{key}.csv.gz"])
    sets = [("id_val", *ROLES["id_val"], cfg.n_val)]  # ID test images only matter against an OOD set
    sets += [("id", *ROLES["id"], cfg.n)] if cfg.ood and cfg.id_test else []
    sets += [("ood", name, "test", cfg.n) for name in cfg.ood]
    have = set(zip(cached["role"], cached["dataset"], cached["t"], cached["draw"]))
    todo = []
    for s in sets:
        for t, k in cfg.needed().items():
            missing = [d for d in range(k) if (s[0], s[1], t, d) not in have]
            if missing:
                todo.append((s, t, missing))
    return _Plan(cached, found, write_path, todo)


def table_status(cfg: EvalConfig, checkpoint: Checkpoint) -> tuple[int, str]:
    """(How many image reconstructions `evaluate(cfg)` still has to run (0: it only reads the cache),
    which version of which table it would read): the second changes whenever the table does."""
    plan = _plan(cfg, checkpoint, cfg.lpips and get_lpips("cpu") is not None)
    version = f"{plan.found}@{plan.found.stat().st_mtime_ns}" if plan.found else ""
    return plan.images, version


def pending_images(cfg: EvalConfig, checkpoint: Checkpoint) -> int:
    return table_status(cfg, checkpoint)[0]


def evaluate(
    cfg: EvalConfig,
    checkpoint: Checkpoint | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> EvalResult:
    """Score ID validation, ID test and each OOD set at every t and draw needed (reading what the cache
    has) and summarise. `progress(done, total, what)` is called as images are scored."""
    device = torch.device(cfg.device) if cfg.device else default_device()
    if checkpoint is None:
        checkpoint = load_checkpoint(cfg.checkpoint or DEFAULT_CHECKPOINT, device=device, precision=cfg.precision)
    model = checkpoint.model
    device = next(model.parameters()).device
    lpips_net = get_lpips(str(device)) if cfg.lpips else None
    plan = _plan(cfg, checkpoint, lpips_net is not None)
    computed, scores = [], plan.cached
    if plan.todo:
        plan.write_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(plan.write_path) + ".lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if progress:
                progress(0, plan.images, "waiting for another process computing this table")
            lock.acquire()
        try:
            plan = _plan(cfg, checkpoint, lpips_net is not None)  # another process may have computed it meanwhile
            scores = plan.cached
            if plan.todo:
                computed = _compute(cfg, checkpoint, plan, lpips_net, progress)
                scores = pd.concat([f for f in [plan.cached, *computed] if len(f)], ignore_index=True)[SCORE_COLUMNS]
                _write_table(scores, plan.write_path)
                settings = {k: v for k, v in asdict(cfg).items()
                            if k not in ("checkpoint", "data_dir", "cache_dir", "device", "recompute", "id_test")}
                atomic_write_text(plan.write_path.with_suffix("").with_suffix(".json"),
                                  json.dumps({"checkpoint_sha256": checkpoint.sha256, **settings,
                                              "precision": checkpoint.precision}, indent=2))
                plan.found = plan.write_path
        finally:
            lock.release()
    need = cfg.needed()
    wanted = (scores["t"].map(need).fillna(0) > scores["draw"]) & (
        scores["role"].eq("id_val") | (scores["role"].eq("id") & cfg.id_test) | scores["dataset"].isin(cfg.ood))
    scores = scores[wanted].reset_index(drop=True)
    done = [(s[0], s[1], t) for s, t, _ in plan.todo] if computed else []
    result = EvalResult(scores, pd.DataFrame(columns=SUMMARY_COLUMNS), cfg, plan.found, done)
    result.summary = summarize(scores, result.detectors, cfg.sampler, cfg.steps)
    return result


def _compute(cfg, checkpoint: Checkpoint, plan: _Plan, lpips_net, progress) -> list[pd.DataFrame]:
    done, total, frames = 0, plan.images, []
    scheduler = make_scheduler(checkpoint.meta.num_train_timesteps)
    device = next(checkpoint.model.parameters()).device
    images = {}
    for (role, name, split, n), t, draws in plan.todo:
        if (name, split, n) not in images:
            images[name, split, n] = to_model_input(load_images(name, split, n, cfg.seed, cfg.data_dir)).to(device)

        def step(k: int, _name=name) -> None:
            nonlocal done
            done += k
            if progress:
                progress(done, total, _name)

        df = score_images(checkpoint.model, images[name, split, n], [t], scheduler, cfg.sampler, cfg.steps, cfg.seed,
                          lpips_net, cfg.batch_size, step, draws, checkpoint.precision)
        frames.append(df.assign(dataset=name, split=split, role=role))
    return frames
