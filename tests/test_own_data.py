"""Your own data, end to end: an RGB image folder written here, with no FashionMNIST anywhere on disk, through
train, export, bank, evaluate against another folder, score and every page of the app."""

import json

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from diffood.cli import main
from diffood.jobs import server_jobs
from diffood.model import load_checkpoint
from tests.conftest import ROOT
from tests.test_datasets import write_shapes, write_stripes


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """(data folder, checkpoint, OOD folder): a tiny model trained a few steps on 32 x 32 RGB shapes."""
    root = tmp_path_factory.mktemp("own")
    shapes, stripes = write_shapes(root / "shapes"), write_stripes(root / "stripes")
    run, ckpt = root / "run", root / "ckpt"
    assert main(["train", "--data", str(shapes), "--image-size", "32", "--channels", "3", "--run-dir", str(run),
                 "--max-steps", "3", "--batch-size", "8", "--block-channels", "8,16,16", "--save-every", "2"]) == 0
    assert main(["export", "--run-dir", str(run), "--out", str(ckpt)]) == 0
    return root, ckpt, stripes


@pytest.fixture(autouse=True)
def _no_fashionmnist(tmp_path, monkeypatch):
    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("DIFFOOD_DATA_DIR", str(empty))


def test_the_checkpoint_records_its_data_without_the_machines_paths(own):
    root, ckpt, _ = own
    meta = json.loads((ckpt / "diffood.json").read_text())
    assert meta["data"]["spec"] == {"source": "shapes", "image_size": 32, "channels": 3, "val_size": 2000,
                                    "split_seed": 20231118}
    assert meta["data"]["classes"] == ["discs", "squares"] and meta["data"]["train_images"] == 48
    assert meta["data"]["invert_uploads"] is False and len(meta["data"]["pixel_mean"]) == 3
    assert str(root) not in (ckpt / "diffood.json").read_text()
    loaded = load_checkpoint(ckpt)
    assert loaded.model.config.in_channels == 3 and loaded.data.label == "shapes"


def test_a_mismatched_checkpoint_is_refused_in_one_line(own, tmp_path):
    import shutil

    _, ckpt, _ = own
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    meta = json.loads((bad / "diffood.json").read_text())
    meta["data"]["spec"]["channels"] = 1
    (bad / "diffood.json").write_text(json.dumps(meta))
    from diffood.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"channels 3->3\) does not match"):
        load_checkpoint(bad)


def test_rgb_folder_through_bank_evaluate_and_score(own, tmp_path, capsys):
    root, ckpt, stripes = own
    common = ["--checkpoint", str(ckpt), "--data-dir", str(root)]
    assert main(["bank", *common, "--n", "0"]) == 0
    assert (ckpt / "feature_bank.safetensors").is_file()
    out = tmp_path / "ev"
    assert main(["evaluate", *common, "--ood", str(stripes), "vflip", "--n", "20", "--n-val", "6", "--timesteps",
                 "700", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    summary = pd.read_csv(f"{out}_summary.csv")
    default = summary[summary["metric"] == "default"].set_index("ood")
    assert set(default.index) == {str(stripes), "shapes-vflip"}
    assert default["auroc"].between(0, 1).all() and (default["n_ood"] == [20, 6]).all() | (default["n_ood"] == [6, 20]).all()
    files = sorted(stripes.glob("*.jpg"))[:2]
    table = tmp_path / "scores.csv"
    assert main(["score", *common, *map(str, files), "--out", str(table)]) == 0
    scored = pd.read_csv(table)
    assert len(scored) == 2 and scored["verdict"].isin(["likely OOD", "looks in-distribution"]).all()
    assert main(["reconstruct", *common, "--n", "2", "--out", str(tmp_path / "r.png")]) == 0
    assert "shapes images" in capsys.readouterr().out


def test_every_page_opens_with_the_rgb_model(own, monkeypatch):
    root, ckpt, _ = own
    monkeypatch.setenv("DIFFOOD_DATA_DIR", str(root))  # the app finds the ID folder by its recorded name
    if not (ckpt / "feature_bank.safetensors").is_file():
        assert main(["bank", "--checkpoint", str(ckpt), "--n", "0"]) == 0
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=240)
    at.session_state["checkpoint"] = str(ckpt)
    at.session_state["eval_n"] = 100
    at.session_state["eval_ts"] = [700]
    at.session_state["multi_ts"] = [700]
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["ood"] == "shapes-vflip"  # the checkpoint's default OOD set
    assert any("**shapes**" in m.value for m in at.markdown)
    for page in ["pages/reconstruct.py", "pages/histograms.py", "pages/roc.py", "pages/features.py", "pages/upload.py"]:
        at.switch_page(page).run()
        buttons = [b for b in at.button if b.label == "Compute now"]
        if buttons:
            buttons[0].click().run()
        assert not at.exception, (page, [e.value for e in at.exception])
        text = " ".join(str(getattr(e, "value", "")) for e in [*at.markdown, *at.caption, *at.title, *at.subheader])
        assert "FashionMNIST" not in text and "MNIST" not in text, page
    assert server_jobs().wait_all(600)  # the background work ends inside this test's settings
    at.radio(key="upload_source").set_value("Example: shapes image").run()
    buttons = [b for b in at.button if b.label == "Compute now"]  # the ID reference at the default image count
    if buttons:
        buttons[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "input, as the model sees it (32 × 32)" in [i.proto.imgs[0].caption for i in at.get("image")]
    assert at.get("plotly_chart"), "the upload page draws where the example lands"
