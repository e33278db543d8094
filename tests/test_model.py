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



def test_precision_is_resolved_once_at_load(tiny_checkpoint, monkeypatch):
    from diffood import diffusion

    assert load_checkpoint(tiny_checkpoint, precision="fp32").precision == "fp32"
    assert load_checkpoint(tiny_checkpoint, precision="bf16").precision == "bf16"
    for amx, bf16, expected in ((True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=bf16: v)
        assert diffusion.resolve_precision("auto", "cpu") == expected
    with pytest.raises(ValueError, match="unknown precision"):
        diffusion.resolve_precision("fp8", "cpu")


def test_bf16_reconstructions_stay_close_to_fp32(tiny_unet):
    from diffood.diffusion import make_scheduler, reconstruct

    x0 = torch.rand((4, 1, 28, 28), generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    a = reconstruct(tiny_unet, x0, 600, make_scheduler(), "strided", 5, noise=noise, precision="fp32")[1]
    b = reconstruct(tiny_unet, x0, 600, make_scheduler(), "strided", 5, noise=noise, precision="bf16")[1]
    assert a.dtype == b.dtype == torch.float32
    assert 0 < (a - b).abs().max() < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_path_scores_like_the_cpu(tiny_checkpoint):
    from diffood.diffusion import make_scheduler
    from diffood.scoring import score_images

    x0 = torch.rand((8, 1, 28, 28), generator=torch.Generator().manual_seed(0)) * 2 - 1
    cpu = load_checkpoint(tiny_checkpoint, "cpu", precision="fp32")
    gpu = load_checkpoint(tiny_checkpoint, "cuda", precision="auto")
    assert gpu.precision == "bf16"
    a = score_images(cpu.model, x0, [500], make_scheduler(), steps=5, draws=range(2))
    b = score_images(gpu.model, x0.cuda(), [500], make_scheduler(), steps=5, draws=range(2), precision=gpu.precision)
    assert (a["mse"] - b["mse"]).abs().max() < 0.02 * a["mse"].abs().max()


def test_atomic_writes_leave_the_old_file_when_writing_fails(tmp_path):
    from diffood.files import atomic_path, atomic_write_text

    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("disk full")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_non_object_json_is_a_checkpoint_error(tiny_checkpoint, tmp_path):
    c = _copy(tiny_checkpoint, tmp_path / "list")
    (c / META_NAME).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="JSON object"):
        load_checkpoint(c)


def test_compile_auto_only_where_it_was_measured_to_pay(monkeypatch):
    from diffood import model as m

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert m.resolve_compile("auto", m.COMPILE_PAYS_FROM_CALLS, "cpu") and not m.resolve_compile("auto", 1000, "cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not m.resolve_compile("auto", 10**9, "cpu")
    assert m.resolve_compile("on", 1, "cpu") and not m.resolve_compile("off", 10**9, "cpu")
    with pytest.raises(ValueError, match="unknown compile mode"):
        m.resolve_compile("maybe", 1, "cpu")


def test_a_padded_last_batch_changes_no_reconstruction(tiny_unet):
    import copy

    from diffood.diffusion import make_scheduler, reconstruct

    x0 = torch.rand((7, 1, 28, 28), generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    static = copy.deepcopy(tiny_unet)
    static.static_batch = True  # as compile_for_inference marks it: batches padded to batch_size
    calls = []
    static.register_forward_pre_hook(lambda mod, args: calls.append(len(args[0])))
    a = reconstruct(tiny_unet, x0, 600, make_scheduler(), "strided", 2, noise=noise, batch_size=4)[1]
    b = reconstruct(static, x0, 600, make_scheduler(), "strided", 2, noise=noise, batch_size=4)[1]
    assert set(calls) == {4} and b.shape == a.shape
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)  # a batch of 3 and one of 4 may take other kernels


@pytest.mark.slow
def test_compiled_scores_agree_with_eager_within_the_bf16_tolerance(tiny_checkpoint):
    from diffood.diffusion import make_scheduler
    from diffood.model import compile_for_inference
    from diffood.scoring import score_images

    x0 = torch.rand((10, 1, 28, 28), generator=torch.Generator().manual_seed(0)) * 2 - 1
    eager = load_checkpoint(tiny_checkpoint, precision="bf16")
    compiled = compile_for_inference(load_checkpoint(tiny_checkpoint, precision="bf16").model, "bf16")
    a = score_images(eager.model, x0, [500], make_scheduler(), steps=2, draws=range(2), precision="bf16", batch_size=8)
    b = score_images(compiled, x0, [500], make_scheduler(), steps=2, draws=range(2), precision="bf16", batch_size=8)
    fp32 = score_images(load_checkpoint(tiny_checkpoint, precision="fp32").model, x0, [500], make_scheduler(), steps=2,
                        draws=range(2), batch_size=8)
    assert (a["mse"] - b["mse"]).abs().max() < 0.02 * a["mse"].abs().max()  # the CUDA test's tolerance
    assert (fp32["mse"] - b["mse"]).abs().max() < 0.02 * fp32["mse"].abs().max()
