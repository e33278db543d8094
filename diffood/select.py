"""The selection protocol: choose a checkpoint's default score on its ID validation images against proxy OOD
sets made from those validation images and from noise alone. No reported image enters it: the ID test set, the
other data sets, and the flips and noise that are reported are drawn from the test split and the test noise stream.

The ID validation images (held out of training) in a seed-fixed order: the first `n_ref` are the z-score
reference and the images the transformed proxies are made from (vflip, hflip, invert, shuffle); the next `n_id`
are the ID side of every AUROC; the noise proxies come from the validation noise stream (sets.NOISE_STREAMS).
Training images enter only the banks and the fitted densities.

Candidates, each within `max_calls` network calls per image:
- reconstruction: every run of consecutive t in `ts`, 1..max_draws noise draws, MSE, LPIPS or both;
- features: the k-th nearest distance to a bank of ID training images, for every layer, pooling, t_f
  in `feature_ts`, k, bank size and 1..max_feature_draws draws (one call each, distances averaged);
- gaussian: the Mahalanobis distance on the same embeddings (one draw), each covariance in `covariances`;
- methods: each kind named in `methods` (DiffPath, MSMA, the likelihood bound), with the checkpoint's fit;
- combined: the z-mean of one of the `combine_features` best feature or gaussian candidates and one of the
  `combine_recon` best reconstruction candidates or one of the methods.

The rule (RULE): take the candidate with the highest mean AUROC over the proxies; a candidate ties with it when
the paired interval (`level`, DeLong's, metrics.paired_mean_auroc_difference) of its mean AUROC minus the best's
reaches zero: the data cannot tell it worse. Among the ties, the fewest network calls, then the smaller bank,
then the higher worst-proxy AUROC.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from itertools import product
from typing import Callable

import numpy as np
import pandas as pd
import torch

from .density import COVARIANCES, fit_gaussian
from .diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS, PRECISIONS, SAMPLERS, sampler_name
from .evaluate import EvalConfig, default_cache_dir, evaluate
from .features import BANK_DRAW, KS, LAYERS, POOLINGS, embed_set, knn_distances
from .fitted import has_fit
from .metrics import LEVEL, auroc, paired_mean_auroc_difference
from .model import DEFAULT_CHECKPOINT, Checkpoint, load_checkpoint
from .options import doc
from .scores import (FALLBACK, Context, Features, GaussianHead, Pick, Reconstruction, ScoreSpec, ZMean, from_dict,
                     parse)
from .scores.base import Fitted, fit_and_save, zmean_frame

PROXIES = ("vflip", "hflip", "invert", "shuffle", "gaussian-noise", "uniform")  # built from the ID validation set
PROXY_SPLIT = "val"
CANDIDATE_TS = (500, 600, 700, 800, 900)
METRIC_SETS = (("mse",), ("lpips",), ("mse", "lpips"))
FEATURE_TS = (1, 10, 25, 50, 100, 200, 300)
METHODS = ("diffpath", "diffpath(variant=1d)", "msma", "likelihood")
GAUSSIAN_TRAIN = 10_000  # bank rows a gaussian candidate is fitted on, as GaussianHead's default


@dataclass
class SelectConfig:
    """The selection protocol's candidates and images."""

    checkpoint: str | None = field(default=None, metadata=doc("checkpoint folder, or a shipped model by name"))
    proxies: tuple[str, ...] = field(default=PROXIES, metadata=doc(
        "proxy OOD sets: transforms of the ID validation images, and noise"))
    ts: tuple[int, ...] = field(default=CANDIDATE_TS, metadata=doc(
        "candidate t; candidates take runs of them (none: no reconstruction candidate; under torchrun, spell out "
        "--timesteps)", flags=("--t", "--timesteps")))
    max_draws: int = field(default=4, metadata=doc("noise draws of reconstruction candidates, at most"))
    sampler: str = field(default=DEFAULT_SAMPLER, metadata=doc("how reconstructions are denoised", choices=SAMPLERS))
    steps: int = field(default=DEFAULT_STEPS, metadata=doc("network calls per reconstruction (strided, ddim)"))
    max_calls: int = field(default=25, metadata=doc("network calls per image, at most"))
    n_ref: int = field(default=1000, metadata=doc(
        "ID validation images for the z-score reference, which the transformed proxies are made from"))
    n_id: int = field(default=1000, metadata=doc("further ID validation images: the ID side of each AUROC"))
    n_proxy: int = field(default=1000, metadata=doc("images per proxy set (at most --n-ref)"))
    level: float = field(default=LEVEL, metadata=doc(
        "the paired interval's level: a candidate whose interval against the best reaches 0 ties with it"))
    feature_ts: tuple[int, ...] = field(default=FEATURE_TS, metadata=doc(
        "t_f of the feature candidates (none: no feature candidate)", flags=("--feature-t",)))
    layers: tuple[str, ...] = field(default=LAYERS, metadata=doc("UNet blocks of the feature candidates",
                                                                   choices=LAYERS))
    poolings: tuple[str, ...] = field(default=POOLINGS, metadata=doc("poolings of the feature candidates",
                                                                       choices=POOLINGS))
    ks: tuple[int, ...] = field(default=KS, metadata=doc("k of the feature candidates"))
    bank_sizes: tuple[int, ...] = field(default=(10_000,), metadata=doc("ID training images per bank"))
    max_feature_draws: int = field(default=4, metadata=doc("noise draws of feature candidates, at most"))
    covariances: tuple[str, ...] = field(default=tuple(COVARIANCES), metadata=doc(
        "covariances of the gaussian candidates, on every feature candidate's embedding (none: no gaussian)",
        choices=tuple(COVARIANCES)))
    methods: tuple[str, ...] = field(default=METHODS, metadata=doc(
        "other score kinds as candidates, each with the checkpoint's fit (diffood fit-score)"))
    combine_features: int = field(default=20, metadata=doc("best feature candidates combined with ..."))
    combine_recon: int = field(default=10, metadata=doc("... the best reconstruction candidates, and each method"))
    seed: int = field(default=0, metadata=doc("fixes the images drawn from each set and the noise"))
    precision: str = field(default="auto", metadata=doc("the UNet's: auto = bf16 where the hardware computes it",
                                                          choices=PRECISIONS))
    data_dir: str | None = field(default=None, metadata=doc("torchvision's data folder (default $DIFFOOD_DATA_DIR)"))
    cache_dir: str | None = field(default=None, metadata=doc("where tables and embeddings are kept"))
    device: str | None = field(default=None, metadata=doc("cuda, mps or cpu (default: the best available)"))

    def __post_init__(self):
        if self.n_proxy > self.n_ref:
            raise ValueError(f"--n-proxy {self.n_proxy} exceeds --n-ref {self.n_ref}: the transformed proxies are "
                             f"made from the reference images, so that none is an image of the ID side")

    def for_checkpoint(self, checkpoint: Checkpoint) -> "SelectConfig":
        """Proxy names made full for the checkpoint's ID set ("vflip" -> "<id>-vflip")."""
        return replace(self, proxies=tuple(checkpoint.data.resolve(p) for p in self.proxies))

    def method_specs(self) -> list[ScoreSpec]:
        return [m for m in (parse(name) for name in self.methods) if m.calls(self.sampler, self.steps) <= self.max_calls]

    def eval_config(self) -> EvalConfig:
        """The evaluation that fills the reconstruction table and each method's: the ID validation images and the
        proxies, no ID test image."""
        methods = tuple(self.method_specs())
        score = Reconstruction(tuple(self.ts), self.max_draws) if self.ts else (methods[0] if methods else None)
        return EvalConfig(checkpoint=self.checkpoint, ood=tuple(self.proxies), ts=tuple(self.ts), multi_ts=None,
                          score=score, methods=methods, sampler=self.sampler, steps=self.steps, n=self.n_proxy,
                          n_val=self.n_ref + self.n_id, seed=self.seed, id_test=False, ood_split=PROXY_SPLIT,
                          precision=self.precision, data_dir=self.data_dir, cache_dir=self.cache_dir, device=self.device)


def candidates(cfg: SelectConfig) -> list[Reconstruction]:
    out = []
    for length in range(1, len(cfg.ts) + 1):
        for start in range(len(cfg.ts) - length + 1):
            for draws in range(1, cfg.max_draws + 1):
                for metrics in METRIC_SETS:
                    d = Reconstruction(tuple(cfg.ts[start:start + length]), draws, metrics)
                    if d.calls(cfg.sampler, cfg.steps) <= cfg.max_calls:
                        out.append(d)
    return out


@dataclass
class Candidate:
    """A candidate score, its settings as the table shows them, and its z-scores on the ID side and each proxy
    (row i of every candidate is the same image)."""

    spec: ScoreSpec
    settings: dict
    z: dict[str, np.ndarray]

    def row(self, cfg: SelectConfig) -> dict:
        proxies = cfg.proxies
        row = {**self.settings, "calls": self.spec.calls(cfg.sampler, cfg.steps), "spec": json.dumps(self.spec.to_dict(), sort_keys=True),
               **{p: auroc(self.z["id"], self.z[p]) for p in proxies}}
        row["mean"] = float(np.mean([row[p] for p in proxies]))
        row["worst"] = min(row[p] for p in proxies)
        return row


def _evaluated_candidates(cfg: SelectConfig, checkpoint, progress) -> list[Candidate]:
    """Every reconstruction candidate and each method, from one evaluation of the validation images and proxies."""
    ecfg = cfg.eval_config()
    if ecfg.score is None:
        return []
    result = evaluate(ecfg, checkpoint, progress)
    val = {n: t[t["role"] == "id_val"] for n, t in result.tables.items()}
    reference = {n: v[v["index"] < cfg.n_ref] for n, v in val.items()}
    side = {n: v[v["index"] >= cfg.n_ref] for n, v in val.items()}
    ood = {n: t[t["role"] == "ood"] for n, t in result.tables.items()}

    def z(spec: ScoreSpec) -> dict[str, np.ndarray]:
        out = {"id": zmean_frame(spec, side, reference, [])["score"].to_numpy()}
        for p in cfg.proxies:
            out[p] = zmean_frame(spec, {n: o[o["dataset"] == p] for n, o in ood.items()}, reference, [])["score"].to_numpy()
        return out

    recon = "reconstruction" in result.tables
    out = []
    for det in candidates(cfg) if recon else []:
        if det.metrics != ("mse",) and result.tables["reconstruction"]["lpips"].isna().all():
            continue
        out.append(Candidate(det, {"kind": "reconstruction", "ts": " ".join(map(str, det.ts)), "draws": det.draws,
                                   "metrics": ",".join(det.metrics), "bank": 0}, z(det)))
    for m in cfg.method_specs():
        out.append(Candidate(m, {"kind": m.kind, "method": m.name, "bank": 0}, z(m)))
    return out


def _feature_candidates(cfg: SelectConfig, checkpoint, progress) -> list[Candidate]:
    """Every feature and gaussian candidate. Embeddings are cached on disk."""
    cache = cfg.cache_dir or default_cache_dir()
    id_name = checkpoint.data.name
    sets = {"val": (id_name, "val", cfg.n_ref + cfg.n_id), **{p: (p, PROXY_SPLIT, cfg.n_proxy) for p in cfg.proxies}}
    n_bank = max(cfg.bank_sizes)
    total = len(cfg.feature_ts) * (n_bank + cfg.max_feature_draws * sum(n for *_, n in sets.values()))
    done = 0

    def step(k: int) -> None:
        nonlocal done
        done += k
        if progress:
            progress(done, total, "embedding")

    def zscores(per_set: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ref, ref_id = per_set["val"][:cfg.n_ref], per_set["val"][cfg.n_ref:]
        mu, sd = ref.mean(), ref.std(ddof=1)
        return {"id": (ref_id - mu) / sd, **{p: (per_set[p] - mu) / sd for p in cfg.proxies}}

    out = []
    for t in cfg.feature_ts:
        bank = embed_set(checkpoint, id_name, "train", n_bank, t, BANK_DRAW, cfg.seed, cfg.data_dir, cache, progress=step)
        queries = {s: [embed_set(checkpoint, name, split, n, t, d, cfg.seed, cfg.data_dir, cache, progress=step)
                       for d in range(cfg.max_feature_draws)] for s, (name, split, n) in sets.items()}
        for layer, pooling in product(cfg.layers, cfg.poolings):
            # distance per set, draw, bank size and k: (n,) each
            dist = {(s, d, b): knn_distances(queries[s][d][layer, pooling], bank[layer, pooling][:b], cfg.ks)
                    for s in sets for d in range(cfg.max_feature_draws) for b in cfg.bank_sizes}
            for b, k, draws in product(cfg.bank_sizes, cfg.ks, range(1, cfg.max_feature_draws + 1)):
                avg = {s: torch.stack([dist[s, d, b][k] for d in range(draws)]).mean(0).numpy() for s in sets}
                out.append(Candidate(Features(layer, t, pooling, k, draws, b),
                                     {"kind": "features", "layer": layer, "pooling": pooling, "feature_t": t, "k": k,
                                      "bank": b, "feature_draws": draws}, zscores(avg)))
            train = min(GAUSSIAN_TRAIN, n_bank)
            for covariance in cfg.covariances:
                head = fit_gaussian(bank[layer, pooling][:train].double().numpy(), covariance)
                dists = {s: head.mahalanobis(queries[s][0][layer, pooling].double().numpy()) for s in sets}
                out.append(Candidate(GaussianHead(layer, t, pooling, covariance, train),
                                     {"kind": "gaussian", "layer": layer, "pooling": pooling, "feature_t": t,
                                      "covariance": covariance, "bank": 0, "feature_draws": 1}, zscores(dists)))
    return out


def _combined(cfg: SelectConfig, scored: list[Candidate], means: list[float]) -> list[Candidate]:
    """The z-mean of each of the best feature-like candidates with each of the best reconstruction candidates
    and with each method, within the call budget."""
    def best(kinds, n: int) -> list[Candidate]:
        order = sorted((i for i, c in enumerate(scored) if c.settings["kind"] in kinds), key=lambda i: -means[i])
        return [scored[i] for i in order[:n]]

    others = best(("reconstruction",), cfg.combine_recon) + [c for c in scored if "method" in c.settings]
    out = []
    for f, o in product(best(("features", "gaussian"), cfg.combine_features), others):
        spec = ZMean((o.spec, f.spec))
        if spec.calls(cfg.sampler, cfg.steps) <= cfg.max_calls:
            settings = {**o.settings, **f.settings, "kind": "combined", "bank": f.settings["bank"]}
            out.append(Candidate(spec, settings, {s: (f.z[s] + o.z[s]) / 2 for s in f.z}))
    return out


def _tie_columns(found: list[Candidate], proxies, level: float) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of each candidate's paired interval of its mean proxy AUROC minus the best one's."""
    means = [float(np.mean([auroc(c.z["id"], c.z[p]) for p in proxies])) for c in found]
    best = found[int(np.argmax(means))]
    bounds = [paired_mean_auroc_difference(c.z["id"], [c.z[p] for p in proxies], best.z["id"],
                                           [best.z[p] for p in proxies], level)[1:] for c in found]
    return np.array([b[0] for b in bounds]), np.array([b[1] for b in bounds])


def score_candidates(cfg: SelectConfig, checkpoint: Checkpoint | None = None,
                     progress: Callable[[int, int, str], None] | None = None) -> pd.DataFrame:
    """One row per candidate: its settings, spec, network calls per image, AUROC per proxy, mean and worst, and
    the paired interval of its mean minus the best candidate's (`diff_lo`, `diff_hi`; among reconstruction
    candidates alone: `recon_diff_lo`, `recon_diff_hi`)."""
    if checkpoint is None:
        checkpoint = load_checkpoint(cfg.checkpoint or DEFAULT_CHECKPOINT, precision=cfg.precision,
                                     device=cfg.device or "cpu")
    cfg = cfg.for_checkpoint(checkpoint)
    scored = _feature_candidates(cfg, checkpoint, progress) if cfg.feature_ts else []  # the cheap ones first
    scored += _evaluated_candidates(cfg, checkpoint, progress)
    means = [float(np.mean([auroc(c.z["id"], c.z[p]) for p in cfg.proxies])) for c in scored]
    found = [c for c in scored + _combined(cfg, scored, means) if c.spec.calls(cfg.sampler, cfg.steps) <= cfg.max_calls]
    if not found:
        raise ValueError("no candidate within the call budget: widen --max-calls or name more candidates")
    table = pd.DataFrame([c.row(cfg) for c in found])
    table["diff_lo"], table["diff_hi"] = _tie_columns(found, cfg.proxies, cfg.level)
    recon = [i for i, c in enumerate(found) if c.settings["kind"] == "reconstruction"]
    if recon:
        lo, hi = _tie_columns([found[i] for i in recon], cfg.proxies, cfg.level)
        table.loc[recon, "recon_diff_lo"], table.loc[recon, "recon_diff_hi"] = lo, hi
    return table.sort_values("mean", ascending=False, ignore_index=True)


def choose(table: pd.DataFrame, ties: str = "diff_hi", tolerance: float | None = None) -> pd.Series:
    """The rule in the module docstring: among the rows whose paired interval (column `ties`, its upper end)
    reaches 0, the fewest calls, then the smaller bank, then the higher worst proxy. With `tolerance` (the
    rule a pick of level 0 records): the rows within it of the highest mean tie instead."""
    near = (table[table[ties] >= 0] if tolerance is None else table[table["mean"] >= table["mean"].max() - tolerance])
    return near.sort_values(["calls", "bank", "worst"], ascending=[True, True, False]).iloc[0]


RULE = ("the highest mean AUROC over the proxy sets; a candidate ties with it when the paired 95 % interval of its "
        "mean AUROC minus the best's reaches 0; among the ties, the fewest network calls, then the smaller bank, then "
        "the higher worst-proxy AUROC")


def pick_record(table: pd.DataFrame, cfg: SelectConfig) -> dict:
    """What a checkpoint records of a protocol's outcome (diffood.json "score", scores.Pick): the pick over every
    candidate, the pick among reconstruction candidates alone (the reconstruction score), the rule and the proxy
    AUROCs."""
    best = choose(table)
    recon_rows = table[table["kind"] == "reconstruction"]
    recon = spec_of(choose(recon_rows, "recon_diff_hi")) if len(recon_rows) else FALLBACK.reconstruction
    pick = Pick(spec_of(best), recon, RULE.replace("95 %", f"{cfg.level:.0%}".replace("%", " %")), 0.0,
                {p: round(float(best[p]), 4) for p in cfg.proxies}, round(float(best["mean"]), 4),
                round(float(best["worst"]), 4), len(table), sampler_name(cfg.sampler, cfg.steps),
                {"reference": cfg.n_ref, "id": cfg.n_id, "proxy": cfg.n_proxy, "proxy_split": PROXY_SPLIT},
                level=cfg.level)
    return pick.to_record()


def fit_pick(checkpoint: Checkpoint, record: dict, cfg: SelectConfig) -> list:
    """Fit what the recorded pick's terms need and the checkpoint lacks (a gaussian head's covariance, fitted
    as its candidate was): the paths written."""
    ctx = Context(checkpoint, cfg.sampler, cfg.steps, cfg.seed, data_dir=cfg.data_dir)
    return [fit_and_save(t, ctx) for t in Pick.from_record(record).default.terms()
            if isinstance(t, Fitted) and not has_fit(checkpoint, t)]


def spec_of(row: pd.Series) -> ScoreSpec:
    """The score a table row describes: its `spec`, or (tables without one) its t and layer columns."""
    if isinstance(row.get("spec"), str):
        return from_dict(json.loads(row["spec"]))
    terms: list[ScoreSpec] = []
    if isinstance(row.get("ts"), str) and row["ts"]:
        terms.append(Reconstruction(tuple(int(t) for t in row["ts"].split()), int(row["draws"]),
                                    tuple(row["metrics"].split(","))))
    if isinstance(row.get("layer"), str) and row["layer"]:
        terms.append(Features(row["layer"], int(row["feature_t"]), row["pooling"], int(row["k"]),
                              int(row["feature_draws"]), int(row["bank"])))
    if not terms:
        raise ValueError("a candidate row names no score")
    return terms[0] if len(terms) == 1 else ZMean(tuple(terms))
