"""`diffood fit`: from a folder of images to a model the app opens with nothing to compute, and back again."""

import os

import pytest
import torch
from streamlit.testing.v1 import AppTest

from diffood.cli import main
from diffood.model import load_checkpoint
from tests.conftest import ROOT
from tests.test_datasets import write_shapes


@pytest.mark.slow
def test_fit_makes_a_ready_model_that_finds_its_data_and_resumes(tmp_path, monkeypatch, capsys):
    data = write_shapes(tmp_path / "photos", n_per_class=300, size=32)  # 600 RGB images
    out = tmp_path / "models" / "photos"
    args = ["fit", "--data", str(data), "--image-size", "32", "--channels", "3", "--out", str(out), "--max-steps", "30"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "is ready" in printed and "mean" in printed and "next: diffood score" in printed
    ckpt = load_checkpoint(out)
    pick = ckpt.meta.score
    assert pick["candidates"] > 100 and set(pick["proxies"]) >= {"photos-vflip", "gaussian-noise"}
    assert ckpt.meta.training["steps"] == 30 and (out / "feature_bank.safetensors").is_file()
    assert "/" not in ckpt.meta.data["spec"]["source"]  # the shareable record holds the folder's name only
    selected = (out / "select.csv").stat().st_mtime_ns

    # from another directory, with no data folder given: the checkpoint finds its images on this machine
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("DIFFOOD_DATA_DIR", str(tmp_path / "no-data"))
    image = sorted((data / "discs").glob("*.png"))[0]
    assert main(["score", "--checkpoint", str(out), str(image)]) == 0

    # the dashboard opens its default views from the tables fit wrote
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=240)
    at.session_state["checkpoint"] = str(out)
    at.run()
    for page in ["pages/histograms.py", "pages/roc.py", "pages/features.py", "pages/upload.py"]:
        at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])
        # the default views need nothing computed; a new model's method comparison is computed on request
        assert not [b.label for b in at.button if b.label.startswith("Compute") and b.label != "Compute every method"], page

    # an interrupted or repeated fit resumes: nothing is trained or chosen again
    monkeypatch.chdir(elsewhere)
    assert main(args) == 0
    assert (out / "select.csv").stat().st_mtime_ns == selected and load_checkpoint(out).meta.score == pick
    assert os.path.isdir(out / "run")


@pytest.mark.slow
def test_fit_from_python_returns_a_loadable_checkpoint_and_reports_each_stage(tmp_path):
    import diffood
    from diffood.scores import Pick

    data = write_shapes(tmp_path / "tiny", n_per_class=20, size=28)  # 40 images
    lines = []
    ckpt = diffood.fit(str(data), out=str(tmp_path / "m"), image_size=28, channels=3, max_steps=2,
                       progress=lines.append)
    assert [ln.split("]")[0] for ln in lines if ln.startswith("[")] == [f"[{i}/5" for i in range(1, 6)]
    assert ckpt.meta.training["steps"] == 2 and Pick.of(ckpt).own
    again = load_checkpoint(tmp_path / "m")
    assert again.sha256 == ckpt.sha256 and (tmp_path / "m" / "feature_bank.safetensors").is_file()
    scorer = diffood.load(tmp_path / "m", device="cpu")
    assert scorer(torch.rand(3, 3, 28, 28)).shape == (3,)
