"""A score is one typed spec: a frozen dataclass whose class is its kind and whose fields are its parameters.

Every kind answers the same few questions (ScoreSpec): its network calls per image, a one-line description,
what it needs fitted on ID training images, and its per-image components, higher = more OOD, either from
a batch of images (tensor in, tensor out) or from the rows of the score table it is stored in. A score is
the mean over its terms of each term's components z-scored against ID validation images (Graham et al.'s
z-mean, CVPR-W 2023); a single-component term is its own z-score, so its AUROC is the raw value's.

Specs are written to diffood.json, cache keys and pages as `to_dict()` and read back with `from_dict`.
"""

from __future__ import annotations

import hashlib
import json
import types
import typing
from dataclasses import dataclass, fields
from typing import Callable, ClassVar

import numpy as np
import pandas as pd
import torch

from ..diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS
from ..errors import DiffoodError
from ..fitted import load_fit, save_fit
from ..images import to_model_input
from ..sets import load_images

SPEC_VERSION = 1
KINDS: dict[str, type["ScoreSpec"]] = {}  # kind name -> spec class, filled by @register
TABLE_KEYS = ["dataset", "split", "role", "index", "t", "draw"]  # a stored row: which image, at which t and draw


class UnknownKind(DiffoodError):
    """A spec names a kind this diffood does not know."""


def register(cls: type["ScoreSpec"]) -> type["ScoreSpec"]:
    """Class decorator: make a ScoreSpec subclass a kind, known by its `kind` name everywhere."""
    if not cls.kind:
        raise ValueError(f"{cls.__name__} needs a `kind` name")
    KINDS[cls.kind] = cls
    return cls


@dataclass
class Context:
    """What scoring a batch needs besides the spec: the checkpoint and how its images are noised."""

    checkpoint: object  # model.Checkpoint
    sampler: str = DEFAULT_SAMPLER
    steps: int = DEFAULT_STEPS
    seed: int = 0
    lpips: object = None  # perceptual.PerceptualDistance, or None: LPIPS columns NaN
    batch_size: int = 256
    data_dir: str | None = None
    cache_dir: str | None = None
    shared_noise: bool = False  # every image gets row 0's noise: its score does not depend on the batch
    progress: Callable[[int], None] | None = None  # called with the images run through the model

    @property
    def device(self) -> torch.device:
        return next(self.checkpoint.model.parameters()).device


@dataclass(frozen=True)
class ScoreSpec:
    """The base of every score kind. Subclasses set `kind`, add their parameters as fields, and implement
    calls, describe, components and (when stored in the shared tables) needs and columns."""

    kind: ClassVar[str] = ""
    table: ClassVar[str] = ""  # the shared table its rows live in ("reconstruction", "features"), or "": its own
    variants: ClassVar[tuple[str, ...]] = ()  # how `--methods all` names it: its settings worth comparing (default: kind)

    @classmethod
    def for_pick(cls, pick) -> "ScoreSpec":
        """The kind's default spec for a checkpoint whose pick (scores.Pick) is `pick`: its defaults, unless
        the kind reads something the pick decides (e.g. the feature layer the bank holds)."""
        return cls()

    # what it is
    def calls(self, sampler: str = DEFAULT_SAMPLER, steps: int = DEFAULT_STEPS) -> int:
        """Network calls per image."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def terms(self) -> tuple["ScoreSpec", ...]:
        """The parts z-averaged into the score: itself, or a composite's members."""
        return (self,)

    # how it scores
    def fit(self, ctx: Context):
        """What it needs fitted on ID training images (a bank, a density), or None."""
        return None

    def components(self, ctx: Context, x: torch.Tensor, state=None) -> torch.Tensor:
        """(N, D) values per image of x (N, C, S, S) in [-1, 1], higher = more OOD; `state` is fit's."""
        raise NotImplementedError

    def component_frame(self, ctx: Context, x: torch.Tensor, state=None) -> pd.DataFrame:
        """`components` as a frame: index, then the columns `columns` names (a kind may add more)."""
        values = self.components(ctx, x, state).double().cpu().numpy()
        return pd.DataFrame({"index": range(len(x)), **{f"c{i}": values[:, i] for i in range(values.shape[1])}})

    def needs(self) -> dict[int, int]:
        """Noise draws per t it reads from its shared table (empty for a kind with a table of its own)."""
        return {}

    def columns(self, rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
        """One row per image (keys + index) of its stored rows, with one column per component. A kind with a
        table of its own stores its components as columns c0, c1, ... at t = 0, draw 0."""
        own = [c for c in rows.columns if c.startswith("c") and c[1:].isdigit()]
        return rows[[*keys, *own]].reset_index(drop=True)

    # as data
    def to_dict(self) -> dict:
        return {"kind": self.kind, **{f.name: _plain(getattr(self, f.name)) for f in fields(self)}}

    @classmethod
    def from_params(cls, params: dict) -> "ScoreSpec":
        """The spec from its parameters as JSON holds them (lists become the tuples the fields declare)."""
        hints = typing.get_type_hints(cls)
        known = {f.name for f in fields(cls)}
        unknown = set(params) - known
        if unknown:
            raise DiffoodError(f"score kind {cls.kind!r} has no parameter {sorted(unknown)[0]!r}; it takes "
                               f"{', '.join(sorted(known)) or 'none'}")
        return cls(**{k: _typed(v, hints[k]) for k, v in params.items()})

    @property
    def key(self) -> str:
        """A short name of the spec for cache keys and tables: the hash of its dict."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    @property
    def name(self) -> str:
        """Its name in tables and pages, unless a caller names it (e.g. "default")."""
        return self.kind

    def text(self) -> str:
        """How a user types it (what `scores.parse` reads): kind(param=value, ...) with the parameters that
        differ from the kind's defaults."""
        default = {f.name: f.default for f in fields(self)}
        changed = [f"{k}={' '.join(map(str, v)) if isinstance(v, tuple) else v}"
                   for k, v in ((f.name, getattr(self, f.name)) for f in fields(self)) if v != default[k]]
        return f"{self.kind}({', '.join(changed)})" if changed else self.kind


def _plain(v):
    if isinstance(v, ScoreSpec):
        return v.to_dict()
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


def _typed(v, hint):
    origin = typing.get_origin(hint)
    if origin is tuple:
        inner = typing.get_args(hint)[0]
        return tuple(_typed(x, inner) for x in (v if isinstance(v, (list, tuple)) else [v]))
    if hint is ScoreSpec or (isinstance(hint, type) and issubclass(hint, ScoreSpec)):
        return v if isinstance(v, ScoreSpec) else from_dict(v)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if v is None else _typed(v, args[0])
    if hint is bool and isinstance(v, str):
        if v.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"expected true or false, got {v!r}")
        return v.lower() in ("true", "1", "yes")
    if hint in (int, float, str) and v is not None:
        return hint(v)
    return v


def from_dict(d: dict) -> ScoreSpec:
    """A spec from its dict ({"kind": ..., parameters}); an unknown kind is refused in one line."""
    if isinstance(d, ScoreSpec):
        return d
    if not isinstance(d, dict) or "kind" not in d:
        raise DiffoodError(f"a score spec is a dict with a 'kind', got {d!r}")
    params = {k: v for k, v in d.items() if k != "kind"}
    if d["kind"] not in KINDS:
        raise UnknownKind(f"unknown score kind {d['kind']!r}; this diffood knows {', '.join(sorted(KINDS))}")
    return KINDS[d["kind"]].from_params(params)


@dataclass
class Stats:
    """Per term of a score: the mean and standard deviation of each component over ID validation images,
    the components the z-mean uses (those not NaN throughout) and their names."""

    mean: list[np.ndarray]
    std: list[np.ndarray]
    names: list[list[str]]

    def score(self, parts: list[np.ndarray]) -> np.ndarray:
        """The z-mean of components (one (N, D) array per term, in `names` order): per term the mean of its
        z-scores, then the mean over terms."""
        per_term = [np.nanmean((p - m) / s, axis=1) if p.shape[1] else np.full(len(p), np.nan)
                    for p, m, s in zip(parts, self.mean, self.std)]
        return np.mean(np.stack(per_term), axis=0)


def fit_stats(frames: list[pd.DataFrame]) -> Stats:
    """Stats from the component frames of a score's terms on ID validation images (columns as `columns` gives
    them, plus keys). A component NaN throughout (LPIPS unavailable) is left out."""
    means, stds, names = [], [], []
    for f in frames:
        cols = [c for c in component_names(f) if f[c].notna().any()] or component_names(f)[:1]
        means.append(f[cols].mean().to_numpy())
        stds.append(f[cols].std().to_numpy())
        names.append(cols)
    return Stats(means, stds, names)


def component_names(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in TABLE_KEYS]


def zmean_frame(spec: ScoreSpec, scores: dict[str, pd.DataFrame], reference: dict[str, pd.DataFrame],
                keys: list[str]) -> pd.DataFrame:
    """One row per image (keys + index) with its score in column "score", from stored rows (`scores` and
    the ID validation `reference`, each by table name). ValueError when the tables lack what it needs."""
    frames, refs = [], []
    for term in spec.terms():
        table = table_name(term)
        rows, ref = scores.get(table), reference.get(table)
        if rows is None or ref is None:
            raise ValueError(f"no {table} table for {term.describe()}")
        frames.append(term.columns(rows, [*[k for k in keys if k in rows.columns and k != "index"], "index"]))
        refs.append(term.columns(ref, ["index"]))
    stats = fit_stats(refs)
    on = [c for c in frames[0].columns if c in TABLE_KEYS]
    base = frames[0][on]
    parts = [base.merge(f, on=on, how="left")[names].to_numpy(dtype=float) for f, names in zip(frames, stats.names)]
    return base.assign(score=stats.score(parts)).sort_values(on, ignore_index=True)


def table_name(spec: ScoreSpec) -> str:
    """The store table a term's rows live in: a shared one, or one of its own named by kind and key."""
    return spec.table or f"{spec.kind}-{spec.key}"


class Fitted:
    """A kind scored against a state fitted on ID training images (a density, a covariance), kept with the
    checkpoint (fitted.py). Mix in before ScoreSpec, declare a `train` field (the images it is fitted on) and
    implement `statistics` (per-image values, the network calls) and `fit_statistics` / `score_statistics`."""

    def statistics(self, ctx: Context, x: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    def fit_statistics(self, stats: np.ndarray, seed: int = 0) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def score_statistics(self, stats: np.ndarray, state: dict[str, torch.Tensor]) -> np.ndarray:
        """(N, D) components from the statistics, higher = more OOD."""
        raise NotImplementedError

    def training_statistics(self, ctx: Context) -> np.ndarray:
        """The statistics of the first `train` ID training images (the seed-0 order the feature bank uses)."""
        x = to_model_input(load_images(ctx.checkpoint.data.name, "train", self.train, 0, ctx.data_dir,
                                       id=ctx.checkpoint.data)).to(ctx.device)
        return self.statistics(ctx, x)

    def fit(self, ctx: Context) -> dict[str, torch.Tensor]:
        """The checkpoint's fitted state; fitted.NotFitted (one line, with the command that fits it) when absent."""
        return load_fit(ctx.checkpoint, self)[0]

    def components(self, ctx: Context, x: torch.Tensor, state=None) -> torch.Tensor:
        state = state if state is not None else self.fit(ctx)
        return torch.as_tensor(self.score_statistics(self.statistics(ctx, x), state))


def fit_and_save(spec: ScoreSpec, ctx: Context, seed: int = 0):
    """Fit a Fitted kind on the checkpoint's ID training images and save the state beside it: its path."""
    if not isinstance(spec, Fitted):
        raise DiffoodError(f"{spec.name} fits nothing: it is scored without a fitted state")
    state = spec.fit_statistics(spec.training_statistics(ctx), seed)
    source = {"dataset": ctx.checkpoint.data.name, "split": "train", "n": spec.train, "order_seed": 0, "seed": seed}
    return save_fit(ctx.checkpoint, spec, state, source)


def batched(ctx: Context, x: torch.Tensor, fn: Callable[[torch.Tensor, slice], np.ndarray]) -> np.ndarray:
    """fn(batch, its rows) over x in batches of ctx.batch_size, concatenated; ctx.progress after each batch."""
    out = []
    for start in range(0, len(x), ctx.batch_size):
        rows = slice(start, min(start + ctx.batch_size, len(x)))
        out.append(np.asarray(fn(x[rows], rows), dtype=np.float64))
        if ctx.progress:
            ctx.progress(rows.stop - rows.start)
    return np.concatenate(out) if out else np.zeros((0, 0))
