
import os
import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image

from diffood.cli import main
from tests.conftest import ROOT, needs_data


@pytest.mark.parametrize("command", ["evaluate", "select", "reconstruct", "score", "sample", "train", "export", "app",
                                     "fit-score", "explain"])
def test_help_works_offline(command):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "no_proxy": "*", "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    out = subprocess.run([sys.executable, "-m", "diffood", command, "--help"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"usage: diffood {command}" in out.stdout


@needs_data
def test_evaluate_prints_the_summary_and_writes_csvs(tiny_checkpoint, tmp_path, capsys):
    prefix = tmp_path / "ev"
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--t", "100", "600", "--n", "8", "--n-val", "8",
                 "--steps", "2", "--ood", "mnist", "uniform", "--out", str(prefix)]) == 0
    out = capsys.readouterr().out
    assert "auroc" in out and "multi-t" in out and "uniform" in out
    summary = pd.read_csv(f"{prefix}_summary.csv")
    assert set(summary["ood"]) == {"mnist", "uniform"}
    assert "default" in out
    assert len(pd.read_csv(f"{prefix}_scores.csv")) == (8 + 8 + 8 + 8) * (2 + 4)  # t = 100, 600; 4 draws at t = 700
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--t", "100", "600", "--n", "8", "--n-val", "8",
                 "--steps", "2", "--ood", "mnist", "uniform", "--compare", "default", "multi-t", "--out", str(prefix)]) == 0
    out = capsys.readouterr().out
    compared = pd.read_csv(f"{prefix}_compare.csv").set_index("ood")
    assert set(compared.index) == {"mnist", "uniform"}
    row = compared.loc["mnist"]
    assert row["difference"] == pytest.approx(row["auroc_a"] - row["auroc_b"]) and row["lo"] <= row["difference"] <= row["hi"]
    assert f"mnist: default vs multi-t: {row['difference']:+.4f}" in out


@needs_data
def test_explain_writes_the_hardest_cases_as_a_sheet_and_a_csv(tiny_checkpoint, tmp_path, capsys):
    from diffood.evaluate import EvalConfig, evaluate
    from diffood.metrics import threshold_at_tpr
    from diffood.model import load_checkpoint

    prefix = tmp_path / "hard"
    args = ["--checkpoint", str(tiny_checkpoint), "--n", "16", "--n-val", "16", "--steps", "2", "--ood", "uniform"]
    assert main(["explain", *args, "--hardest", "3", "--out", str(prefix)]) == 0
    cases = pd.read_csv(f"{prefix}.csv")
    result = evaluate(EvalConfig(checkpoint=str(tiny_checkpoint), ood=("uniform",), n=16, n_val=16, steps=2),
                      load_checkpoint(tiny_checkpoint, device="cpu"), default_only=True)
    frame = result.score_frame("default")
    val = frame.loc[frame["role"] == "id_val", "score"]
    thr = threshold_at_tpr(val.to_numpy(), 0.95)
    alarms = frame[(frame["role"] == "id") & (frame["score"] > thr)].sort_values("score", ascending=False)
    misses = frame[(frame["role"] == "ood") & (frame["score"] <= thr)].sort_values("score")
    assert list(cases.loc[cases["case"] == "false alarm", "index"]) == list(alarms["index"][:3])
    assert list(cases.loc[cases["case"] == "miss", "index"]) == list(misses["index"][:3])
    assert len(cases) and cases["image_at_hand"].all()
    with Image.open(f"{prefix}.png") as sheet:  # one tile per case, 28 px and 2 px of padding
        assert sheet.size == (2 + 30 * min(len(cases), 10), 2 + 30 * -(-len(cases) // 10))
    assert "False alarms: ID test images called OOD" in capsys.readouterr().out
    assert main(["explain", *args, "--hardest", "0"]) == 2


@needs_data
def test_reconstruct_writes_a_grid(tiny_checkpoint, tmp_path):
    out = tmp_path / "grid.png"
    assert main(["reconstruct", "--checkpoint", str(tiny_checkpoint), "--n", "3", "--t", "100", "700",
                 "--steps", "2", "--dataset", "mnist", "--out", str(out)]) == 0
    w, h = Image.open(out).size
    assert (w, h) == (7 * 30 + 2, 3 * 30 + 2)  # 7 columns (original + 3 per t), 3 rows, 2 px padding


@needs_data
def test_score_prints_a_verdict_per_file_and_an_error_for_bad_ones(tiny_checkpoint, tmp_path, capsys):
    good, bad = tmp_path / "shirt.png", tmp_path / "notes.txt"
    img = Image.new("L", (40, 40), 255)
    img.paste(0, (10, 5, 30, 35))
    img.save(good)
    bad.write_text("not an image")
    code = main(["score", "--checkpoint", str(tiny_checkpoint), "--steps", "2", str(good), str(bad)])
    out = capsys.readouterr().out
    assert code == 1
    line = next(ln for ln in out.splitlines() if ln.startswith(f"{good}: "))
    score = float(line.split("score ")[1].split(" ")[0])
    threshold = float(out.split("threshold ")[1].split(" ")[0])
    assert line.startswith(f"{good}: {'likely OOD' if score > threshold else 'looks in-distribution'}: score ")
    import diffood

    # the printed score is the API's on the same file, with the same reference
    api = diffood.load(tiny_checkpoint, device="cpu", steps=2).score([str(good)])
    assert api.loc[0, "score"] == pytest.approx(score, abs=0.006) and api.loc[0, "threshold"] == pytest.approx(threshold, abs=6e-4)
    assert "notes.txt: error: not a readable image" in out



def test_sample_writes_a_square_grid(tiny_checkpoint, tmp_path):
    out = tmp_path / "samples.png"
    assert main(["sample", "--checkpoint", str(tiny_checkpoint), "--n", "4", "--steps", "2", "--out", str(out)]) == 0
    assert Image.open(out).size == (2 * 30 + 2, 2 * 30 + 2)


def test_a_missing_checkpoint_is_one_clear_line(tmp_path, capsys):
    assert main(["reconstruct", "--checkpoint", str(tmp_path / "nope")]) == 2
    assert "error: checkpoint folder not found" in capsys.readouterr().err


@pytest.mark.parametrize("command,config,skip", [
    ("evaluate", "diffood.evaluate:EvalConfig", ()), ("select", "diffood.select:SelectConfig", ()),
    ("fit", "diffood.fit:FitConfig", ()), ("train", "diffood.train:TrainConfig", ("data", "model"))])
def test_every_config_field_is_an_option_with_its_doc(command, config, skip, capsys):
    """The options are made from the config dataclasses: each field once, with its help, so a new field appears."""
    import importlib
    from dataclasses import fields

    module, name = config.split(":")
    cls = getattr(importlib.import_module(module), name)
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in fields(cls):
        if f.name in skip:
            continue
        flag = f"--{'no-' if f.default is True else ''}{f.name.replace('_', '-')}"
        assert flag in text, (command, flag)
        assert " ".join(f.metadata.get("help", "").split()[:4]) in text, (command, f.name)


@needs_data
def test_fit_score_fits_what_evaluate_then_reads(tiny_checkpoint, tmp_path, capsys):
    """Without its fit a method's evaluation stops in one line that names `diffood fit-score`; after it, the
    method's row is in the summary with its calls."""
    import shutil

    folder = tmp_path / "tiny"
    shutil.copytree(tiny_checkpoint, folder)
    method = "msma(ts=1 10 100, train=40)"
    args = ["evaluate", "--checkpoint", str(folder), "--t", "100", "--n", "8", "--n-val", "8", "--steps", "2",
            "--ood", "uniform", "--methods", method, "--out", str(tmp_path / "ev")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "has no fitted msma" in err and "diffood fit-score" in err
    assert len(err.strip().splitlines()) == 1  # and nothing was computed before it
    assert main(["fit-score", "--checkpoint", str(folder), "--score", method]) == 0
    assert "wrote" in capsys.readouterr().out and len(list((folder / "fits").glob("msma-*.safetensors"))) == 1
    assert main(args) == 0
    row = pd.read_csv(tmp_path / "ev_summary.csv").set_index("metric").loc["msma"]
    assert row["calls"] == 3 and 0 <= row["auroc"] <= 1


@needs_data
def test_evaluate_over_seeds_reports_mean_and_spread(tiny_checkpoint, tmp_path, capsys):
    prefix = tmp_path / "ev"
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--quick", "--n", "16", "--n-val", "16",
                 "--score", "reconstruction(ts=600, draws=1)", "--steps", "2", "--ood", "uniform", "mnist",
                 "--seeds", "3", "4", "5", "--out", str(prefix)]) == 0
    out = capsys.readouterr().out
    table = pd.read_csv(f"{prefix}_seeds.csv").set_index(["ood", "metric"])
    row = table.loc[("mnist", "default")]
    each = [row[f"auroc_seed{s}"] for s in (3, 4, 5)]
    assert row["seeds"] == 3 and len(set(each)) > 1  # other images and noise per seed
    assert row["auroc_mean"] == pytest.approx(sum(each) / 3)
    assert row["auroc_sd"] == pytest.approx(pd.Series(each).std())
    assert f"mnist: default: AUROC {row['auroc_mean']:.4f} ± {row['auroc_sd']:.4f}" in out
    summary = pd.read_csv(f"{prefix}_summary.csv").set_index(["ood", "metric"])
    assert summary.loc[("mnist", "default"), "auroc"] == pytest.approx(row["auroc_seed3"], abs=1e-6)
