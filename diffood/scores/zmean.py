"""A composite score: the mean of its terms' z-scores (e.g. reconstruction and features together)."""

from __future__ import annotations

from dataclasses import dataclass

from ..diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS
from .base import ScoreSpec, from_dict, register


@register
@dataclass(frozen=True)
class ZMean(ScoreSpec):
    """The mean over `terms` of each term's z-mean against ID validation images."""

    kind = "zmean"
    terms_: tuple[ScoreSpec, ...] = ()

    def __post_init__(self):
        if len(self.terms_) < 2:
            raise ValueError("a z-mean needs two terms or more")

    def terms(self) -> tuple[ScoreSpec, ...]:
        return tuple(t for term in self.terms_ for t in term.terms())

    def calls(self, sampler: str = DEFAULT_SAMPLER, steps: int = DEFAULT_STEPS) -> int:
        return sum(t.calls(sampler, steps) for t in self.terms_)

    def describe(self) -> str:
        return "z-mean of " + "; and ".join(t.describe() for t in self.terms_)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "terms": [t.to_dict() for t in self.terms_]}

    @classmethod
    def from_params(cls, params: dict) -> "ZMean":

        return cls(tuple(from_dict(t) for t in params.get("terms", ())))
