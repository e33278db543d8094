"""Where diffood keeps its files on this machine: one place for the cache folder and what lives in it."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache(*parts: str) -> Path:
    """$XDG_CACHE_HOME/diffood/<parts> (default ~/.cache/diffood/<parts>): data, evals, inductor, data-locations."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "diffood" / Path(*parts)


def from_env(name: str, *default: str) -> Path:
    """The folder an environment variable names, else user_cache(*default)."""
    value = os.environ.get(name)
    return Path(value).expanduser() if value else user_cache(*default)
