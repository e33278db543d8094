"""Sharded work under torchrun: two processes on this machine give what one process gives."""

import gzip
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from diffood import distributed
from diffood.features import BANK_NAME
from diffood.sets import load_images
from tests.conftest import DATA_DIR, ROOT, needs_data


def _run(args, env, nproc=1, rc=0):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 \
        else [sys.executable]
    out = subprocess.run([*launcher, "-m", "diffood", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == rc, out.stderr[-3000:]
    return out


@pytest.fixture
def setup(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("dist")
    folder = root / "images"
    folder.mkdir()
    for name, images in (("fashion", load_images("fashionmnist", "test", 7, 3)), ("digit", load_images("mnist", "test", 6, 3))):
        for i, img in enumerate(images):
            Image.fromarray(img[0].numpy()).save(folder / f"{name}{i}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    env = {**os.environ, "DIFFOOD_DATA_DIR": str(DATA_DIR)}
    return root, folder, env


@pytest.mark.slow
@needs_data
def test_bank_score_and_evaluate_under_torchrun_equal_one_process(setup, tiny_checkpoint, tmp_path):
    root, folder, env = setup
    common = ["--precision", "fp32", "--checkpoint"]
    results = {}
    for nproc in (1, 2):
        ckpt = tmp_path / f"ckpt{nproc}"
        ckpt.mkdir()
        for f in tiny_checkpoint.iterdir():
            (ckpt / f.name).write_bytes(f.read_bytes())
        run_env = {**env, "DIFFOOD_CACHE_DIR": str(tmp_path / f"cache{nproc}")}
        _run(["bank", *common, str(ckpt), "--images", "300", "--batch-size", "64"], run_env, nproc)
        out = _run(["score", *common, str(ckpt), "--steps", "2", str(folder), "--out", str(tmp_path / f"score{nproc}.csv")],
                   run_env, nproc, rc=1).stdout  # 1: broken.png could not be scored
        _run(["evaluate", *common, str(ckpt), "--steps", "2", "--images", "40", "--n-val", "30", "--timesteps", "300", "700",
              "--score", "reconstruction(ts=700, draws=3)", "--methods", "features(draws=2)", "--batch-size", "32", "--ood", "mnist", "uniform",
              "--out", str(tmp_path / f"eval{nproc}")], run_env, nproc)
        tables = {p.name.split(".")[0][-4:]: pd.read_csv(gzip.open(p)) for p in (tmp_path / f"cache{nproc}").glob("*.csv.gz")}
        results[nproc] = (load_file(ckpt / BANK_NAME)["embeddings"], pd.read_csv(tmp_path / f"score{nproc}.csv"), pd.read_csv(tmp_path / f"eval{nproc}_scores.csv"),
                          tables, out)
    (bank1, score1, eval1, tables1, _out1), (bank2, score2, eval2, tables2, out2) = results[1], results[2]
    torch.testing.assert_close(bank2, bank1, atol=0, rtol=0)
    assert score2["file"].tolist() == score1["file"].tolist() and score1["error"].notna().sum() == 1
    assert score2["verdict"].tolist() == score1["verdict"].tolist()
    np.testing.assert_allclose(score2[["score", "percentile", "nearest_id_distance"]].to_numpy(float),
                               score1[["score", "percentile", "nearest_id_distance"]].to_numpy(float), atol=1e-6)
    assert out2.count("likely OOD") + out2.count("looks in-distribution") == 13  # rank 0 alone printed
    assert eval2.columns.tolist() == eval1.columns.tolist() and len(eval2) == len(eval1) > 0
    np.testing.assert_allclose(eval2.select_dtypes("number").to_numpy(float), eval1.select_dtypes("number").to_numpy(float),
                               atol=1e-6)
    # score's reference: its feature term alone (no reconstruction sweep); evaluate: reconstruction and features
    assert sorted(tables2) == sorted(tables1) and len(tables1) == 3
    for key in tables1:
        pd.testing.assert_frame_equal(tables2[key], tables1[key], atol=1e-6)


def test_rows_are_whole_batches_in_rank_order(monkeypatch):
    monkeypatch.setattr(distributed, "world", lambda: 3)
    blocks = []
    for r in range(3):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        blocks.append(distributed.rows(1000, 64))
    assert [(b.start, b.stop) for b in blocks] == [(0, 384), (384, 768), (768, 1000)]
    monkeypatch.setattr(distributed, "rank", lambda: 2)
    assert distributed.rows(100, 64) == slice(100, 100)  # more ranks than batches: nothing to do
