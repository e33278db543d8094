"""diffood: out-of-distribution detection with diffusion models. `diffood.load()` gives a Scorer (api.py)."""

from .api import Explanation, Scorer, fit, load

__all__ = ["Explanation", "Scorer", "fit", "load"]
__version__ = "0.5.0"
