import json

import pytest
import torch
from diffusers import UNet2DModel
from safetensors.torch import save_file

from diffood.errors import CheckpointError
from diffood.model import (
    CONFIG_NAME,
    META_NAME,
    WEIGHTS_NAME,
    CheckpointMeta,
    ModelConfig,
    build_unet,
    count_parameters,
    load_checkpoint,
    save_checkpoint,
)


def test_default_config_size():
    assert 1e6 < count_parameters(build_unet(ModelConfig())) < 3e6


def test_round_trip_keeps_weights_and_meta(tiny_unet, tmp_path):
    meta = CheckpointMeta(training_data="x", training={"steps": 3})
    save_checkpoint(tiny_unet, tmp_path / "c", meta)
    ckpt = load_checkpoint(tmp_path / "c")
    assert ckpt.meta == meta and len(ckpt.sha256) == 64
    for (k, a), (_, b) in zip(tiny_unet.state_dict().items(), ckpt.model.state_dict().items()):
        assert torch.equal(a, b), k
    # diffusers reads the same folder on its own, without pickle
    again = UNet2DModel.from_pretrained(tmp_path / "c", use_safetensors=True)
    assert torch.equal(again.conv_in.weight, tiny_unet.conv_in.weight)


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_missing_folder_and_files(tiny_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope")
    for name in (CONFIG_NAME, WEIGHTS_NAME, META_NAME):
        c = _copy(tiny_checkpoint, tmp_path / name)
        (c / name).unlink()
        with pytest.raises(CheckpointError, match=f"has no {name}"):
            load_checkpoint(c)


def test_corrupt_files(tiny_checkpoint, tmp_path):
    c = _copy(tiny_checkpoint, tmp_path / "json")
    (c / CONFIG_NAME).write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable JSON"):
        load_checkpoint(c)
    c = _copy(tiny_checkpoint, tmp_path / "weights")
    data = (c / WEIGHTS_NAME).read_bytes()
    (c / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt weights"):
        load_checkpoint(c)
    c = _copy(tiny_checkpoint, tmp_path / "pickle")
    (c / WEIGHTS_NAME).write_bytes(b"\x80\x04\x95pickled")
    with pytest.raises(CheckpointError, match="corrupt weights"):
        load_checkpoint(c)


def test_mismatched_weights_config_and_meta(tiny_checkpoint, tmp_path):
    c = _copy(tiny_checkpoint, tmp_path / "w")
    other = build_unet(ModelConfig(block_out_channels=(8, 16, 32), norm_num_groups=4, attention_head_dim=4))
    save_file(other.state_dict(), c / WEIGHTS_NAME)
    with pytest.raises(CheckpointError, match="do not match config.json"):
        load_checkpoint(c)
    c = _copy(tiny_checkpoint, tmp_path / "m")
    meta = json.loads((c / META_NAME).read_text())
    (c / META_NAME).write_text(json.dumps({**meta, "image_size": 32}))
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(c)
    (c / META_NAME).write_text(json.dumps({**meta, "surprise": 1}))
    with pytest.raises(CheckpointError, match="unexpected fields"):
        load_checkpoint(c)
    c = _copy(tiny_checkpoint, tmp_path / "k")
    cfg = json.loads((c / CONFIG_NAME).read_text())
    (c / CONFIG_NAME).write_text(json.dumps({**cfg, "_class_name": "UNet2DConditionModel"}))
    with pytest.raises(CheckpointError, match="not a UNet2DModel"):
        load_checkpoint(c)

