"""What a score kind fits on ID training images (a density, a covariance), kept beside the checkpoint as
`fits/<kind>-<key>.safetensors`: tensors plus JSON metadata naming the spec, the weights and the images it was
fitted on. A kind that needs one and finds none says so in one line, with the command that fits it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from .errors import CheckpointError
from .files import atomic_save_safetensors
from .paths import from_env

FIT_VERSION = 1
FIT_DIR = "fits"


class NotFitted(CheckpointError):
    """A score kind's fitted state is missing or belongs to other weights."""


def fit_path(folder: str | Path, spec) -> Path:
    return Path(folder) / FIT_DIR / f"{spec.kind}-{spec.key}.safetensors"


def cache_folder() -> Path:
    """Where fits go when the checkpoint's folder cannot be written: $DIFFOOD_CACHE_DIR/.. or ~/.cache/diffood."""
    return from_env("DIFFOOD_CACHE_DIR", "evals").parent


def save_fit(checkpoint, spec, tensors: dict[str, torch.Tensor], source: dict) -> Path:
    """Write a fitted state beside the checkpoint (else in the user's cache) and return its path."""
    meta = {"spec": spec.to_dict(), "checkpoint_sha256": checkpoint.key, "source": source, "version": FIT_VERSION}
    for folder in (Path(checkpoint.path), cache_folder()):
        path = fit_path(folder, spec)
        try:
            atomic_save_safetensors(tensors, path, metadata={"diffood_fit": json.dumps(meta)})
            return path
        except OSError:
            continue
    raise NotFitted(f"could not write the fitted {spec.name} anywhere (tried {checkpoint.path} and {cache_folder()})")


def load_fit(checkpoint, spec) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of the spec's fitted state for this checkpoint; NotFitted, one line, when there is none
    or it was fitted for other weights or settings."""
    for folder in (Path(checkpoint.path), cache_folder()):
        path = fit_path(folder, spec)
        if path.is_file():
            return _read(path, checkpoint, spec)
    raise NotFitted(f"{checkpoint.path} has no fitted {spec.name} ({spec.describe()}); fit it on ID training images "
                    f"with `diffood fit-score --checkpoint {checkpoint.path} --score '{spec.text()}'`")


def has_fit(checkpoint, spec) -> bool:
    """Whether the spec's fitted state for this checkpoint can be read."""
    try:
        load_fit(checkpoint, spec)
    except NotFitted:
        return False
    return True


def _read(path: Path, checkpoint, spec) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["diffood_fit"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors and json raise several types for a damaged file
        raise NotFitted(f"fitted state {path} is unreadable ({type(e).__name__}: {str(e)[:120]}); delete it and fit "
                        f"again with `diffood fit-score`") from e
    if meta.get("version") != FIT_VERSION or meta.get("spec") != spec.to_dict():
        raise NotFitted(f"fitted state {path} is for another version or spec; fit again with `diffood fit-score`")
    if meta.get("checkpoint_sha256") != checkpoint.key:
        raise NotFitted(f"fitted state {path} was fitted for other weights; fit again with "
                        f"`diffood fit-score --checkpoint {checkpoint.path} --score '{spec.text()}'`")
    return tensors, meta
