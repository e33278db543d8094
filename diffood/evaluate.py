"""The evaluation: a checkpoint's ID validation, ID test and OOD images scored by every named score, as a short
pipeline on the score store (store.py): which tables the scores need, fill what they lack, summarise.

Reconstruction errors live in one table per (checkpoint, sampler, steps, n, n_val, seed, LPIPS), one row per
image, t and draw, shared by every score that reads them (the per-t curves, multi-t, the reconstruction score);
feature distances in one table per (checkpoint, bank, n, n_val, seed); any other kind in a table of its own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path

import pandas as pd
import torch

from .diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS, PRECISIONS, SAMPLERS, STEPPED, default_device, network_calls
from .errors import DiffoodError
from .features import KNN_METRICS, BankError, FeatureBank, bank_at, checkpoint_bank
from .fitted import load_fit
from .images import to_model_input
from .model import DEFAULT_CHECKPOINT, Checkpoint, load_checkpoint
from .options import doc
from .paths import from_env
from .perceptual import get_lpips, lpips_status
from .scores import DEFAULT, RECONSTRUCTION, Context, Features, GaussianHead, Pick, ScoreSpec, ZMean, named_scores, parse, table_name
from .scores.base import TABLE_KEYS, Fitted, zmean_frame
from .scoring import METRICS, distance_frame, embed_draws, score_images
from .sets import PROXY_SPLITS, load_images
from .store import CacheWarning, Filled, Progress, ScoreStore, Table
from .summary import SUMMARY_COLUMNS, compare, summarize

__all__ = ["CacheWarning", "EvalConfig", "EvalResult", "evaluate", "table_status", "default_cache_dir",
           "DEFAULT_TS", "DEFAULT_MULTI_TS", "FEATURE_CURVE_TS", "SUMMARY_COLUMNS"]

SCORES_VERSION = 1  # bump when the meaning of a cached score changes
# dense where detection happens, sparse below
DEFAULT_TS = (100, 300, 500, 600, 700, 800, 900)
# multi-t (Graham et al.'s z-mean) combines the upper half: below t = T/2 the error tracks how much ink an image has
# rather than whether it is in-distribution (MNIST digits, mostly black, then reconstruct *better*)
DEFAULT_MULTI_TS = tuple(t for t in DEFAULT_TS if t >= 500)
FEATURE_CURVE_TS = (1, 10, 25, 50, 100, 200, 300, 500)  # the feature term's noise levels the ROC page plots
SCORE_COLUMNS = [*TABLE_KEYS, *METRICS]
FEATURE_COLUMNS = [*TABLE_KEYS, *KNN_METRICS]


def default_cache_dir() -> Path:
    """$DIFFOOD_CACHE_DIR, else ~/.cache/diffood/evals."""
    return from_env("DIFFOOD_CACHE_DIR", "evals")


@dataclass
class EvalConfig:
    """What an evaluation scores: which images, at which t, by which scores, and where tables are kept."""

    checkpoint: str | None = field(default=None, metadata=doc("checkpoint folder, or a shipped model by name"))
    ood: tuple[str, ...] | None = field(default=None, metadata=doc(
        "OOD sets (default: the checkpoint's own); a torchvision name, a folder or .zip, <id>-vflip, -hflip, -invert, "
        "-shuffle, gaussian-noise, uniform"))
    ts: tuple[int, ...] = field(default=DEFAULT_TS, metadata=doc(
        "t of the per-t curves, one draw each (under torchrun, spell out --timesteps)", flags=("--t", "--timesteps")))
    multi_ts: tuple[int, ...] | None = field(default=DEFAULT_MULTI_TS, metadata=doc(
        "the t multi-t combines (given with no t: every t of the curves)", flags=("--multi-t",)))
    score: ScoreSpec | str | None = field(default=None, metadata=doc(
        "the default score (default: the checkpoint's recorded pick), by name or with parameters as in "
        "'features(k=5, draws=2)'"))
    methods: tuple[ScoreSpec | str, ...] = field(default=(), metadata=doc(
        "more scores to report beside the default, each named as the score is"))
    feature_ts: tuple[int, ...] = field(default=(), metadata=doc(
        "more noise levels t_f for the feature term's curve, one call each and a bank per t_f (the ROC page's: "
        + " ".join(map(str, FEATURE_CURVE_TS)) + ")", flags=("--feature-t",)))
    tpr: float = field(default=0.95, metadata=doc("the verdicts' target ID acceptance: the summary's threshold"))
    sampler: str = field(default=DEFAULT_SAMPLER, metadata=doc("how reconstructions are denoised", choices=SAMPLERS))
    steps: int = field(default=DEFAULT_STEPS, metadata=doc("network calls per reconstruction (strided, ddim)"))
    n: int = field(default=1000, metadata=doc("ID test images, and images per OOD set (under torchrun, spell out "
                                                "--images)", flags=("--n", "--images")))
    n_val: int = field(default=500, metadata=doc("ID validation images: z-score statistics and the threshold"))
    seed: int = field(default=0, metadata=doc("fixes the images drawn from each set and the noise"))
    lpips: bool = field(default=True, metadata=doc("measure LPIPS beside MSE (--no-lpips: MSE only)"))
    id_test: bool = field(default=True, metadata=doc(
        "score ID test images, the ID side of every AUROC (--no-id-test: ID validation and OOD sets only)"))
    ood_split: str = field(default="test", metadata=doc(
        "the ID split transformed OOD sets are made from, and the noise stream: test (reported), or val (the "
        "selection's proxies, never a reported image)", choices=PROXY_SPLITS))
    recompute: bool = field(default=False, metadata=doc("read no cached or shipped table: compute everything"))
    precision: str = field(default="auto", metadata=doc(
        "the UNet's: auto = bf16 on CUDA and on CPUs with native bf16 (AMX, AVX-512-bf16), else fp32",
        choices=PRECISIONS))
    batch_size: int = field(default=256, metadata=doc("images per UNet call"))
    data_dir: str | None = field(default=None, metadata=doc("torchvision's data folder (default $DIFFOOD_DATA_DIR)"))
    cache_dir: str | None = field(default=None, metadata=doc("where tables are kept (default $DIFFOOD_CACHE_DIR)"))
    device: str | None = field(default=None, metadata=doc("cuda, mps or cpu (default: the best available)"))

    def table_key(self, kind: str, checkpoint_key: str, **settings) -> str:
        """A table's file name: the hash of what changes its values."""
        settings = {"checkpoint": checkpoint_key, "n": self.n, "n_val": self.n_val, "seed": self.seed,
                    "version": SCORES_VERSION, **settings}
        if kind != "reconstruction":
            settings["kind"] = kind
        if self.ood_split != "test":
            settings["ood_split"] = self.ood_split
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]

    def cache_key(self, checkpoint_key: str, lpips_available: bool) -> str:
        """The reconstruction table's: not the draws, t or sets (the table holds each one computed), and not the
        precision: bf16 and fp32 tables agree within 0.002 AUROC (docs/performance.md)."""
        steps = self.steps if self.sampler in STEPPED else None  # the other samplers ignore it
        return self.table_key("reconstruction", checkpoint_key, sampler=self.sampler, steps=steps,
                              lpips=lpips_available)

    def feature_key(self, checkpoint_key: str, bank: FeatureBank) -> str:
        return self.table_key("features", checkpoint_key, bank=bank.fingerprint())


def combined_ts(multi_ts, available) -> tuple[int, ...]:
    """The t that multi-t combines: the chosen ones that were scored, or every scored t when none
    of them was (or none was chosen)."""
    available = sorted({int(t) for t in available})
    chosen = [t for t in available if multi_ts is None or t in set(multi_ts)]
    return tuple(chosen or available)


@dataclass
class EvalResult:
    tables: dict[str, pd.DataFrame]  # per table name: one row per image x t x draw (TABLE_KEYS + its columns)
    summary: pd.DataFrame  # SUMMARY_COLUMNS; t is NaN on the rows of named scores
    config: EvalConfig  # resolved: its score is the default's spec, its OOD sets full names
    named: dict[str, ScoreSpec]  # the scores reported by name, the default first
    pick: Pick
    cache_file: Path | None = None
    computed: list = field(default_factory=list)  # store.Part computed, not read
    bank: FeatureBank | None = None  # the checkpoint's feature bank, when it has one
    notes: list[str] = field(default_factory=list)  # what a reader should know, e.g. a score left without features

    @cached_property
    def scores(self) -> pd.DataFrame:
        """The reconstruction and feature rows in one frame (KEY columns, METRICS, KNN_METRICS), merged once."""
        shared = [self.tables[n] for n in ("reconstruction", "features") if n in self.tables]
        if not shared:
            return pd.DataFrame(columns=TABLE_KEYS)
        out = shared[0]
        for other in shared[1:]:
            out = out.merge(other, on=TABLE_KEYS, how="outer", sort=False)
        return out.astype({"index": int, "t": int, "draw": int}).reset_index(drop=True)

    @property
    def reference(self) -> pd.DataFrame:
        """The ID validation rows: what z-scores and thresholds are taken against."""
        s = self.scores
        return s[s["role"] == "id_val"]

    def references(self) -> dict[str, pd.DataFrame]:
        return {name: t[t["role"] == "id_val"] for name, t in self.tables.items()}

    @property
    def features(self) -> Features | None:
        """The feature term the named scores use, if any."""
        return next((t for s in self.named.values() for t in s.terms() if isinstance(t, Features)), None)

    def compare(self, a: str, b: str) -> pd.DataFrame:
        """The paired AUROC difference of two named scores per OOD set (summary.compare)."""
        return compare(self.tables, self.named, a, b)

    def score_frame(self, name: str | ScoreSpec, keys=("role", "dataset")) -> pd.DataFrame:
        """One row per image (keys + index) with the named score in column "score"."""
        spec = self.named[name] if isinstance(name, str) else name
        return zmean_frame(spec, self.tables, self.references(), list(keys))


def resolve(cfg: EvalConfig, checkpoint: Checkpoint) -> EvalConfig:
    """The config with its OOD sets made full for the checkpoint's ID set (none given: its default OOD set;
    "vflip" is "<id>-vflip"; the ID set itself refused) and its scores as specs (names read with the
    checkpoint's pick)."""
    pick = Pick.of(checkpoint)
    data = checkpoint.data
    ood = tuple(data.resolve(name) for name in (cfg.ood if cfg.ood is not None else (data.default_ood,)))
    same = [name for name in ood if name in (data.name, data.spec.source)]
    if same:
        raise DiffoodError(f"{same[0]} is this checkpoint's ID set, so it cannot be its OOD set; "
                           f"its default OOD set is {data.default_ood}")
    score = parse(cfg.score, pick) if cfg.score is not None else None
    return replace(cfg, ood=ood, score=score, methods=tuple(parse(m, pick) for m in cfg.methods))


def _on_bank(spec: ScoreSpec, term: Features) -> ScoreSpec:
    """`spec` with its feature term read from the bank at hand (`term`): the score the tables can hold."""
    if isinstance(spec, Features):
        return replace(term, k=spec.k, draws=spec.draws)
    if isinstance(spec, ZMean):
        return ZMean(tuple(_on_bank(t, term) for t in spec.terms_))
    return spec


def plan(cfg: EvalConfig, checkpoint: Checkpoint, default_only: bool = False) -> tuple[
        EvalConfig, dict[str, ScoreSpec], Pick, FeatureBank | None, list[str]]:
    """(resolved config, named scores, pick, bank, notes) for an evaluation; `default_only`: the default score
    alone and no curve."""
    if default_only:
        cfg = replace(cfg, ts=(), feature_ts=())
    cfg = resolve(cfg, checkpoint)
    pick = Pick.of(checkpoint)
    given = [t for s in (cfg.score, *cfg.methods) if s for t in s.terms()]
    wants_features = any(isinstance(t, Features) for t in given)
    reads_bank = cfg.score is None or wants_features  # the pick's score and feature terms read the bank
    bank = None
    if reads_bank:
        bank = checkpoint_bank(checkpoint)
    elif any(isinstance(t, GaussianHead) for t in given):
        try:  # the training images in a Gaussian head's embeddings, shown beside its verdicts; it scores without
            bank = checkpoint_bank(checkpoint)
        except BankError:
            pass
    notes = []
    term = None
    if bank is not None and reads_bank:
        want = pick.bank_term
        term = Features(bank.spec.layer, bank.spec.t, bank.spec.pooling, want.k, want.draws, bank.n)
        if pick.own and pick.embedding_term and (want.layer, want.t, want.pooling, want.bank) != (
                term.layer, term.t, term.pooling, term.bank):
            notes.append(f"the checkpoint's pick asks for a bank of {want.bank:,} images at {want.layer}, t = "
                         f"{want.t}, {want.pooling} pooling; its bank holds {bank.describe()}: rebuild it with "
                         f"`diffood bank --checkpoint {checkpoint.path}`")
    elif wants_features:
        raise DiffoodError(f"{checkpoint.path} has no feature bank, which this score needs; build one with "
                           f"`diffood bank --checkpoint {checkpoint.path}`")
    elif cfg.score is None and pick.features:
        notes.append(f"{checkpoint.path} has no feature bank, so the default score is the reconstruction score; "
                     f"build one with `diffood bank --checkpoint {checkpoint.path}`")
    if not pick.own:
        notes.append(f"{checkpoint.data.label}'s model records no score of its own, so it scores with the settings "
                     f"chosen for the FashionMNIST model; `diffood select --checkpoint {checkpoint.path}` chooses "
                     f"its own on proxies of its ID set")
    fix = (lambda s: _on_bank(s, term)) if term is not None else (lambda s: s)
    multi = combined_ts(cfg.multi_ts, cfg.ts) if cfg.ts else ()
    named = named_scores(replace(pick, default=fix(pick.default)), fix(cfg.score) if cfg.score else None, term,
                         multi, tuple(fix(m) for m in cfg.methods))
    if default_only:
        named = {DEFAULT: named[DEFAULT]}
    return replace(cfg, score=named[DEFAULT]), named, pick, bank, notes


def tables(cfg: EvalConfig, checkpoint: Checkpoint, named: dict[str, ScoreSpec], bank: FeatureBank | None,
           lpips_net) -> list[Table]:
    """The store tables the named scores and curves read: reconstruction (the per-t curves' t with one draw,
    each reconstruction term's t with its draws), features (each feature term's t_f and the curve's), and one
    table per term of any other kind."""
    model, scheduler, precision = checkpoint.model, checkpoint.scheduler, checkpoint.precision
    terms = {t for s in named.values() for t in s.terms()}
    needs = {"reconstruction": {t: 1 for t in cfg.ts}, "features": {t: 1 for t in cfg.feature_ts}}
    for term in terms:
        for t, k in term.needs().items():  # a kind with a shared table: the draws it reads at each t
            needs[term.table][t] = max(needs[term.table].get(t, 0), k)
    need_r, need_f = needs["reconstruction"], needs["features"]
    own = {t for name in (DEFAULT, RECONSTRUCTION) if name in named for t in named[name].terms()}
    first = {kind: tuple(sorted({t for term in own if term.table == kind for t in term.needs()}))
             for kind in needs}  # the reported scores' own t, before the curves'
    sidecar = {"checkpoint_sha256": checkpoint.sha256, "n": cfg.n, "n_val": cfg.n_val, "seed": cfg.seed,
               "precision": precision}
    out = []
    if need_r:
        out.append(Table(
            "reconstruction", cfg.cache_key(checkpoint.key, lpips_net is not None), SCORE_COLUMNS, need_r,
            lambda x, t, draws, step: score_images(model, x, [t], scheduler, cfg.sampler, cfg.steps, cfg.seed,
                                                   lpips_net, cfg.batch_size, step, draws, precision),
            {**sidecar, "sampler": cfg.sampler, "steps": cfg.steps, "lpips": lpips_net is not None},
            first["reconstruction"]))
    if bank is not None and need_f:
        cache = default_cache_dir()  # banks at other t_f are a cache of their own, never beside shipped tables

        def features(x, t, draws, step):
            at = bank_at(checkpoint, bank, t, cfg.data_dir, cache, cfg.batch_size)
            e = embed_draws(model, x, at.spec, draws, cfg.seed, precision, cfg.batch_size, progress=step,
                            scheduler=scheduler)
            return distance_frame(at, e, draws)

        out.append(Table("features", cfg.feature_key(checkpoint.key, bank), FEATURE_COLUMNS, need_f, features,
                         {**sidecar, "bank": bank.metadata()}, first["features"]))
    for term in sorted((t for t in terms if not t.table), key=table_name):
        out.append(_own_table(cfg, checkpoint, term, lpips_net))
    return out


def _own_table(cfg: EvalConfig, checkpoint: Checkpoint, term: ScoreSpec, lpips_net) -> Table:
    """A kind's own table: its components c0, c1, ... per image, at t = 0, draw 0; fitted once, when first needed."""
    ctx = Context(checkpoint, cfg.sampler, cfg.steps, cfg.seed, lpips_net, cfg.batch_size, cfg.data_dir,
                  str(cfg.cache_dir or default_cache_dir()))
    fitted = []

    def compute(x, t, draws, step):
        if not fitted:
            fitted.append(term.fit(ctx))
        values = term.components(replace(ctx, progress=step), x, fitted[0]).double().cpu().numpy()
        return pd.DataFrame({"index": range(len(x)), "t": 0, "draw": 0,
                             **{f"c{i}": values[:, i] for i in range(values.shape[1])}})

    key = cfg.table_key(term.kind, checkpoint.key, spec=term.to_dict(), sampler=cfg.sampler, steps=cfg.steps)
    return Table(table_name(term), key, list(TABLE_KEYS), {0: 1}, compute,
                 {"checkpoint_sha256": checkpoint.sha256, "spec": term.to_dict(), "n": cfg.n, "n_val": cfg.n_val})


def image_sets(cfg: EvalConfig, checkpoint: Checkpoint) -> list[tuple[str, str, str, int]]:
    """(role, set, split, n) of every set scored: ID validation, and ID test with each OOD set."""
    id_name = checkpoint.data.name
    sets = [("id_val", id_name, "val", cfg.n_val)]  # ID test images only matter against an OOD set
    sets += [("id", id_name, "test", cfg.n)] if cfg.ood and cfg.id_test else []
    return sets + [("ood", name, cfg.ood_split, cfg.n) for name in cfg.ood]


def _store(cfg: EvalConfig, checkpoint: Checkpoint) -> ScoreStore:
    return ScoreStore(cfg.cache_dir or default_cache_dir(), checkpoint.path / "evals", cfg.recompute)


def table_status(cfg: EvalConfig, checkpoint: Checkpoint, default_only: bool = False) -> tuple[int, str]:
    """(How many images `evaluate(cfg)` still has to run through the model (0: it only reads tables), which
    version of which tables it would read): the second changes whenever a table does."""
    cfg, named, _, bank, _ = plan(cfg, checkpoint, default_only)
    store, sets = _store(cfg, checkpoint), image_sets(cfg, checkpoint)
    lpips_on = cfg.lpips and lpips_status().available
    ts = tables(cfg, checkpoint, named, bank, object() if lpips_on else None)
    return (sum(p.images for t in ts for p in store.missing(t, sets)), ";".join(store.version(t) for t in ts))


def pending_images(cfg: EvalConfig, checkpoint: Checkpoint) -> int:
    return table_status(cfg, checkpoint)[0]


def _calls(cfg: EvalConfig, named: dict[str, ScoreSpec]) -> Callable[[Table, int], int]:
    """calls(table, t): network calls per image and draw of one of the tables `named` reads, at t."""
    terms = {table_name(t): t for s in named.values() for t in s.terms()}

    def calls(table: Table, t: int) -> int:
        if table.name == "reconstruction":
            return network_calls(cfg.sampler, cfg.steps, t)
        return 1 if table.name == "features" else terms[table.name].calls(cfg.sampler, cfg.steps)
    return calls


def pending_calls(cfg: EvalConfig, checkpoint: Checkpoint, default_only: bool = False) -> int:
    """Network calls `evaluate(cfg)` still has to make: each missing part's images times its calls per image."""
    cfg, named, _, bank, _ = plan(cfg, checkpoint, default_only)
    store, sets, calls = _store(cfg, checkpoint), image_sets(cfg, checkpoint), _calls(cfg, named)
    return sum(p.images * calls(table, p.t) for table in tables(cfg, checkpoint, named, bank, None)
               for p in store.missing(table, sets))


def ready(cfg: EvalConfig, checkpoint: Checkpoint) -> tuple[EvalConfig, bool] | None:
    """The part of `cfg` the store holds already, as (config, default_only) whose evaluation computes nothing: the
    t, t_f and methods with every part computed, or the default score alone; None: not even that. What a page
    draws while the rest is computed."""
    full, named, _, bank, _ = plan(cfg, checkpoint)
    store, sets = _store(full, checkpoint), image_sets(full, checkpoint)
    lpips_on = cfg.lpips and lpips_status().available
    lacking = {(table.name, p.t) for table in tables(full, checkpoint, named, bank, object() if lpips_on else None)
               for p in store.missing(table, sets)}

    def complete(c: EvalConfig, default_only: bool = False) -> bool:
        try:
            return table_status(c, checkpoint, default_only)[0] == 0
        except DiffoodError:
            return False

    part = replace(cfg, ts=tuple(t for t in cfg.ts if ("reconstruction", t) not in lacking),
                   feature_ts=tuple(t for t in cfg.feature_ts if ("features", t) not in lacking), methods=())
    if not complete(part):
        return (cfg, True) if complete(cfg, True) else None
    for m in cfg.methods:
        if complete(with_method := replace(part, methods=(*part.methods, m))):
            part = with_method
    return part, False


def evaluate(cfg: EvalConfig, checkpoint: Checkpoint | None = None, progress: Progress | None = None,
             default_only: bool = False) -> EvalResult:
    """Score ID validation, ID test and each OOD set by every named score and curve (reading what the store
    has) and summarise; `default_only`: by the default score alone, no curve (what a reference needs, and
    the cheap first answer). `progress(done, total, what)` is called as images are scored."""
    device = torch.device(cfg.device) if cfg.device else default_device()
    if checkpoint is None:
        checkpoint = load_checkpoint(cfg.checkpoint or DEFAULT_CHECKPOINT, device=device, precision=cfg.precision)
    device = next(checkpoint.model.parameters()).device
    cfg, named, pick, bank, notes = plan(cfg, checkpoint, default_only)
    lpips_net = get_lpips(str(device)) if cfg.lpips else None
    store, sets = _store(cfg, checkpoint), image_sets(cfg, checkpoint)

    def images(name: str, split: str, n: int) -> torch.Tensor:
        return to_model_input(load_images(name, split, n, cfg.seed, cfg.data_dir, id=checkpoint.data)).to(device)

    wanted_roles = {"id_val", *(["id"] if cfg.id_test else [])}
    filled: dict[str, Filled] = {}
    calls = _calls(cfg, named)  # the cheapest table first: what is done sooner is drawn sooner
    todo = sorted(tables(cfg, checkpoint, named, bank, lpips_net),
                  key=lambda tb: sum(calls(tb, t) * k for t, k in tb.need.items()))
    for term in {t for s in named.values() for t in s.terms() if isinstance(t, Fitted)}:
        if store.missing(next(tb for tb in todo if tb.name == table_name(term)), sets):
            load_fit(checkpoint, term)  # a missing fit is said in one line before anything is computed
    for table in todo:
        f = store.fill(table, sets, images, progress)
        rows = f.rows
        keep = (rows["t"].map(table.need).fillna(0) > rows["draw"]) & (
            rows["role"].isin(wanted_roles) | (rows["role"].eq("ood") & rows["dataset"].isin(cfg.ood)))
        filled[table.name] = Filled(rows[keep].reset_index(drop=True), f.path, f.computed)
    found = next((f.path for f in filled.values() if f.path), None)
    result = EvalResult({k: f.rows for k, f in filled.items()}, pd.DataFrame(columns=SUMMARY_COLUMNS), cfg, named,
                        pick, found, [p for f in filled.values() for p in f.computed], bank, notes)
    feats = result.features
    result.summary = summarize(result.tables, named, cfg.sampler, cfg.steps, cfg.tpr, feats.metric if feats else None)
    return result


def as_json(cfg: EvalConfig) -> str:
    """The config as JSON, specs as their dicts (the pages' cache key); `from_json` reads it back."""
    d = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    d["score"] = _plain(d["score"])
    d["methods"] = [_plain(m) for m in d["methods"]]
    return json.dumps(d, sort_keys=True)


def _plain(s):
    return s.to_dict() if isinstance(s, ScoreSpec) else s


def from_json(text: str) -> EvalConfig:
    return EvalConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(text).items()})
