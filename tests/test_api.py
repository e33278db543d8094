"""The Python API on the shipped models, offline: accuracy from PNG bytes, verdicts on clear cases, inputs
of every kind scoring alike, references tied to their settings, and each model's own default OOD set."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

import diffood
from diffood.errors import CheckpointError, DiffoodError
from diffood.evaluate import EvalConfig, evaluate
from diffood.metrics import auroc
from diffood.model import SHIPPED_MODELS, load_checkpoint
from diffood.sets import load_images
from tests.conftest import DATA_DIR, needs_data


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """No data folder: the shipped sample bundle is all there is."""
    return tmp_path_factory.mktemp("no-data")


@pytest.fixture
def scorer(offline, monkeypatch):
    monkeypatch.setenv("DIFFOOD_DATA_DIR", str(offline))
    return diffood.load(device="cpu")


def _png(image: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image[0].numpy()).save(buf, format="PNG")
    return buf.getvalue()


def test_the_default_score_separates_fashionmnist_from_mnist_from_png_bytes(scorer, offline):
    fashion = load_images("fashionmnist", "test", 256, 0, data_dir=offline)
    digits = load_images("mnist", "test", 256, 0, data_dir=offline)
    id_table = scorer.score([_png(x) for x in fashion])
    ood_table = scorer.score([_png(x) for x in digits])
    assert (id_table["error"] == "").all() and (ood_table["error"] == "").all()
    assert auroc(id_table["score"], ood_table["score"]) >= 0.99
    # the verdicts follow the threshold, which accepts 95 % of ID validation images
    assert (ood_table["verdict"] == "likely OOD").mean() >= 0.95
    assert (id_table["verdict"] == "looks in-distribution").mean() >= 0.9
    assert (id_table["verdict"] == "likely OOD").eq(id_table["score"] > scorer.threshold).all()
    assert (id_table["threshold"] == scorer.threshold).all() and (id_table["tpr"] == 0.95).all()


def test_clear_cases_get_the_right_verdict(scorer, offline):
    shirt = load_images("fashionmnist", "test", 1, 0, data_dir=offline)[0]
    digit = load_images("mnist", "test", 1, 0, data_dir=offline)[0]
    noise = np.random.default_rng(0).random((28, 28))
    table = scorer.score([_png(shirt), _png(digit), noise])
    assert list(table["verdict"]) == ["looks in-distribution", "likely OOD", "likely OOD"]
    assert table.loc[0, "percentile"] < 95 < table.loc[1, "percentile"]


def test_every_kind_of_input_scores_as_its_png_does(offline, monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFOOD_DATA_DIR", str(offline))
    scorer = diffood.load(device="cpu", precision="fp32")  # bf16 (AMX CPUs) moves a score by 0.01 with batch shape
    image = load_images("fashionmnist", "test", 2, 0, data_dir=offline)[1]  # uint8 (1, 28, 28)
    path = tmp_path / "x.png"
    path.write_bytes(_png(image))
    inputs = [str(path), path, _png(image), image, image.numpy(), image[0].numpy(), image.float() / 255,
              Image.fromarray(image[0].numpy()), Image.fromarray(image[0].numpy()).convert("RGB")]
    table = scorer.score(inputs)
    assert (table["error"] == "").all()
    alone = [scorer.score([item])["score"].item() for item in inputs]  # one at a time: the same batch shape each
    assert alone == [alone[0]] * len(inputs)  # every kind decodes to the same pixels
    # in one batch, fp32's batched arithmetic may differ in the last bits by row (AVX2 CPUs)
    np.testing.assert_allclose(table["score"], alone[0], atol=1e-4)
    assert list(table["file"][:2]) == [str(path)] * 2 and table.loc[2, "file"] == "#2"
    bad = scorer.score([np.zeros((2, 3, 4, 5)), b"not an image"])
    assert list(bad["verdict"]) == ["error", "error"] and "shape" in bad.loc[0, "error"]


@needs_data
def test_explain_names_the_nearest_training_images(scorer, monkeypatch):
    monkeypatch.setenv("DIFFOOD_DATA_DIR", str(DATA_DIR))  # the real data folder: the bank's images are there
    shirt = load_images("fashionmnist", "test", 1, 0)[0]
    why = scorer.explain(_png(shirt), n=3)
    assert len(why.neighbours) == 3 and why.neighbours["distance"].is_monotonic_increasing
    assert why.verdict.nearest_distance == pytest.approx(float(why.neighbours["distance"].iloc[0]), abs=2e-3)
    bank = scorer.reference.bank
    train = load_images("fashionmnist", "train", bank.source["n"], bank.source["seed"])
    assert why.images is not None and why.note == ""
    assert torch.equal(why.images, train[why.neighbours["bank_index"].tolist()])
    # the distances are those of the shirt's embedding to those bank rows
    from diffood.verdict import context

    term = scorer.reference.features
    e = term.embeddings(context(scorer.checkpoint, scorer.reference), diffood.api.load_user_image(
        _png(shirt), None, scorer.checkpoint.data))[0]
    rows = bank.embeddings[why.neighbours["bank_index"].tolist()].float()
    np.testing.assert_allclose(why.neighbours["distance"], (1 - rows @ e).numpy(), atol=1e-5)
    monkeypatch.setenv("DIFFOOD_DATA_DIR", str(DATA_DIR.parent / "no-such-folder"))
    offline = scorer.explain(_png(shirt), n=3)
    assert offline.images is None and offline.note  # without the training images: the distances, and why


@needs_data
def test_a_reference_scores_only_with_its_own_settings(scorer, offline, monkeypatch):
    monkeypatch.setenv("DIFFOOD_DATA_DIR", str(DATA_DIR))  # validation images at seed 7: beyond the bundle
    ref = scorer.reference
    assert (ref.sampler, ref.steps, ref.seed) == ("strided", 5, 0)
    ckpt = scorer.checkpoint
    cfg = EvalConfig(checkpoint=str(ckpt.path), ood=(), seed=7, steps=3, n_val=20, lpips=False, device="cpu")
    result = evaluate(cfg, ckpt)
    seeded = diffood.Scorer(ckpt, type(ref).from_result(result, "reconstruction"), lpips=None)
    assert (seeded.reference.seed, seeded.reference.steps) == (7, 3)
    image = load_images("fashionmnist", "test", 1, 0, data_dir=offline)[0]
    calls = []

    import diffood.scores.reconstruction as reconstruction

    real = reconstruction.score_images
    monkeypatch.setattr(reconstruction, "score_images", lambda *a, **k: calls.append((a[4], a[5], a[6])) or real(*a, **k))
    seeded.score([image])
    assert calls == [("strided", 3, 7)]  # the image is scored with the reference's sampler, steps and seed


def test_tpr_sets_the_threshold_as_the_validation_quantile(offline, monkeypatch):
    monkeypatch.setenv("DIFFOOD_DATA_DIR", str(offline))
    strict = diffood.load(tpr=0.99, device="cpu")
    assert strict.threshold == pytest.approx(np.quantile(strict.reference.val_scores, 0.99, method="higher"))
    assert np.mean(strict.reference.val_scores <= strict.threshold) >= 0.99
    with pytest.raises(DiffoodError, match="between 0 and 1"):
        diffood.load(tpr=95, device="cpu")


def test_shipped_models_by_name_and_their_own_default_ood(offline, monkeypatch):
    monkeypatch.setenv("DIFFOOD_DATA_DIR", str(offline))
    assert load_checkpoint("mnist").path == SHIPPED_MODELS["mnist"]
    mnist = diffood.load("mnist", device="cpu")
    summary = mnist.evaluate()  # defaults: the MNIST model's own OOD set, FashionMNIST, from its shipped tables
    assert set(summary["ood"]) == {"fashionmnist"}
    default = summary.set_index("metric").loc["default"]
    assert default["auroc"] > 0.99 and {"aupr_in", "aupr_out"} <= set(summary.columns)
    with pytest.raises(DiffoodError, match="ID set"):
        mnist.evaluate(ood=["mnist"])
    with pytest.raises(CheckpointError, match="shipped models by name"):
        load_checkpoint("no-such-model")


def test_the_cli_tpr_gives_the_validation_quantile_and_verdicts_follow_it(offline, monkeypatch, tmp_path, capsys):
    from diffood.cli import main

    monkeypatch.setenv("DIFFOOD_DATA_DIR", str(offline))
    images = load_images("mnist", "test", 8, 0, data_dir=offline)
    paths = []
    for i, x in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(_png(x))
    out = tmp_path / "s.csv"
    assert main(["score", "--device", "cpu", "--tpr", "0.99", *map(str, paths), "--out", str(out)]) == 0
    import pandas as pd

    table = pd.read_csv(out)
    val = diffood.load(device="cpu").reference.val_scores
    assert table["threshold"].iloc[0] == pytest.approx(np.quantile(val, 0.99, method="higher"))
    assert (table["tpr"] == 0.99).all()
    assert (table["verdict"] == np.where(table["score"] > table["threshold"], "likely OOD", "looks in-distribution")).all()
    assert f"threshold {table['threshold'].iloc[0]:+.3f} accepts 99.0% of 500 ID validation images" in capsys.readouterr().out


def test_summaries_come_default_first_then_everything_and_hardest_lists_the_wrong_side(scorer):
    """Offline, from the shipped tables: the quick summary holds the default score alone, the full one adds the
    curves and the other scores with the same default row; the hardest cases lie on the wrong side."""
    first, full = list(scorer.summaries(["fashionmnist-vflip"]))
    assert "default" in set(first["metric"]) and not {"multi-t", "mse"} & set(first["metric"])
    assert {"multi-t", "mse", "default"} <= set(full["metric"])
    row = lambda s: s[s["metric"] == "default"].iloc[0]  # noqa: E731
    assert row(first)["auroc"] == row(full)["auroc"]
    cases = scorer.hardest(["fashionmnist-vflip"], k=5)
    alarms, misses = cases[cases["case"] == "false alarm"], cases[cases["case"] == "miss"]
    threshold = row(first)["threshold"]
    assert len(alarms) == len(misses) == 5
    assert (alarms["score"] > threshold).all() and (misses["score"] <= threshold).all()
    assert alarms["score"].is_monotonic_decreasing and misses["score"].is_monotonic_increasing
