"""The selection protocol: choose a checkpoint's default score on its ID validation images against proxy OOD
sets made from its own ID set and noise alone. No other set enters it; those are reported, never used to pick.

Candidates, each within `max_calls` network calls per image:
- reconstruction: every run of consecutive t in `ts`, 1..max_draws noise draws, MSE, LPIPS or both;
- features: the k-th nearest distance to a bank of ID training images, for every layer, pooling, t_f
  in `feature_ts`, k, bank size and 1..max_feature_draws draws (one call each, distances averaged);
- combined: the mean of the z-scores of one of the `combine_features` best feature candidates and one of
  the `combine_recon` best reconstruction candidates.
The ID validation images split in two: the first part is the z-score reference (as in the app), the
second is the ID side of each AUROC. Training images enter only the banks.

The rule, the same for every checkpoint (fixed before any reported figure of the first model was seen): the
highest mean AUROC over the proxy sets; among candidates within `tolerance` of it, the one with the fewest
network calls, then the smaller bank, then the higher worst-proxy AUROC.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import product
from typing import Callable

import numpy as np
import pandas as pd
import torch

from .diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS, PRECISIONS, SAMPLERS, sampler_name
from .evaluate import EvalConfig, default_cache_dir, evaluate
from .features import BANK_DRAW, KS, LAYERS, POOLINGS, embed_set, knn_distances
from .metrics import auroc
from .model import DEFAULT_CHECKPOINT, Checkpoint, load_checkpoint
from .options import doc
from .scores import FALLBACK, Features, Pick, Reconstruction, ScoreSpec, ZMean
from .scores.base import zmean_frame

PROXIES = ("vflip", "hflip", "invert", "shuffle", "gaussian-noise", "uniform")  # built from the ID set
CANDIDATE_TS = (500, 600, 700, 800, 900)
METRIC_SETS = (("mse",), ("lpips",), ("mse", "lpips"))
FEATURE_TS = (1, 10, 25, 50, 100, 200, 300)


@dataclass
class SelectConfig:
    """The selection protocol's candidates and images."""

    checkpoint: str | None = field(default=None, metadata=doc("checkpoint folder, or a shipped model by name"))
    proxies: tuple[str, ...] = field(default=PROXIES, metadata=doc("proxy OOD sets, transforms of the ID set's"))
    ts: tuple[int, ...] = field(default=CANDIDATE_TS, metadata=doc(
        "candidate t; candidates take runs of them (under torchrun, spell out --timesteps)", flags=("--t", "--timesteps")))
    max_draws: int = field(default=4, metadata=doc("noise draws of reconstruction candidates, at most"))
    sampler: str = field(default=DEFAULT_SAMPLER, metadata=doc("how reconstructions are denoised", choices=SAMPLERS))
    steps: int = field(default=DEFAULT_STEPS, metadata=doc("network calls per reconstruction (strided, ddim)"))
    max_calls: int = field(default=25, metadata=doc("network calls per image, at most"))
    n_ref: int = field(default=300, metadata=doc("ID validation images for the z-score reference"))
    n_id: int = field(default=300, metadata=doc("further ID validation images: the ID side of each AUROC"))
    n_proxy: int = field(default=300, metadata=doc("images per proxy set"))
    tolerance: float = field(default=0.002, metadata=doc("candidates this close to the best mean AUROC tie"))
    feature_ts: tuple[int, ...] = field(default=FEATURE_TS, metadata=doc(
        "t_f of the feature candidates (none: reconstruction candidates only)", flags=("--feature-t",)))
    layers: tuple[str, ...] = field(default=LAYERS, metadata=doc("UNet blocks of the feature candidates",
                                                                   choices=LAYERS))
    poolings: tuple[str, ...] = field(default=POOLINGS, metadata=doc("poolings of the feature candidates",
                                                                       choices=POOLINGS))
    ks: tuple[int, ...] = field(default=KS, metadata=doc("k of the feature candidates"))
    bank_sizes: tuple[int, ...] = field(default=(10_000,), metadata=doc("ID training images per bank"))
    max_feature_draws: int = field(default=4, metadata=doc("noise draws of feature candidates, at most"))
    combine_features: int = field(default=20, metadata=doc("best feature candidates combined with ..."))
    combine_recon: int = field(default=10, metadata=doc("... the best reconstruction candidates"))
    seed: int = field(default=0, metadata=doc("fixes the images drawn from each set and the noise"))
    precision: str = field(default="auto", metadata=doc("the UNet's: auto = bf16 where the hardware computes it",
                                                          choices=PRECISIONS))
    data_dir: str | None = field(default=None, metadata=doc("torchvision's data folder (default $DIFFOOD_DATA_DIR)"))
    cache_dir: str | None = field(default=None, metadata=doc("where tables and embeddings are kept"))
    device: str | None = field(default=None, metadata=doc("cuda, mps or cpu (default: the best available)"))

    def for_checkpoint(self, checkpoint: Checkpoint) -> "SelectConfig":
        """Proxy names made full for the checkpoint's ID set ("vflip" -> "<id>-vflip")."""
        return replace(self, proxies=tuple(checkpoint.data.resolve(p) for p in self.proxies))

    def eval_config(self) -> EvalConfig:
        return EvalConfig(checkpoint=self.checkpoint, ood=tuple(self.proxies), ts=tuple(self.ts), multi_ts=None,
                          score=Reconstruction(tuple(self.ts), self.max_draws), sampler=self.sampler, steps=self.steps,
                          n=self.n_proxy, n_val=self.n_ref + self.n_id, seed=self.seed, id_test=False,
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


def _row(settings: dict, z: dict[str, np.ndarray], proxies) -> dict:
    row = {**settings, **{p: auroc(z["id"], z[p]) for p in proxies}}
    row["mean"] = float(np.mean([row[p] for p in proxies]))
    row["worst"] = min(row[p] for p in proxies)
    return row


def _recon_candidates(cfg: SelectConfig, checkpoint, progress) -> list[tuple[dict, dict]]:
    """(settings, z-scores per set) of every reconstruction candidate."""
    result = evaluate(cfg.eval_config(), checkpoint, progress)
    rows = result.tables["reconstruction"]
    val = rows[rows["role"] == "id_val"]
    reference = {"reconstruction": val[val["index"] < cfg.n_ref]}
    id_side = {"reconstruction": val[val["index"] >= cfg.n_ref]}
    ood = rows[rows["role"] == "ood"]
    out = []
    for det in candidates(cfg):
        if det.metrics != ("mse",) and val["lpips"].isna().all():
            continue
        z = {"id": zmean_frame(det, id_side, reference, [])["score"].to_numpy()}
        z.update({p: zmean_frame(det, {"reconstruction": ood[ood["dataset"] == p]}, reference, [])["score"].to_numpy()
                  for p in cfg.proxies})
        out.append(({"kind": "reconstruction", "ts": " ".join(map(str, det.ts)), "draws": det.draws,
                     "metrics": ",".join(det.metrics), "calls": det.calls(cfg.sampler, cfg.steps), "bank": 0}, z))
    return out


def _feature_candidates(cfg: SelectConfig, checkpoint, progress) -> list[tuple[dict, dict]]:
    """(settings, z-scores per set) of every feature candidate. Embeddings are cached on disk."""
    cache = cfg.cache_dir or default_cache_dir()
    sets = {"val": (checkpoint.data.name, "val", cfg.n_ref + cfg.n_id), **{p: (p, "test", cfg.n_proxy) for p in cfg.proxies}}
    n_bank = max(cfg.bank_sizes)
    total = len(cfg.feature_ts) * (n_bank + cfg.max_feature_draws * sum(n for *_, n in sets.values()))
    done = 0

    def step(k: int) -> None:
        nonlocal done
        done += k
        if progress:
            progress(done, total, "embedding")

    out = []
    for t in cfg.feature_ts:
        bank = embed_set(checkpoint, checkpoint.data.name, "train", n_bank, t, BANK_DRAW, cfg.seed, cfg.data_dir, cache, progress=step)
        queries = {s: [embed_set(checkpoint, name, split, n, t, d, cfg.seed, cfg.data_dir, cache, progress=step)
                       for d in range(cfg.max_feature_draws)] for s, (name, split, n) in sets.items()}
        for layer, pooling in product(cfg.layers, cfg.poolings):
            # distance per set, draw, bank size and k: (n,) each
            dist = {(s, d, b): knn_distances(queries[s][d][layer, pooling], bank[layer, pooling][:b], cfg.ks)
                    for s in sets for d in range(cfg.max_feature_draws) for b in cfg.bank_sizes}
            for b, k, draws in product(cfg.bank_sizes, cfg.ks, range(1, cfg.max_feature_draws + 1)):
                avg = {s: torch.stack([dist[s, d, b][k] for d in range(draws)]).mean(0).numpy() for s in sets}
                ref, ref_id = avg["val"][:cfg.n_ref], avg["val"][cfg.n_ref:]
                mu, sd = ref.mean(), ref.std(ddof=1)
                z = {"id": (ref_id - mu) / sd, **{p: (avg[p] - mu) / sd for p in cfg.proxies}}
                out.append(({"kind": "features", "layer": layer, "pooling": pooling, "feature_t": t, "k": k, "bank": b,
                             "feature_draws": draws, "calls": draws}, z))
    return out


def score_candidates(cfg: SelectConfig, checkpoint: Checkpoint | None = None,
                     progress: Callable[[int, int, str], None] | None = None) -> pd.DataFrame:
    """One row per candidate: its settings, network calls per image, AUROC per proxy, mean and worst."""
    if checkpoint is None:
        checkpoint = load_checkpoint(cfg.checkpoint or DEFAULT_CHECKPOINT, precision=cfg.precision,
                                     device=cfg.device or "cpu")
    cfg = cfg.for_checkpoint(checkpoint)
    recon = _recon_candidates(cfg, checkpoint, progress)
    feats = _feature_candidates(cfg, checkpoint, progress) if cfg.feature_ts else []
    scored = [(s, z, _row(s, z, cfg.proxies)) for s, z in recon + feats]
    rows = [row for *_, row in scored]

    def best(kind: str, n: int) -> list:
        return sorted((c for c in scored if c[0]["kind"] == kind), key=lambda c: -c[2]["mean"])[:n]

    for (fs, fz, _), (rs, rz, _) in product(best("features", cfg.combine_features), best("reconstruction", cfg.combine_recon)):
        if fs["calls"] + rs["calls"] <= cfg.max_calls:
            z = {s: (fz[s] + rz[s]) / 2 for s in fz}
            rows.append(_row({**rs, **fs, "kind": "combined", "calls": fs["calls"] + rs["calls"]}, z, cfg.proxies))
    table = pd.DataFrame(rows)
    table = table[table["calls"] <= cfg.max_calls]
    return table.sort_values("mean", ascending=False, ignore_index=True)


def choose(table: pd.DataFrame, tolerance: float = 0.002) -> pd.Series:
    """The rule in the module docstring."""
    near = table[table["mean"] >= table["mean"].max() - tolerance]
    bank = near["bank"] if "bank" in near else 0
    return near.assign(bank=bank).sort_values(["calls", "bank", "worst"], ascending=[True, True, False]).iloc[0]


RULE = ("the highest mean AUROC over the proxy sets; among candidates within the tolerance of it, the fewest "
        "network calls, then the smaller bank, then the higher worst-proxy AUROC")


def pick_record(table: pd.DataFrame, cfg: SelectConfig) -> dict:
    """What a checkpoint records of a protocol's outcome (diffood.json "score", scores.Pick): the pick over every
    candidate, the pick among reconstruction candidates alone (the reconstruction score), the rule and the proxy
    AUROCs."""
    best = choose(table, cfg.tolerance)
    recon_rows = table[table["kind"] == "reconstruction"]
    recon = spec_of(choose(recon_rows, cfg.tolerance)) if len(recon_rows) else FALLBACK.reconstruction
    pick = Pick(spec_of(best), recon, RULE, cfg.tolerance, {p: round(float(best[p]), 4) for p in cfg.proxies},
                round(float(best["mean"]), 4), round(float(best["worst"]), 4), len(table),
                sampler_name(cfg.sampler, cfg.steps), {"reference": cfg.n_ref, "id": cfg.n_id, "proxy": cfg.n_proxy})
    return pick.to_record()


def spec_of(row: pd.Series) -> ScoreSpec:
    """The score a table row describes."""
    terms: list[ScoreSpec] = []
    if isinstance(row.get("ts"), str) and row["ts"]:
        terms.append(Reconstruction(tuple(int(t) for t in row["ts"].split()), int(row["draws"]),
                                    tuple(row["metrics"].split(","))))
    if isinstance(row.get("layer"), str) and row["layer"]:
        terms.append(Features(row["layer"], int(row["feature_t"]), row["pooling"], int(row["k"]),
                              int(row["feature_draws"]), int(row["bank"])))
    if not terms:
        raise ValueError("a candidate row names no t and no layer")
    return terms[0] if len(terms) == 1 else ZMean(tuple(terms))
