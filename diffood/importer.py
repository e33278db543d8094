"""A DDPM trained elsewhere, laid out as diffusers' `DDPMPipeline.save_pretrained` writes it
(`model_index.json`, `unet/`, `scheduler/`), made a self-contained diffood checkpoint: its UNet and
weights as they are, its noise schedule and prediction type from the scheduler's config, its image size
and channels from the UNet's, and the ID data the user names."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from diffusers import DDPMScheduler, UNet2DModel
from safetensors.torch import load_file

from .datasets import DataSpec, download_allowed, load_split, remember_location, resolve_data_dir
from .diffusion import make_scheduler
from .errors import CheckpointError
from .model import NOISE_SETTINGS, CheckpointMeta, count_parameters, save_checkpoint
from .sets import describe_data


def _json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{path.parent.parent}: no {path.relative_to(path.parent.parent)} (expected the layout "
                              f"DDPMPipeline.save_pretrained writes: model_index.json, unet/, scheduler/)") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e})") from e
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return d


def import_pipeline(folder: str | Path, data: str, out: str | Path, data_dir: str | None = None) -> Path:
    """Write a diffood checkpoint to `out` from a saved DDPM pipeline, with `data` (a data spec) as its ID set.
    Problems raise CheckpointError (or a data error) with one line that says what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"pipeline folder not found: {folder}")
    _json(folder / "model_index.json")
    unet_config = _json(folder / "unet" / "config.json")
    if unet_config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise CheckpointError(f"{folder}: the pipeline's UNet is a {unet_config.get('_class_name')}; diffood reads "
                              f"unconditional UNet2DModel pipelines")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{folder}: no unet/diffusion_pytorch_model.safetensors (pickled .bin weights are not read; "
                              f"save the pipeline with safe_serialization=True)")
    sched = _json(folder / "scheduler" / "scheduler_config.json")
    if sched.get("trained_betas") is not None:
        raise CheckpointError(f"{folder}: a schedule given as trained_betas is not supported")
    defaults = DDPMScheduler().config  # what the config leaves out, as diffusers reads it
    schedule = {k: sched.get(k, defaults[k]) for k in NOISE_SETTINGS}
    try:
        make_scheduler(**schedule)
    except ValueError as e:
        raise CheckpointError(f"{folder}: {e}") from e
    size, channels = unet_config.get("sample_size"), unet_config.get("in_channels")
    size = size[0] if isinstance(size, list) and len(set(size)) == 1 else size
    if not isinstance(size, int) or channels not in (1, 3) or unet_config.get("out_channels") != channels:
        raise CheckpointError(f"{folder}: the UNet takes {size} px with {channels} -> {unet_config.get('out_channels')} "
                              f"channels; diffood reads square images with 1 or 3 channels in and out")
    try:
        model = UNet2DModel.from_config(unet_config)
        model.load_state_dict(load_file(weights), strict=True)
    except Exception as e:  # diffusers and safetensors raise several types for a bad config or file
        raise CheckpointError(f"{folder}: the UNet's weights do not load ({str(e)[:300]})") from e
    spec = DataSpec(data, size, channels)
    train = load_split(spec, "train", resolve_data_dir(data_dir), download_allowed())
    remember_location(spec)
    id_data = describe_data(spec, train)
    meta = CheckpointMeta(
        image_size=size, **schedule,
        training_data=f"imported from {folder.name} (a diffusers DDPMPipeline); ID set {id_data.label}, "
                      f"{id_data.train_images} training images",
        training={"imported_from": folder.name, "parameters": count_parameters(model)},
        data=asdict(id_data))
    return save_checkpoint(model, out, meta, "fp32")
