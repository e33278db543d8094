"""The diffusion model's own features: embed an image with the checkpoint's UNet and score it by its
cosine distance to the k-th nearest ID training image in that space (the feature bank).

An embedding: noise the image to t (noise fixed by (seed, t, draw), as for reconstruction), run the
UNet once, take one block's output (forward hooks; no copy of the UNet), pool it over space and
L2-normalise it. The bank holds the embeddings of ID *training* images, never validation or test, and
ships beside the weights with its settings and the hash of the weights it came from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open

from . import distributed
from .diffusion import add_noise, autocast, make_scheduler, noise_for, unet_timestep
from .errors import CheckpointError
from .files import atomic_save_safetensors
from .images import to_model_input
from .sets import FASHIONMNIST, load_images

# the UNet's blocks in forward order: where a hook can read an embedding
LAYERS = ("down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.0", "up_blocks.1", "up_blocks.2")
POOLINGS = ("mean", "max")
KS = (1, 5, 10)  # the k a score table holds the k-th nearest distance for
KNN_METRICS = tuple(f"knn{k}" for k in KS)
BANK_NAME = "feature_bank.safetensors"
BANK_VERSION = 1
BANK_DRAW = 1000  # the noise draw bank images are embedded with


class BankError(CheckpointError):
    """A feature bank is unreadable or does not belong to the checkpoint it sits beside."""


@dataclass(frozen=True)
class FeatureSpec:
    """How an image becomes an embedding: which block's output, at which t, pooled how."""

    layer: str
    t: int
    pooling: str = "mean"

    def __post_init__(self):
        if self.layer not in LAYERS:
            raise ValueError(f"unknown layer {self.layer!r}; choose one of {list(LAYERS)}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; choose one of {list(POOLINGS)}")

    def describe(self) -> str:
        return f"{self.pooling}-pooled {self.layer} features at t = {self.t}"


class _Done(Exception):
    """Raised by the last hook a forward pass needs: the blocks after it are not run."""


def _pool(h: torch.Tensor, pooling: str) -> torch.Tensor:
    h = h.float()
    return h.mean((-2, -1)) if pooling == "mean" else h.amax((-2, -1))


@torch.inference_mode()
def embed(model: torch.nn.Module, x: torch.Tensor, t: int, noise: torch.Tensor, layers=LAYERS, poolings=("mean",),
          precision: str = "fp32", batch_size: int = 256, progress: Callable[[int], None] | None = None,
          scheduler=None) -> dict[tuple[str, str], torch.Tensor]:
    """Unit-norm embeddings {(layer, pooling): (N, C)} of images x in [-1, 1], noised to t with `noise`.
    One UNet call per image; blocks after the last layer asked for are skipped. `progress(k)` per batch.
    Under torchrun the batches are shared among the ranks and every rank gets every embedding."""
    scheduler = scheduler or make_scheduler()
    last = max(LAYERS.index(layer) for layer in layers)
    captured: dict[str, torch.Tensor] = {}

    def hook(name):
        def save(_module, _inputs, output):
            captured[name] = output[0] if isinstance(output, tuple) else output
            if name == LAYERS[last]:
                raise _Done
        return save

    unet = getattr(model, "_orig_mod", model)  # eager even when compiled: hooks and an early stop
    handles = [unet.get_submodule(name).register_forward_hook(hook(name)) for name in LAYERS[:last + 1] if name in layers]
    out: dict[tuple[str, str], list[torch.Tensor]] = {(layer, p): [] for layer in layers for p in poolings}
    try:
        xt = add_noise(x, noise, t, scheduler)
        for xb in distributed.batches(xt, batch_size):  # under torchrun: this rank's share
            timestep = torch.full((len(xb),), unet_timestep(t), device=xb.device, dtype=torch.long)
            try:
                with autocast(xb.device, precision):
                    unet(xb, timestep)
            except _Done:
                pass
            for (layer, p), parts in out.items():
                parts.append(torch.nn.functional.normalize(_pool(captured[layer], p), dim=1).cpu())
            if progress:
                progress(len(xb) * distributed.world())
    finally:
        for h in handles:
            h.remove()
    width = {layer: layer_channels(model, layer) for layer in layers}
    return {(layer, p): distributed.cat(torch.cat([torch.empty(0, width[layer]), *parts]))
            for (layer, p), parts in out.items()}


def knn_distances(queries: torch.Tensor, bank: torch.Tensor, ks=KS, chunk: int = 512) -> dict[int, torch.Tensor]:
    """Cosine distance of each unit-norm query to its k-th nearest bank row, for each k in ks.
    Queries go `chunk` at a time, so memory stays at chunk x len(bank) floats."""
    bank = bank.float()
    kmax = min(max(ks), len(bank))
    parts = [(1 - (q.float() @ bank.T).topk(kmax, dim=1).values) for q in queries.split(chunk)]
    d = torch.cat(parts) if parts else torch.empty(0, kmax)
    return {k: d[:, min(k, kmax) - 1].clamp_min(0) for k in ks}


@dataclass
class FeatureBank:
    """Embeddings of ID training images (unit rows, fp16) and what made them."""

    spec: FeatureSpec
    embeddings: torch.Tensor  # (N, C)
    checkpoint_sha256: str  # model.Checkpoint.key: the weights' sha256, with the noise schedule where not the default
    source: dict  # dataset, split, n, seed: load_images(**source) gives the images in bank order; seed: the noise's too

    @property
    def n(self) -> int:
        return len(self.embeddings)

    def describe(self) -> str:
        return f"{self.n:,} {self.source.get('dataset', 'ID')} training images, {self.spec.describe()}"

    def metadata(self) -> dict:
        return {"spec": asdict(self.spec), "checkpoint_sha256": self.checkpoint_sha256, "source": self.source,
                "n": self.n, "version": BANK_VERSION}

    def fingerprint(self) -> str:
        """What identifies the bank in cache keys: its settings and the weights it came from."""
        return json.dumps(self.metadata(), sort_keys=True)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_save_safetensors({"embeddings": self.embeddings.half()}, path,
                                metadata={"diffood_bank": json.dumps(self.metadata())})
        return path

    def check(self, term) -> None:
        """Refuse a score whose feature term (scores.Features) asks for another bank than this one."""
        if term.spec != self.spec or term.bank != self.n:
            raise BankError(f"the score asks for a bank of {term.bank:,} images with {term.spec.describe()}; "
                            f"this checkpoint's bank holds {self.describe()}; rebuild it with `python -m diffood bank`")

    def distances(self, queries: torch.Tensor, ks=KS) -> dict[int, torch.Tensor]:
        return knn_distances(queries, self.embeddings, ks)

    def nearest(self, query: torch.Tensor, n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices into the bank, cosine distances) of the n nearest bank rows to one query (C,)."""
        sim = self.embeddings.float() @ query.float()
        top = sim.topk(min(n, self.n))
        return top.indices, (1 - top.values).clamp_min(0)


def bank_images(bank: FeatureBank, indices, data_dir=None, id=None) -> torch.Tensor:
    """The training images behind bank rows (uint8, N x C x S x S) of the checkpoint's ID set `id`.
    DataUnavailableError when neither the data folder nor the shipped sample holds them."""
    src = bank.source
    pixels = load_images(src["dataset"], src["split"], src["n"], src["seed"], data_dir, id=id or FASHIONMNIST)
    return pixels[torch.as_tensor(indices)]


def layer_channels(model: torch.nn.Module, layer: str) -> int:
    """Channels of a block's output: the length of its embeddings."""
    return getattr(model, "_orig_mod", model).get_submodule(layer).resnets[-1].out_channels


def load_bank(path: str | Path, checkpoint_sha256: str, width: int | None = None) -> FeatureBank:
    """Read a bank, refusing (BankError, one line) one that is damaged, made from other weights or whose
    embeddings are not `width` (the layer's channels) long."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["diffood_bank"])
            embeddings = f.get_tensor("embeddings")
        spec = FeatureSpec(**meta["spec"])
        bank = FeatureBank(spec, embeddings, meta["checkpoint_sha256"], meta["source"])
    except Exception as e:  # safetensors, json and our own checks raise several types for a damaged file
        raise BankError(f"feature bank {path} is unreadable ({type(e).__name__}: {str(e)[:150]}); "
                        f"rebuild it with `python -m diffood bank --checkpoint {path.parent}`") from e
    if meta.get("version") != BANK_VERSION:
        raise BankError(f"feature bank {path} has version {meta.get('version')}, expected {BANK_VERSION}; rebuild it")
    if bank.checkpoint_sha256 != checkpoint_sha256:
        raise BankError(f"feature bank {path} was built from other weights or another noise schedule (key "
                        f"{bank.checkpoint_sha256[:12]}…, these are {checkpoint_sha256[:12]}…); rebuild it with "
                        f"`python -m diffood bank --checkpoint {path.parent}`")
    width = width or embeddings.shape[-1]
    if embeddings.dim() != 2 or len(embeddings) != meta.get("n") or embeddings.shape[1] != width:
        raise BankError(f"feature bank {path} holds {tuple(embeddings.shape)} embeddings; its settings say "
                        f"{meta.get('n')} x {width} ({spec.layer}); rebuild it")
    return bank


def checkpoint_bank(checkpoint) -> FeatureBank | None:
    """The bank beside a checkpoint's weights, or None when it has none; read once per version of the file
    (the app asks on every rerun)."""
    path = Path(checkpoint.path) / BANK_NAME
    if not path.is_file():
        return None
    layer = _bank_layer(str(path), path.stat().st_mtime_ns)
    width = layer_channels(checkpoint.model, layer) if layer in LAYERS else None
    return _read_bank(str(path), path.stat().st_mtime_ns, checkpoint.key, width)


@lru_cache(maxsize=8)
def _bank_layer(path: str, mtime_ns: int) -> str | None:
    try:
        with safe_open(path, framework="pt") as f:
            return json.loads(f.metadata()["diffood_bank"])["spec"]["layer"]
    except Exception:  # load_bank says what is wrong
        return None


@lru_cache(maxsize=8)
def _read_bank(path: str, mtime_ns: int, sha: str, width: int | None) -> FeatureBank:
    return load_bank(path, sha, width)


def build_bank(checkpoint, spec: FeatureSpec, n: int | None = 10_000, seed: int = 0, data_dir=None,
               batch_size: int = 256, progress: Callable[[int, int], None] | None = None,
               embeddings: torch.Tensor | None = None) -> FeatureBank:
    """Embed n ID training images (the first n of a seed-fixed order; None: all) into a bank.
    `embeddings` (already computed the same way, e.g. by the selection protocol) skips the UNet."""
    source = {"dataset": checkpoint.data.name, "split": "train", "n": n, "seed": seed}
    if embeddings is None:
        device = next(checkpoint.model.parameters()).device
        x = to_model_input(load_images(checkpoint.data.name, "train", n, seed, data_dir, id=checkpoint.data)).to(device)
        done = 0

        def step(k: int) -> None:
            nonlocal done
            done += k
            if progress:
                progress(done, len(x))

        embeddings = embed(checkpoint.model, x, spec.t, bank_noise(len(x), spec.t, seed, x.shape[1:]), (spec.layer,),
                           (spec.pooling,), checkpoint.precision, batch_size, step, checkpoint.scheduler)[spec.layer, spec.pooling]
    source["n"] = len(embeddings)
    return FeatureBank(spec, embeddings.half(), checkpoint.key, source)


def bank_at(checkpoint, bank: FeatureBank, t: int, data_dir=None, cache_dir=None, batch_size: int = 256,
            progress: Callable[[int, int], None] | None = None) -> FeatureBank:
    """The same bank (layer, pooling, images, seed) embedded at another t: the checkpoint's own at its t,
    else read from `cache_dir`/banks, or made from the embeddings `embed_set` cached there, or built from the
    training images, and kept there."""
    if t == bank.spec.t:
        return bank
    spec = FeatureSpec(bank.spec.layer, t, bank.spec.pooling)
    n, seed = bank.source.get("n"), bank.source.get("seed", 0)
    path = Path(cache_dir) / "banks" / f"{checkpoint.key[:16]}-{spec.layer}-{spec.pooling}-t{t}-n{n}-s{seed}.safetensors" \
        if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            return _read_bank(str(path), path.stat().st_mtime_ns, checkpoint.key,
                              layer_channels(checkpoint.model, spec.layer))  # read once per file version
        except BankError:  # a damaged cached bank is built again
            path.unlink(missing_ok=True)
    reused = cached_embeddings(cache_dir, checkpoint, checkpoint.data.name, "train", n, t, BANK_DRAW, seed) \
        if cache_dir is not None else None  # the selection protocol's, when it embedded these images
    built = build_bank(checkpoint, spec, n, seed, data_dir, batch_size, progress,
                       reused[spec.layer, spec.pooling] if reused else None)
    if path is not None:
        built.save(path)
    return built


def bank_noise(n: int, t: int, seed: int, image_shape: tuple[int, ...] = (1, 28, 28)) -> torch.Tensor:
    """The noise bank image i gets: a stream of the seed that no score draws from, so a query never
    shares its noise with the bank row of the same index."""
    return noise_for(n, t, seed, image_shape, draw=BANK_DRAW)


def _embedding_path(cache_dir, checkpoint, name, split, n, t, draw, seed) -> Path:
    return Path(cache_dir) / "embeddings" / f"{checkpoint.key[:16]}-{name}-{split}-s{seed}-t{t}-d{draw}-n{n}.safetensors"


def cached_embeddings(cache_dir, checkpoint, name: str, split: str, n: int | None, t: int, draw: int,
                      seed: int = 0) -> dict[tuple[str, str], torch.Tensor] | None:
    """What `embed_set` cached for these images, or for a longer prefix of the same order (cut to n)."""
    found, pattern = [], _embedding_path(cache_dir, checkpoint, name, split, "*", t, draw, seed)
    for p in pattern.parent.glob(pattern.name):
        size = p.stem.rsplit("-n", 1)[1]
        if size == str(n) or (n is not None and size.isdigit() and int(size) >= n):
            found.append((size != str(n), int(size) if size.isdigit() else 0, p))
    for *_, p in sorted(found):
        try:
            with safe_open(str(p), framework="pt") as f:
                return {tuple(k.split("/")): f.get_tensor(k)[:n].float() for k in f.keys()}
        except Exception:  # a damaged cache file is recomputed
            p.unlink(missing_ok=True)
    return None


def embed_set(checkpoint, name: str, split: str, n: int | None, t: int, draw: int, seed: int = 0, data_dir=None,
              cache_dir: str | Path | None = None, batch_size: int = 256,
              progress: Callable[[int], None] | None = None) -> dict[tuple[str, str], torch.Tensor]:
    """Every layer's and pooling's embedding of a data set's first n images (seed-fixed order) at t, with
    row-i noise of `draw` (BANK_DRAW for bank images). Kept in `cache_dir` when given: the selection
    protocol asks for the same sets again, and a train set costs minutes."""
    if cache_dir is not None:
        cached = cached_embeddings(cache_dir, checkpoint, name, split, n, t, draw, seed)
        if cached is not None:
            return cached
    device = next(checkpoint.model.parameters()).device
    x = to_model_input(load_images(name, split, n, seed, data_dir, id=checkpoint.data)).to(device)
    out = embed(checkpoint.model, x, t, noise_for(len(x), t, seed, x.shape[1:], draw), LAYERS, POOLINGS,
                checkpoint.precision, batch_size, progress, checkpoint.scheduler)
    out = {k: v.half() for k, v in out.items()}
    if cache_dir is not None:
        atomic_save_safetensors({"/".join(k): v for k, v in out.items()}, _embedding_path(
            cache_dir, checkpoint, name, split, n, t, draw, seed))
    return {k: v.float() for k, v in out.items()}  # as the cache would return them
