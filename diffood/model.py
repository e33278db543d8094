"""The denoiser: a small time-conditioned attention UNet (diffusers UNet2DModel) and its checkpoints.

A checkpoint is a folder in diffusers' layout (`config.json` + `diffusion_pytorch_model.safetensors`)
plus our `diffood.json` (schedule, image size, normalisation, training data, metadata). Loading never
unpickles and refuses anything that does not match exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file

from .diffusion import make_scheduler, resolve_precision
from .errors import CheckpointError, DiffoodError
from .files import atomic_save_safetensors, atomic_write_text
from .paths import user_cache
from .sets import FASHIONMNIST, IdData

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"
META_NAME = "diffood.json"
FORMAT_VERSION = 1
# `--compile auto`: where compiling was measured to repay its first call, and from how many network calls.
# AMX Xeon, bf16: 495 -> 752 calls/s after a 31 s first call, even at about 45,000 calls. Zen 4 (AVX-512-bf16,
# no AMX): 405 -> 439 calls/s after 23-48 s, even only past 120,000-250,000 calls: left eager (docs/performance.md)
COMPILE_PAYS_FROM_CALLS = 50_000
DEFAULT_CHECKPOINT = Path(__file__).parent / "assets" / "model"  # the shipped, trained model: FashionMNIST
# every shipped model, by the name that stands for it wherever a checkpoint is taken, and its label in the app
SHIPPED_MODELS = {"fashionmnist": DEFAULT_CHECKPOINT, "mnist": Path(__file__).parent / "assets" / "model-mnist"}
SHIPPED_LABELS = {"fashionmnist": "FashionMNIST", "mnist": "MNIST"}


def resolve_checkpoint(checkpoint: str | Path | None) -> Path:
    """A checkpoint folder from a path or a shipped model's name ("fashionmnist", "mnist"); None is the
    default model. A folder of that name in the working directory is taken as the folder."""
    if checkpoint is None:
        return DEFAULT_CHECKPOINT
    path = Path(checkpoint).expanduser()
    if not path.exists() and str(checkpoint).lower() in SHIPPED_MODELS:
        return SHIPPED_MODELS[str(checkpoint).lower()]
    return path


def models_dir() -> Path:
    """Where the app looks for more checkpoints: $DIFFOOD_MODELS_DIR, else ./models."""
    return Path(os.environ.get("DIFFOOD_MODELS_DIR", "models")).expanduser()


def find_checkpoints(folder: str | Path | None = None) -> dict[str, str]:
    """{checkpoint folder: label}: the shipped models, then every folder with a diffood.json under `folder`
    (default `models_dir()`), two levels deep at most."""
    found = {str(p): f"{SHIPPED_LABELS[name]} (shipped)" for name, p in SHIPPED_MODELS.items() if (p / META_NAME).is_file()}
    root = Path(folder) if folder is not None else models_dir()
    if root.is_dir():
        for meta in sorted([*root.glob(f"*/{META_NAME}"), *root.glob(f"*/*/{META_NAME}")]):
            found.setdefault(str(meta.parent), meta.parent.relative_to(root).as_posix())
    return found


@dataclass
class ModelConfig:
    """Architecture of the UNet. The default (2.7 M parameters, attention at 7x7 only) trains at
    ~120 img/s on a 2-core CPU; widening only the 7x7 level costs little (benchmarks/throughput.py)."""

    image_size: int = 28
    channels: int = 1  # of the images: 1 grayscale, 3 RGB
    block_out_channels: tuple[int, ...] = field(default=(32, 64, 128), metadata={
        "help": "the UNet's channels per resolution level", "flags": ("--block-channels",)})
    layers_per_block: int = field(default=1, metadata={"help": "ResNet blocks per level"})
    attention: tuple[bool, ...] = (False, False, True)  # per resolution level, finest first
    norm_num_groups: int = field(default=8, metadata={"help": "GroupNorm groups (divides every level's channels)"})
    attention_head_dim: int = field(default=8, metadata={"help": "channels per attention head"})

    def unet_kwargs(self) -> dict:
        down = ["AttnDownBlock2D" if a else "DownBlock2D" for a in self.attention]
        up = ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(self.attention)]
        return dict(
            sample_size=self.image_size,
            in_channels=self.channels,
            out_channels=self.channels,
            block_out_channels=tuple(self.block_out_channels),
            layers_per_block=self.layers_per_block,
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            norm_num_groups=self.norm_num_groups,
            attention_head_dim=self.attention_head_dim,
            act_fn="silu",
        )


def build_unet(config: ModelConfig | None = None) -> UNet2DModel:
    return UNet2DModel(**(config or ModelConfig()).unet_kwargs())


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class CheckpointMeta:
    """What `diffood.json` records next to the diffusers files."""

    image_size: int = 28
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"  # diffusers' names: linear, scaled_linear, squaredcos_cap_v2
    prediction_type: str = "epsilon"  # or v_prediction
    beta_start: float = 0.0001  # the linear schedules' ends (diffusers' defaults)
    beta_end: float = 0.02
    normalisation: str = "x * 2 - 1 (pixels in [0, 1] -> [-1, 1])"
    training_data: str = ""
    training: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    data: dict = field(default_factory=dict)  # sets.IdData: the ID spec and what training recorded of it
    score: dict = field(default_factory=dict)  # the pick `diffood select` recorded (evaluate.checkpoint_pick)

    @property
    def id_data(self) -> IdData:
        """The ID set; a checkpoint without the record is the shipped FashionMNIST model, which predates it."""
        return IdData.from_dict(self.data) if self.data else FASHIONMNIST


@dataclass
class Checkpoint:
    model: UNet2DModel
    meta: CheckpointMeta
    path: Path
    sha256: str  # of the weights file
    precision: str = "fp32"  # the UNet's, resolved for its device: "fp32" or "bf16"

    @property
    def data(self) -> IdData:
        return self.meta.id_data

    @property
    def key(self) -> str:
        """What names the model in cache keys and banks: the weights' sha256, joined by the noise schedule where
        that is not the default one (the same weights noised on another schedule give other scores)."""
        noise = _noise_settings(self.meta)
        if noise == _noise_settings(CheckpointMeta()):
            return self.sha256
        return hashlib.sha256(f"{self.sha256} {json.dumps(noise, sort_keys=True)}".encode()).hexdigest()

    @property
    def scheduler(self):
        """The noise schedule the model was trained on (diffusers' DDPMScheduler), from its diffood.json."""
        m = self.meta
        return make_scheduler(m.num_train_timesteps, m.beta_schedule, m.prediction_type, m.beta_start, m.beta_end)


NOISE_SETTINGS = ("num_train_timesteps", "beta_schedule", "prediction_type", "beta_start", "beta_end")


def _noise_settings(meta: CheckpointMeta) -> dict:
    return {k: getattr(meta, k) for k in NOISE_SETTINGS}


WEIGHT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def save_checkpoint(model: UNet2DModel, folder: str | Path, meta: CheckpointMeta, weights: str = "fp32") -> Path:
    """Write `folder` in diffusers' layout plus `diffood.json`; each file is replaced atomically.
    `weights="fp16"` stores half the bytes; loading casts back to the model's fp32."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    config = dict(model.config)
    config["_class_name"] = type(model).__name__
    state = {k: v.to(WEIGHT_DTYPES[weights]) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    atomic_save_safetensors(state, folder / WEIGHTS_NAME, metadata={"format": "pt"})
    atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True, default=list))
    atomic_write_text(folder / META_NAME, json.dumps(asdict(meta), indent=2))
    return folder


def record_score(folder: str | Path, score: dict) -> Path:
    """Write a protocol's pick into a checkpoint's diffood.json (its weights, and so its tables, unchanged)."""
    path = Path(folder) / META_NAME
    meta = json.loads(path.read_text())
    meta["score"] = score
    atomic_write_text(path, json.dumps(meta, indent=2))
    return path


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_checkpoint(folder: str | Path | None, device: str | torch.device = "cpu", precision: str = "auto",
                    compile: bool = False) -> Checkpoint:
    """Load a checkpoint folder, or a shipped model by name (None: the default), raising CheckpointError
    with the reason for anything amiss. `precision` ("auto", "fp32", "bf16") is resolved here for
    `device`, once. `compile`: see `compile_for_inference` (a first call of a minute; docs/performance.md)."""
    folder = resolve_checkpoint(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder} (shipped models by name: {', '.join(SHIPPED_MODELS)})")
    for name in (CONFIG_NAME, WEIGHTS_NAME, META_NAME):
        if not (folder / name).is_file():
            raise CheckpointError(f"checkpoint {folder} has no {name}")
    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
        meta_dict = json.loads((folder / META_NAME).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise CheckpointError(f"checkpoint {folder}: unreadable JSON ({e})") from e
    if not isinstance(config, dict) or not isinstance(meta_dict, dict):
        raise CheckpointError(f"checkpoint {folder}: {CONFIG_NAME} and {META_NAME} must each hold a JSON object")
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise CheckpointError(f"checkpoint {folder} holds a {config.get('_class_name')}, not a UNet2DModel")
    try:
        meta = CheckpointMeta(**meta_dict)
    except TypeError as e:
        raise CheckpointError(f"checkpoint {folder}: {META_NAME} has unexpected fields ({e})") from e
    if meta.format_version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {folder}: format version {meta.format_version}, expected {FORMAT_VERSION}")
    try:
        make_scheduler(meta.num_train_timesteps, meta.beta_schedule, meta.prediction_type, meta.beta_start, meta.beta_end)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {folder}: {e}") from e
    try:
        data = meta.id_data
    except (TypeError, ValueError, DiffoodError) as e:
        raise CheckpointError(f"checkpoint {folder}: {META_NAME} has an unreadable data record ({e})") from e
    expected = (meta.image_size, data.channels, data.channels)
    found = (config.get("sample_size"), config.get("in_channels"), config.get("out_channels"))
    if found != expected or data.size != meta.image_size:
        raise CheckpointError(
            f"checkpoint {folder}: config.json (sample_size={found[0]}, channels {found[1]}->{found[2]}) does not "
            f"match {META_NAME} (image_size={meta.image_size}, data {data.size} px, {data.channels}->{data.channels})"
        )
    try:
        model = UNet2DModel.from_config(config)
    except Exception as e:  # diffusers raises several types for a bad config
        raise CheckpointError(f"checkpoint {folder}: config.json does not build a UNet2DModel ({e})") from e
    try:
        state = load_file(folder / WEIGHTS_NAME)
    except Exception as e:  # safetensors raises its own error type for corrupt files
        raise CheckpointError(f"checkpoint {folder}: corrupt weights file ({e})") from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {folder}: weights do not match config.json ({str(e)[:500]})") from e
    model.eval().requires_grad_(False).to(device)
    precision = resolve_precision(precision, device)
    if torch.device(device).type == "cpu" and precision == "fp32":  # bf16 on CPU ran faster without it
        model.to(memory_format=torch.channels_last)
    if compile:
        model = compile_for_inference(model, precision)
    return Checkpoint(model=model, meta=meta, path=folder, sha256=file_sha256(folder / WEIGHTS_NAME), precision=precision)


COMPILE_MODES = ("auto", "on", "off")


def compile_for_inference(model: UNet2DModel, precision: str) -> torch.nn.Module:
    """torch.compile for scoring: inductor freezing (weights folded in as constants, oneDNN prepacking),
    bf16 weights under bf16, and one static batch shape (the samplers pad the last batch), so a run
    compiles once. Compiled graphs are kept in inductor's on-disk cache, $TORCHINDUCTOR_CACHE_DIR, by
    default ~/.cache/diffood/inductor, so a later run with the same shapes compiles from it."""
    import torch._inductor.config as inductor

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(user_cache("inductor")))
    inductor.freezing = True
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    compiled = torch.compile(model, dynamic=False)
    compiled.static_batch = True  # read by diffusion.pad_batch
    return compiled


def resolve_compile(mode: str, calls: int, device: torch.device | str) -> bool:
    """Whether to compile for a run of `calls` network calls: `auto` compiles on CPU only when the run is
    long enough for the measured gain per call to repay the first call (docs/performance.md)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; choose one of {list(COMPILE_MODES)}")
    if mode != "auto":
        return mode == "on"
    amx = torch.device(device).type == "cpu" and torch.cpu._is_amx_tile_supported()
    return amx and calls >= COMPILE_PAYS_FROM_CALLS
