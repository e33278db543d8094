"""The evaluation sweep: model x ID set x OOD sets x t (x noise draws) -> a tidy score table and a summary.

Scores are cached on disk, one gzip CSV per (checkpoint, sampler, steps, n, n_val, seed, LPIPS) for the
reconstruction errors and one per (checkpoint, feature bank, n, n_val, seed) for the feature distances,
each holding every (set, t, draw) computed so far: asking for another t, draw or OOD set computes only
what is missing, and one process computes a table while the others wait for it (a file lock per table).
The shipped checkpoint carries its tables in `<checkpoint>/evals/`, so the app opens without computing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import warnings
import zlib
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from filelock import FileLock, Timeout

from . import distributed
from .diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS, STEPPED, default_device, network_calls
from .errors import DiffoodError
from .features import KNN_METRICS, FeatureBank, FeatureSpec, bank_at, checkpoint_bank
from .files import atomic_path, atomic_write_text, move_aside
from .images import to_model_input
from .metrics import aupr_in, aupr_out, auroc, fpr_at_95_tpr, rates_at_threshold, threshold_at_tpr
from .model import DEFAULT_CHECKPOINT, Checkpoint, load_checkpoint
from .perceptual import get_lpips
from .scoring import METRICS, Detector, KnnTerm, draw_column, feature_distances, score_images
from .sets import load_images

SCORES_VERSION = 1  # bump when the meaning of a cached score changes
# dense where detection happens, sparse below
DEFAULT_TS = (100, 300, 500, 600, 700, 800, 900)
# multi-t (Graham et al.'s z-mean) combines the upper half: below t = T/2 the error tracks how much ink an image has
# rather than whether it is in-distribution (MNIST digits, mostly black, then reconstruct *better*)
DEFAULT_MULTI_TS = tuple(t for t in DEFAULT_TS if t >= 500)
# What `python -m diffood select` chose on proxy OOD sets (docs/selection.md). Among
# reconstruction errors: MSE at t = 700 over 4 noise draws. Over every candidate, the default score: the
# feature term alone, the distance to the nearest of all 58,000 training images in max-pooled up_blocks.0
# features at t = 50, one call per image. Its bank ships with the checkpoint (`python -m diffood bank`).
RECONSTRUCTION_DETECTOR = Detector(ts=(700,), draws=4, metrics=("mse",))
DEFAULT_KNN = KnnTerm(FeatureSpec("up_blocks.0", 50, "max"), k=1, draws=1, bank=58_000)
# The pick a checkpoint without one of its own scores with: the FashionMNIST model's (diffood.json "score")
FALLBACK_PICK = {
    "default": {"kind": "features", "features": {"layer": DEFAULT_KNN.spec.layer, "t": DEFAULT_KNN.spec.t,
                                                 "pooling": DEFAULT_KNN.spec.pooling, "k": DEFAULT_KNN.k,
                                                 "draws": DEFAULT_KNN.draws, "bank": DEFAULT_KNN.bank}},
    "reconstruction": {"ts": list(RECONSTRUCTION_DETECTOR.ts), "draws": RECONSTRUCTION_DETECTOR.draws,
                       "metrics": list(RECONSTRUCTION_DETECTOR.metrics)},
}
FEATURE_CURVE_TS = (1, 10, 25, 50, 100, 200, 300, 500)  # the feature term's noise levels the ROC page plots
SCORES = ("features", "reconstruction", "both")  # what the default score is made of; "both": the z-mean of the two
DEFAULT_SCORE = "features"
# the combined scores by name, in tables and pages
DEFAULT, RECONSTRUCTION, FEATURES, COMBINED, MULTI_T = "default", "reconstruction", "features", "both", "multi-t"
KEY_COLUMNS = ["dataset", "split", "role", "index", "t", "draw"]
SCORE_COLUMNS = [*KEY_COLUMNS, *METRICS]
FEATURE_COLUMNS = [*KEY_COLUMNS, *KNN_METRICS]
SUMMARY_COLUMNS = ["ood", "metric", "t", "auroc", "fpr95", "aupr_in", "aupr_out", "n_id", "n_ood", "calls", "tpr",
                   "threshold", "id_accepted", "ood_accepted"]


class CacheWarning(UserWarning):
    """A cached table could not be read; it was moved aside and is recomputed."""


def default_cache_dir() -> Path:
    if os.environ.get("DIFFOOD_CACHE_DIR"):
        return Path(os.environ["DIFFOOD_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "diffood" / "evals"


@dataclass
class EvalConfig:
    checkpoint: str | None = None  # None: the shipped default
    ood: tuple[str, ...] | None = None  # None: the checkpoint's own default OOD set; (): the ID sets alone
    ts: tuple[int, ...] = DEFAULT_TS  # scored with one noise draw each: the per-t curves
    multi_ts: tuple[int, ...] | None = DEFAULT_MULTI_TS  # the t multi-t combines; None: all of `ts`
    # the default score and its terms; None: the checkpoint's recorded pick (`diffood select`), else FALLBACK_PICK
    score: str | None = None  # one of SCORES
    draws: int | None = None  # noise draws the reconstruction score averages
    detector_ts: tuple[int, ...] | None = None  # the reconstruction score's t
    detector_metrics: tuple[str, ...] | None = None
    knn_k: int | None = None  # the feature term's k and noise draws; the rest of it comes from the bank
    knn_draws: int | None = None
    feature_ts: tuple[int, ...] = ()  # more t_f for the feature term's curve (one draw each; a bank per t_f)
    tpr: float = 0.95  # the verdicts' target ID acceptance: the summary's threshold and the shares it accepts
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

    def detectors(self, bank: FeatureBank | None) -> dict[str, Detector]:
        """The default score first, then the reconstruction score, the feature term alone and the two
        combined, each once. The feature term needs the checkpoint's bank: without one the default is the
        reconstruction score (EvalResult.notes says so)."""
        if self.score not in SCORES:
            raise ValueError(f"unknown score {self.score!r}; choose one of {list(SCORES)}")
        recon = Detector(tuple(self.detector_ts), self.draws, tuple(self.detector_metrics))
        named = {RECONSTRUCTION: recon}
        if bank is not None and self.score != "reconstruction":
            knn = KnnTerm(bank.spec, self.knn_k, self.knn_draws, bank.n)
            named |= {FEATURES: Detector(knn=knn), COMBINED: replace(recon, knn=knn)}
        default = named.get({"features": FEATURES, "both": COMBINED}.get(self.score, RECONSTRUCTION), recon)
        return {DEFAULT: default, **{name: d for name, d in named.items() if d != default}}

    def detector(self, bank: FeatureBank | None) -> Detector:
        """The default score."""
        return self.detectors(bank)[DEFAULT]

    def feature_key(self, checkpoint_sha: str, bank: FeatureBank) -> str:
        """Settings that change a feature distance: the bank (its settings and weights), the images, the seed."""
        settings = {"checkpoint": checkpoint_sha, "bank": bank.fingerprint(), "n": self.n, "n_val": self.n_val,
                    "seed": self.seed, "version": SCORES_VERSION, "kind": "features"}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]

    def cache_key(self, checkpoint_sha: str, lpips_available: bool) -> str:
        """Settings that change a score. Not the draws, t or sets (the table holds each one computed), and
        not the precision: bf16 and fp32 tables agree within 0.002 AUROC (docs/performance.md)."""
        steps = self.steps if self.sampler in STEPPED else None  # the other samplers ignore it
        settings = {"checkpoint": checkpoint_sha, "sampler": self.sampler, "steps": steps, "n": self.n,
                    "n_val": self.n_val, "seed": self.seed, "lpips": lpips_available, "version": SCORES_VERSION}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]

    def needed(self) -> dict[int, int]:
        """Draws needed per t: one at each sweep t, `draws` at each t of the reconstruction score."""
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
    scores: pd.DataFrame  # one row per image x t x draw: SCORE_COLUMNS, plus KNN_METRICS with a feature bank
    summary: pd.DataFrame  # SUMMARY_COLUMNS; t is NaN on the rows of combined scores
    config: EvalConfig
    cache_file: Path | None = None
    computed: list[tuple[str, str, int]] = field(default_factory=list)  # (role, set, t) computed, not read
    bank: FeatureBank | None = None  # the checkpoint's feature bank, when it has one
    notes: list[str] = field(default_factory=list)  # what a reader should know, e.g. a score left without features

    @property
    def reference(self) -> pd.DataFrame:
        """The ID validation rows: what z-scores and thresholds are taken against."""
        return self.scores[self.scores["role"] == "id_val"]

    @property
    def multi_ts(self) -> tuple[int, ...]:
        """The t multi-t combines."""
        return combined_ts(self.config.multi_ts, self.scores["t"][self.scores["mse"].notna()])

    @property
    def detectors(self) -> dict[str, Detector]:
        """The combined scores (EvalConfig.detectors) and multi-t (Graham et al., CVPR-W 2023: the z-mean of MSE and LPIPS over t, one draw)."""
        return {**self.config.detectors(self.bank), MULTI_T: Detector(self.multi_ts, 1, ("mse", "lpips"))}

    def detector_scores(self, name: str, keys=("role", "dataset")) -> pd.DataFrame:
        return self.detectors[name].scores(self.scores, self.reference, list(keys))


def summarize(scores: pd.DataFrame, detectors: dict[str, Detector], sampler: str = DEFAULT_SAMPLER,
              steps: int = DEFAULT_STEPS, knn_metric: str | None = None, tpr: float = 0.95) -> pd.DataFrame:
    """AUROC, FPR95, AUPR-In and AUPR-Out (metrics.py) of ID test vs each OOD set: per reconstruction
    metric and t (draw 0), per t_f of the feature term (`knn_metric`: one call each), and per combined
    score, whose rows also hold the threshold accepting `tpr` of ID validation images and the shares of
    ID test and OOD images it accepts."""
    reference = scores[scores["role"] == "id_val"]
    first = scores[draw_column(scores) == 0]
    per_t = [(m, first[first[m].notna()], lambda t: network_calls(sampler, steps, t)) for m in METRICS]
    if knn_metric in scores.columns:
        per_t.append((knn_metric, first[first[knn_metric].notna()], lambda t: 1))
    rows = []
    for ood in scores.loc[scores["role"] == "ood", "dataset"].unique():
        for m, single, calls in per_t:
            id_rows = single[single["role"] == "id"]
            ood_rows = single[(single["role"] == "ood") & (single["dataset"] == ood)]
            for t in sorted(set(ood_rows["t"]) & set(id_rows["t"])):
                a, b = id_rows.loc[id_rows["t"] == t, m], ood_rows.loc[ood_rows["t"] == t, m]
                rows.append([ood, m, t, *_rates(a, b), len(a), len(b), calls(t), *[np.nan] * 4])
        these = scores[scores["role"].eq("id") | (scores["role"].eq("ood") & scores["dataset"].eq(ood))]
        for name, det in detectors.items():
            try:
                s = det.scores(these, reference, ["role"])
            except ValueError:  # the table lacks some (t, draw) this score needs
                continue
            a, b = s.loc[s["role"] == "id", "score"], s.loc[s["role"] == "ood", "score"]
            if len(a) and len(b):
                threshold = threshold_at_tpr(det.scores(reference, reference)["score"], tpr)
                rows.append([ood, name, np.nan, *_rates(a, b), len(a), len(b), det.calls(sampler, steps), tpr,
                             threshold, *rates_at_threshold(a, b, threshold)])
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _rates(id_scores, ood_scores) -> list[float]:
    """AUROC, FPR95, AUPR-In, AUPR-Out: the summary's columns, in order."""
    return [auroc(id_scores, ood_scores), fpr_at_95_tpr(id_scores, ood_scores), aupr_in(id_scores, ood_scores),
            aupr_out(id_scores, ood_scores)]


@lru_cache(maxsize=16)
def _read_csv(path: str, mtime_ns: int, columns: tuple[str, ...]) -> pd.DataFrame:
    df = pd.read_csv(path)
    missing = set(columns) - {"draw"} - set(df.columns)
    if missing:
        raise ValueError(f"columns {sorted(missing)} missing")
    if "draw" not in df.columns:  # tables from before noise draws: one draw each
        df.insert(columns.index("draw"), "draw", 0)
    return df[list(columns)].astype({"index": int, "t": int, "draw": int})


def _read_cached(paths: list[Path], columns: list[str]) -> tuple[pd.DataFrame, Path | None]:
    """The first readable table, read once per version of the file (the app asks on every rerun). An
    unreadable one is moved aside, with a warning, so that it is computed afresh."""
    for p in paths:
        if not p.is_file():
            continue
        try:
            return _read_csv(str(p), p.stat().st_mtime_ns, tuple(columns)).copy(), p
        except (OSError, EOFError, ValueError, KeyError, zlib.error, gzip.BadGzipFile, pd.errors.ParserError,
                UnicodeDecodeError) as e:
            try:
                where = f"moved to {move_aside(p)}"
            except OSError:  # a read-only install: leave it, compute into the cache folder instead
                where = "left in place"
            warnings.warn(f"unreadable score table {p} ({type(e).__name__}: {str(e)[:200]}); {where}, recomputing",
                          CacheWarning, stacklevel=3)
    return pd.DataFrame(columns=columns), None


def _write_table(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g", compression="gzip")


@dataclass
class _Table:
    """One cached table: what it is called, holds and needs, and how a missing part is computed."""

    name: str  # "reconstruction" or "features"
    key: str
    columns: list[str]
    need: dict[int, int]  # draws per t
    score: Callable[[torch.Tensor, int, list[int], Callable[[int], None]], pd.DataFrame]  # (images, t, draws, step)
    sidecar: dict  # the settings written beside the table


@dataclass
class _Plan:
    cached: pd.DataFrame
    found: Path | None
    write_path: Path
    todo: list[tuple[tuple[str, str, str, int], int, list[int]]]  # ((role, set, split, n), t, draws missing)

    @property
    def images(self) -> int:
        return sum(s[3] * len(draws) for s, _, draws in self.todo)


def _tables(cfg: EvalConfig, checkpoint: Checkpoint, lpips_net, bank: FeatureBank | None) -> list[_Table]:
    """The reconstruction table, and the feature table when the default score has a feature term."""
    model, scheduler = checkpoint.model, checkpoint.scheduler
    settings = {k: v for k, v in asdict(cfg).items()
                if k not in ("checkpoint", "data_dir", "cache_dir", "device", "recompute", "id_test")}
    tables = [_Table(
        "reconstruction", cfg.cache_key(checkpoint.key, lpips_net is not None), SCORE_COLUMNS, cfg.needed(),
        lambda x, t, draws, step: score_images(model, x, [t], scheduler, cfg.sampler, cfg.steps, cfg.seed, lpips_net,
                                               cfg.batch_size, step, draws, checkpoint.precision),
        {"checkpoint_sha256": checkpoint.sha256, **settings, "precision": checkpoint.precision})]
    knn = next((d.knn for d in cfg.detectors(bank).values() if d.knn), None)
    if knn is not None:
        need = {**{t: 1 for t in cfg.feature_ts}, knn.spec.t: knn.draws}
        cache = default_cache_dir()  # banks at other t_f are a cache of their own, never beside shipped tables
        tables.append(_Table(
            "features", cfg.feature_key(checkpoint.key, bank), FEATURE_COLUMNS, need,
            lambda x, t, draws, step: feature_distances(
                model, x, bank_at(checkpoint, bank, t, cfg.data_dir, cache, cfg.batch_size), draws, cfg.seed,
                checkpoint.precision, cfg.batch_size, progress=step, scheduler=scheduler),
            {"checkpoint_sha256": checkpoint.sha256, "bank": bank.metadata(), "n": cfg.n, "n_val": cfg.n_val,
             "seed": cfg.seed, "knn_draws": knn.draws, "precision": checkpoint.precision}))
    return tables


def _plan(cfg: EvalConfig, checkpoint: Checkpoint, table: _Table) -> _Plan:
    write_path = Path(cfg.cache_dir or default_cache_dir()) / f"{table.key}.csv.gz"
    if cfg.recompute:
        cached, found = pd.DataFrame(columns=table.columns), None
    else:
        cached, found = _read_cached([write_path, checkpoint.path / "evals" / f"{table.key}.csv.gz"], table.columns)
    id_name = checkpoint.data.name
    sets = [("id_val", id_name, "val", cfg.n_val)]  # ID test images only matter against an OOD set
    sets += [("id", id_name, "test", cfg.n)] if cfg.ood and cfg.id_test else []
    sets += [("ood", name, "test", cfg.n) for name in cfg.ood]
    have = set(zip(cached["role"], cached["dataset"], cached["t"], cached["draw"]))
    todo = []
    for s in sets:
        for t, k in table.need.items():
            missing = [d for d in range(k) if (s[0], s[1], t, d) not in have]
            if missing:
                todo.append((s, t, missing))
    return _Plan(cached, found, write_path, todo)


def _bank(cfg: EvalConfig, checkpoint: Checkpoint) -> FeatureBank | None:
    return checkpoint_bank(checkpoint) if cfg.score != "reconstruction" else None


def checkpoint_pick(checkpoint: Checkpoint) -> tuple[dict, bool]:
    """(The pick the checkpoint records, or FALLBACK_PICK; whether it is its own)."""
    own = checkpoint.meta.score
    return (own, True) if own else (FALLBACK_PICK, False)


def pick_features(checkpoint: Checkpoint) -> dict:
    """The feature term the checkpoint's pick uses (layer, t, pooling, k, draws, bank), or the fallback's where
    the pick has none: what its bank is built for."""
    return checkpoint_pick(checkpoint)[0]["default"].get("features") or FALLBACK_PICK["default"]["features"]


def for_checkpoint(cfg: EvalConfig, checkpoint: Checkpoint) -> EvalConfig:
    """The config with every unset part of the score taken from the checkpoint's pick, and its OOD sets made
    full for its ID set: none given is the checkpoint's default OOD set; "vflip" is "<id>-vflip". The ID set
    itself is refused as an OOD set."""
    pick, _ = checkpoint_pick(checkpoint)
    default = pick["default"]
    recon = default.get("reconstruction") or pick["reconstruction"]
    knn = pick_features(checkpoint)
    cfg = replace(cfg, score=cfg.score or default["kind"], draws=cfg.draws or recon["draws"],
                  detector_ts=tuple(cfg.detector_ts or recon["ts"]),
                  detector_metrics=tuple(cfg.detector_metrics or recon["metrics"]),
                  knn_k=cfg.knn_k or knn["k"], knn_draws=cfg.knn_draws or knn["draws"])
    data = checkpoint.data
    ood = tuple(data.resolve(name) for name in (cfg.ood if cfg.ood is not None else (data.default_ood,)))
    same = [name for name in ood if name in (data.name, data.spec.source)]
    if same:
        raise DiffoodError(f"{same[0]} is this checkpoint's ID set, so it cannot be its OOD set; "
                           f"its default OOD set is {data.default_ood}")
    return replace(cfg, ood=ood)


def table_status(cfg: EvalConfig, checkpoint: Checkpoint) -> tuple[int, str]:
    """(How many images `evaluate(cfg)` still has to run through the UNet (0: it only reads the cache),
    which version of which tables it would read): the second changes whenever a table does."""
    cfg = for_checkpoint(cfg, checkpoint)
    lpips_net = get_lpips("cpu") if cfg.lpips else None
    plans = [_plan(cfg, checkpoint, table) for table in _tables(cfg, checkpoint, lpips_net, _bank(cfg, checkpoint))]
    version = ";".join(f"{p.found}@{p.found.stat().st_mtime_ns}" for p in plans if p.found)
    return sum(p.images for p in plans), version


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
    device = next(checkpoint.model.parameters()).device
    cfg = for_checkpoint(cfg, checkpoint)
    lpips_net = get_lpips(str(device)) if cfg.lpips else None
    bank = _bank(cfg, checkpoint)
    notes = [] if bank is not None or cfg.score == "reconstruction" else [
        f"{checkpoint.path} has no feature bank, so the default score is the reconstruction score; "
        f"build one with `diffood bank --checkpoint {checkpoint.path}`"]
    pick, own = checkpoint_pick(checkpoint)
    if not own:
        notes.append(f"{checkpoint.data.label}'s model records no score of its own, so it scores with the settings "
                     f"chosen for the FashionMNIST model; `diffood select --checkpoint {checkpoint.path}` chooses "
                     f"its own on proxies of its ID set")
    want = (pick["default"].get("features") or {}) if own else {}
    if bank is not None and want and (want["layer"], want["t"], want["pooling"], want["bank"]) != (
            bank.spec.layer, bank.spec.t, bank.spec.pooling, bank.n):
        notes.append(f"the checkpoint's pick asks for a bank of {want['bank']:,} images at {want['layer']}, t = "
                     f"{want['t']}, {want['pooling']} pooling; its bank holds {bank.describe()}: rebuild it with "
                     f"`diffood bank --checkpoint {checkpoint.path}`")
    frames, computed, found = [], [], None
    for table in _tables(cfg, checkpoint, lpips_net, bank):
        scores, plan, done = _fill(cfg, checkpoint, table, progress)
        computed += done
        found = found or plan.found
        wanted = (scores["t"].map(table.need).fillna(0) > scores["draw"]) & (
            scores["role"].eq("id_val") | (scores["role"].eq("id") & cfg.id_test) | scores["dataset"].isin(cfg.ood))
        frames.append(scores[wanted])
    scores = frames[0]
    for other in frames[1:]:
        scores = scores.merge(other, on=KEY_COLUMNS, how="outer", sort=False)
    scores = scores.astype({"index": int, "t": int, "draw": int}).reset_index(drop=True)
    result = EvalResult(scores, pd.DataFrame(columns=SUMMARY_COLUMNS), cfg, found, computed, bank, notes)
    knn = next((d.knn for d in result.detectors.values() if d.knn), None)
    result.summary = summarize(scores, result.detectors, cfg.sampler, cfg.steps, knn.metric if knn else None, cfg.tpr)
    return result


def _fill(cfg: EvalConfig, checkpoint: Checkpoint, table: _Table, progress) -> tuple[pd.DataFrame, _Plan, list]:
    """The table with every missing part computed and written, under its file lock. Under torchrun, rank 0
    holds the lock, decides what is missing and writes; every rank computes its share."""
    plan = _plan(cfg, checkpoint, table)
    plan.cached, plan.todo, plan.found = distributed.broadcast((plan.cached, plan.todo, plan.found))  # rank 0's view
    if not plan.todo:
        return plan.cached, plan, []
    lock = FileLock(str(plan.write_path) + ".lock") if distributed.is_main() else None
    if lock is not None:
        plan.write_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if progress:
                progress(0, plan.images, "waiting for another process computing this table")
            lock.acquire()
    try:
        plan = _plan(cfg, checkpoint, table)  # another process may have computed it meanwhile
        plan.cached, plan.todo = distributed.broadcast((plan.cached, plan.todo))  # rank 0's view
        if not plan.todo:
            return plan.cached, plan, []
        computed = _compute(cfg, checkpoint, plan, table, progress)
        scores = pd.concat([f for f in [plan.cached, *computed] if len(f)], ignore_index=True)[table.columns]
        if lock is not None:
            _write_table(scores, plan.write_path)
            atomic_write_text(plan.write_path.with_suffix("").with_suffix(".json"), json.dumps(table.sidecar, indent=2))
        plan.found = plan.write_path
        return scores, plan, [(s[0], s[1], t) for s, t, _ in plan.todo]
    finally:
        if lock is not None:
            lock.release()


def _compute(cfg, checkpoint: Checkpoint, plan: _Plan, table: _Table, progress) -> list[pd.DataFrame]:
    done, total, frames = 0, plan.images, []
    device = next(checkpoint.model.parameters()).device
    images = {}
    for (role, name, split, n), _, _ in plan.todo:  # every set read before any is scored: bad data fails at once
        if (name, split, n) not in images:
            pixels = load_images(name, split, n, cfg.seed, cfg.data_dir, id=checkpoint.data)
            images[name, split, n] = to_model_input(pixels).to(device)
    for (role, name, split, n), t, draws in plan.todo:
        def step(k: int, _name=name) -> None:
            nonlocal done
            done += k
            if progress:
                progress(done, total, f"{table.name}: {_name}")

        df = table.score(images[name, split, n], t, draws, step)
        frames.append(df.assign(dataset=name, split=split, role=role))
    return frames
