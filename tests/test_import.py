"""A DDPM saved by diffusers' DDPMPipeline, imported and scored end to end, for each supported schedule."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler

from diffood.cli import main
from diffood.model import ModelConfig, build_unet, load_checkpoint
from tests.conftest import TINY, needs_data
from tests.test_datasets import write_shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes(tmp_path_factory.mktemp("data") / "shapes", n_per_class=30)


def _pipeline(folder, beta_schedule="linear", prediction_type="epsilon"):
    torch.manual_seed(0)
    unet = build_unet(ModelConfig(image_size=32, channels=3, block_out_channels=TINY.block_out_channels,
                                  norm_num_groups=TINY.norm_num_groups, attention_head_dim=TINY.attention_head_dim))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule, prediction_type=prediction_type)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder, unet


@pytest.mark.parametrize("beta_schedule,prediction_type", [("linear", "epsilon"), ("scaled_linear", "v_prediction")])
def test_a_saved_pipeline_imports_and_scores_end_to_end(shapes, tmp_path, capsys, beta_schedule, prediction_type):
    pipe, unet = _pipeline(tmp_path / "pipe", beta_schedule, prediction_type)
    out = tmp_path / "imported"
    assert main(["import", str(pipe), "--data", str(shapes), "--out", str(out)]) == 0
    ckpt = load_checkpoint(out)
    assert (ckpt.meta.beta_schedule, ckpt.meta.prediction_type) == (beta_schedule, prediction_type)
    assert ckpt.scheduler.config.beta_schedule == beta_schedule and ckpt.data.size == 32 and ckpt.data.channels == 3
    assert torch.equal(ckpt.model.conv_in.weight, unet.conv_in.weight)
    assert json.loads((out / "diffood.json").read_text())["data"]["spec"]["source"] == "shapes"  # no machine path
    image = sorted((shapes / "discs").glob("*.png"))[0]
    table = tmp_path / "s.csv"
    assert main(["score", "--checkpoint", str(out), "--data-dir", str(shapes.parent), "--steps", "2", str(image),
                 "--out", str(table)]) == 0
    scored = pd.read_csv(table)
    assert scored["error"].isna().all()
    # the score is the imported model's, on its own schedule: the API on the same file agrees, and the verdict
    # follows the threshold
    import diffood

    api = diffood.load(out, device="cpu", steps=2, data_dir=str(shapes.parent)).score([str(image)])
    assert scored.loc[0, "score"] == pytest.approx(api.loc[0, "score"], abs=1e-5)
    assert scored.loc[0, "verdict"] == ("likely OOD" if scored.loc[0, "score"] > scored.loc[0, "threshold"]
                                        else "looks in-distribution")
    assert np.isfinite(scored.loc[0, "score"]) and 0 <= scored.loc[0, "percentile"] <= 100


def test_an_unsupported_prediction_type_or_layout_is_one_error_line(shapes, tmp_path, capsys):
    pipe, _ = _pipeline(tmp_path / "pipe", "linear", "sample")
    assert main(["import", str(pipe), "--data", str(shapes), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error:") and "prediction type 'sample' is not supported" in err
    assert not (tmp_path / "x").exists()
    (pipe / "scheduler" / "scheduler_config.json").unlink()
    assert main(["import", str(pipe), "--data", str(shapes), "--out", str(tmp_path / "x")]) == 2
    assert "model_index.json, unet/, scheduler/" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["import", str(tmp_path / "empty"), "--data", str(shapes), "--out", str(tmp_path / "x")]) == 2


def test_a_checkpoint_with_an_unknown_schedule_is_refused_when_loaded(tiny_checkpoint, tmp_path):
    import shutil

    from diffood.errors import CheckpointError

    folder = shutil.copytree(tiny_checkpoint, tmp_path / "c")
    meta = json.loads((folder / "diffood.json").read_text())
    (folder / "diffood.json").write_text(json.dumps({**meta, "beta_schedule": "sigmoid"}))
    with pytest.raises(CheckpointError, match="noise schedule 'sigmoid' is not supported"):
        load_checkpoint(folder)


@needs_data
def test_the_same_weights_on_another_schedule_share_no_cached_table_or_bank(tiny_checkpoint, tmp_path):
    import shutil

    from diffood.evaluate import EvalConfig, evaluate
    from diffood.features import BANK_NAME, BankError, FeatureSpec, build_bank, checkpoint_bank

    cosine = shutil.copytree(tiny_checkpoint, tmp_path / "cosine")
    linear = shutil.copytree(tiny_checkpoint, tmp_path / "linear")
    meta = json.loads((linear / "diffood.json").read_text())
    (linear / "diffood.json").write_text(json.dumps({**meta, "beta_schedule": "linear"}))
    a, b = load_checkpoint(cosine, precision="fp32"), load_checkpoint(linear, precision="fp32")
    assert a.sha256 == b.sha256 and a.key == a.sha256 and b.key != a.key  # the default schedule keeps its old key
    cfg = dict(ood=(), ts=(400,), score="reconstruction(ts=400, draws=1)", steps=1, n_val=8, lpips=False, precision="fp32",
               cache_dir=str(tmp_path / "cache"))
    first = evaluate(EvalConfig(checkpoint=str(cosine), **cfg), a)
    second = evaluate(EvalConfig(checkpoint=str(linear), **cfg), b)
    assert second.computed  # nothing read from the cosine schedule's table
    assert not np.allclose(first.reference["mse"], second.reference["mse"])
    assert evaluate(EvalConfig(checkpoint=str(cosine), **cfg), a).computed == []  # each reads back its own
    build_bank(a, FeatureSpec("mid_block", 50), n=16).save(linear / BANK_NAME)
    with pytest.raises(BankError, match="another noise schedule"):
        checkpoint_bank(b)
