"""Shared fixtures: the real data in ../shared/data, tiny random UNets, isolated caches."""

from pathlib import Path

import pytest
import torch

from diffood.model import CheckpointMeta, ModelConfig, build_unet, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA_DIR = SHARED / "data"
TINY = ModelConfig(block_out_channels=(8, 16, 16), norm_num_groups=4, attention_head_dim=4)

needs_data = pytest.mark.skipif(not (DATA_DIR / "FashionMNIST" / "raw").is_dir(), reason="../shared/data not present")


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's caches, and none may download."""
    monkeypatch.setenv("DIFFOOD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("DIFFOOD_DATA_DIR", str(DATA_DIR))
    monkeypatch.delenv("DIFFOOD_DOWNLOAD", raising=False)
    monkeypatch.delenv("DIFFOOD_ALEXNET_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))  # data locations, inductor


@pytest.fixture(scope="session")
def tiny_unet():
    torch.manual_seed(0)
    return build_unet(TINY).eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_unet):
    return save_checkpoint(tiny_unet, tmp_path_factory.mktemp("ckpt") / "tiny", CheckpointMeta(training_data="random"))


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow (what CI runs)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
