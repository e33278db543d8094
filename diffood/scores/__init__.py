"""Score kinds: one module each, registered by name (base.register). A checkpoint's pick, the evaluation, the API,
the CLI and the pages all describe a score as one ScoreSpec, and find kinds here.

Adding a kind: a module with a `@register`ed frozen dataclass subclassing ScoreSpec (see base.py), imported
below; `diffood evaluate --methods NAME`, `diffood.load(score="NAME")` and the pages then offer it.
"""

from __future__ import annotations

import json
import re
import typing
from dataclasses import dataclass, field, fields

from ..errors import DiffoodError
from .base import KINDS, Context, ScoreSpec, Stats, UnknownKind, fit_stats, from_dict, register, table_name, zmean_frame
from .diffpath import DiffPath
from .gaussian import GaussianHead
from .knn import Features
from .likelihood import Likelihood
from .msma import MSMA
from .reconstruction import Reconstruction
from .zmean import ZMean

__all__ = ["KINDS", "Context", "DiffPath", "Features", "GaussianHead", "Likelihood", "MSMA", "Pick", "Reconstruction", "ScoreSpec", "Stats", "UnknownKind", "ZMean",
           "fit_stats", "from_dict", "method_names", "named_scores", "parse", "register", "table_name", "zmean_frame",
           "DEFAULT", "RECONSTRUCTION", "FEATURES", "COMBINED", "MULTI_T", "PICK_VERSION"]

# the scores an evaluation names, in tables and pages
DEFAULT, RECONSTRUCTION, FEATURES, COMBINED, MULTI_T = "default", "reconstruction", "features", "both", "multi-t"
PICK_VERSION = 2  # diffood.json "score": 1 had "kind": features|reconstruction|both with the terms beside it


@dataclass(frozen=True)
class Pick:
    """What `diffood select` chose for a checkpoint (diffood.json "score"): the default score, the best
    reconstruction score alone, and how they were chosen. `own` is False for the fallback a checkpoint
    without a pick of its own scores with."""

    default: ScoreSpec
    reconstruction: Reconstruction
    rule: str = ""
    tolerance: float = 0.0
    proxies: dict = field(default_factory=dict)  # proxy set -> the default's AUROC on it
    mean: float = float("nan")
    worst: float = float("nan")
    candidates: int = 0
    sampler: str = ""
    images: dict = field(default_factory=dict)
    stages: str = ""
    level: float = 0.0  # the paired interval's level of the rule; 0: a record of the fixed-tolerance rule
    own: bool = True

    @property
    def features(self) -> Features | None:
        """The nearest-neighbour feature term of the default score, if it has one: it reads the bank to score."""
        return next((t for t in self.default.terms() if isinstance(t, Features)), None)

    @property
    def embedding_term(self) -> Features | GaussianHead | None:
        """The default score's term that reads UNet embeddings (nearest neighbours or a Gaussian head), if any:
        the checkpoint's bank holds those embeddings of ID training images."""
        return next((t for t in self.default.terms() if isinstance(t, (Features, GaussianHead))), None)

    @property
    def bank_term(self) -> Features:
        """The feature term a bank is built for: the pick's; for a Gaussian head, the nearest neighbours among
        the training images it is fitted on, in the embeddings it reads; else the fallback's."""
        term = self.embedding_term
        if isinstance(term, GaussianHead):
            return Features(term.layer, term.t, term.pooling, bank=term.train)
        return term or FALLBACK.features

    @property
    def calls(self) -> int:
        return self.default.calls()

    def to_record(self) -> dict:
        out = {"version": PICK_VERSION, "default": self.default.to_dict(), "calls": self.calls,
               "reconstruction": self.reconstruction.to_dict()}
        out |= {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("default", "reconstruction", "own")}
        return out

    @classmethod
    def from_record(cls, record: dict | None) -> "Pick":
        """A checkpoint's recorded pick (either version), or FALLBACK for an empty record."""
        if not record:
            return FALLBACK
        if record.get("version", 1) > PICK_VERSION:
            raise DiffoodError(f"this checkpoint's score record has version {record['version']}; this diffood "
                               f"reads up to {PICK_VERSION}: upgrade diffood")
        try:
            if record.get("version", 1) == 1:
                default, recon = _v1_default(record["default"]), Reconstruction.from_params(record["reconstruction"])
            else:
                default, recon = from_dict(record["default"]), from_dict(record["reconstruction"])
        except (KeyError, TypeError, ValueError) as e:
            raise DiffoodError(f"the checkpoint's score record is unreadable ({type(e).__name__}: {e})") from e
        rest = {f.name: record[f.name] for f in fields(cls) if f.name in record and f.name not in
                ("default", "reconstruction", "own")}
        return cls(default, recon, **rest)

    @classmethod
    def of(cls, checkpoint) -> "Pick":
        return cls.from_record(checkpoint.meta.score)


def _v1_default(d: dict) -> ScoreSpec:
    recon = Reconstruction.from_params(d["reconstruction"]) if d.get("reconstruction") else None
    feats = Features.from_params(d["features"]) if d.get("features") else None
    if d["kind"] == "both":
        return ZMean((recon, feats))
    return feats if d["kind"] == "features" else recon


# What the FashionMNIST model's protocol chose (docs/selection.md): a checkpoint without a pick of its own
# scores with it, and every page and command says so
FALLBACK = Pick(Features("up_blocks.0", 50, "max", k=1, draws=1, bank=58_000), Reconstruction((700,), 4, ("mse",)),
                own=False)


def named_scores(pick: Pick, default: ScoreSpec | None = None, features: Features | None = None,
                 multi_ts: tuple[int, ...] = (), methods: tuple[ScoreSpec, ...] = ()) -> dict[str, ScoreSpec]:
    """The scores an evaluation reports by name: the default first (given, else the pick's; the reconstruction
    score when the pick needs features and there are none), then the reconstruction score, the feature term
    and the two combined (with a feature term), multi-t over `multi_ts`, and `methods`, each once. A given
    default's reconstruction or feature term is the reconstruction or feature score."""
    given = default.terms() if default is not None else ()
    # a default given with a term of one kind makes that term the score of its name
    recon = next((t for t in given if isinstance(t, Reconstruction)), pick.reconstruction)
    features = next((t for t in given if isinstance(t, Features)), features)
    named: dict[str, ScoreSpec] = {RECONSTRUCTION: recon}
    if features is not None:
        named |= {FEATURES: features, COMBINED: ZMean((recon, features))}
    if default is None:
        default = pick.default if features is not None or not pick.features else recon
    if multi_ts:
        named[MULTI_T] = Reconstruction(tuple(multi_ts), 1, ("mse", "lpips"))
    for m in methods:
        if m not in named.values() and m != default:
            named[m.name if m.name not in named else f"{m.name} {m.key[:6]}"] = m
    return {DEFAULT: default, **{name: s for name, s in named.items() if s != default}}


def parse(text: str | dict | ScoreSpec, pick: Pick | None = None) -> ScoreSpec:
    """A spec from what a user types: a name the evaluation uses ("default", "reconstruction", "features",
    "both", "multi-t": the checkpoint's own), a kind's name (its default parameters), either with parameters
    changed ("features(k=5, draws=2)", "reconstruction(ts=600 700, draws=2)"), or a spec's JSON."""
    if isinstance(text, (ScoreSpec, dict)):
        return from_dict(text)
    text = text.strip()
    if text.startswith("{"):
        try:
            return from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise DiffoodError(f"score {text!r} is not valid JSON ({e})") from e
    m = re.fullmatch(r"([\w.-]+)\s*(?:\((.*)\))?", text, re.S)
    if not m:
        raise DiffoodError(f"score {text!r}: expected NAME or NAME(param=value, ...)")
    name, args = m.group(1), m.group(2)
    pick = pick or FALLBACK
    presets = {DEFAULT: pick.default, RECONSTRUCTION: pick.reconstruction, FEATURES: pick.bank_term,
               COMBINED: ZMean((pick.reconstruction, pick.bank_term)),
               MULTI_T: Reconstruction((500, 600, 700, 800, 900), 1, ("mse", "lpips"))}
    if name in presets:
        base = presets[name]
    elif name in KINDS:
        try:
            base = KINDS[name].for_pick(pick)
        except TypeError as e:
            raise DiffoodError(f"score kind {name!r} needs its parameters: {name}(param=value, ...) ({e})") from e
    else:
        choices = sorted({*presets, *KINDS} - {"zmean"})
        raise UnknownKind(f"unknown score {name!r}; choose one of {', '.join(choices)}")
    if not args or not args.strip():
        return base
    changes = {}
    hints = typing.get_type_hints(type(base))
    for part in args.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in {f.name for f in fields(base)}:
            raise DiffoodError(f"score {text!r}: {part.strip()!r} is not param=value with a parameter of "
                               f"{base.kind} ({', '.join(f.name for f in fields(base))})")
        value = value.strip()
        changes[key] = value.split() if typing.get_origin(hints[key]) is tuple else value
    try:
        return _with(base, changes)
    except (TypeError, ValueError) as e:
        raise DiffoodError(f"score {text!r}: {e}") from e


def _with(base: ScoreSpec, changes: dict) -> ScoreSpec:
    params = {f.name: getattr(base, f.name) for f in fields(base)} | changes
    return type(base).from_params(params)


def method_names() -> list[str]:
    """What `--methods all` reports: every kind but the composite, each in the settings it is compared in."""
    return [v for name, cls in KINDS.items() if name != "zmean" for v in (cls.variants or (name,))]
