import numpy as np
import pytest
import torch
from PIL import Image

from diffood.perceptual import SHIPPED_ALEXNET, LPIPSStatus, PerceptualDistance, load_lpips
from tests.conftest import SHARED

REF = SHARED / "weights" / "lpips_reference"


def _read(name):  # as lpips.im2tensor does: RGB scaled to [-1, 1]
    arr = np.asarray(Image.open(REF / name).convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr / 127.5 - 1).permute(2, 0, 1)[None]


@pytest.mark.skipif(not REF.is_dir(), reason="LPIPS reference images not present")
def test_lpips_reproduces_the_authors_known_answer():
    net = load_lpips()
    assert isinstance(net, PerceptualDistance), net
    assert "shipped" in net.status.source
    ref, p0, p1 = _read("ex_ref.png"), _read("ex_p0.png"), _read("ex_p1.png")
    assert round(float(net(ref, p0)), 3) == 0.722
    assert round(float(net(ref, p1)), 3) == 0.138


def test_weights_named_by_the_environment_are_used(monkeypatch):
    monkeypatch.setenv("DIFFOOD_ALEXNET_WEIGHTS", str(SHIPPED_ALEXNET))
    net = load_lpips(shipped=None)
    assert isinstance(net, PerceptualDistance) and "DIFFOOD_ALEXNET_WEIGHTS" in net.status.source


def test_without_weights_lpips_is_unavailable_and_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFOOD_ALEXNET_WEIGHTS", str(tmp_path / "missing.safetensors"))
    status = load_lpips(shipped=tmp_path / "also-missing.safetensors")
    assert isinstance(status, LPIPSStatus) and not status.available
    assert "missing.safetensors not found" in status.source and "also-missing" in status.source
    assert str(status).startswith("LPIPS unavailable")


def test_a_wrong_weights_file_is_reported_not_used(tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"features.0.weight": torch.zeros(2, 2)}, bad)
    status = load_lpips(shipped=bad, allow_torchvision=False)
    assert isinstance(status, LPIPSStatus) and "unusable" in status.source


def test_grayscale_28px_inputs_are_padded_and_scored():
    net = load_lpips()
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    assert PerceptualDistance.prepare(x).shape == (3, 3, 32, 32)
    d = net(x, x.flip(-1))
    assert d.shape == (3,) and (d > 0).all()
    assert torch.allclose(net(x, x), torch.zeros(3), atol=1e-6)
