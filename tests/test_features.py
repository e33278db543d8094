"""Feature scores: embeddings from the UNet's own blocks, the bank beside the checkpoint, kNN distances,
detectors that combine them with reconstruction errors, and the selection protocol's feature candidates."""

import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.neighbors import NearestNeighbors

from diffood import cli
from diffood.diffusion import noise_for
from diffood.evaluate import EvalConfig, evaluate
from diffood.features import (
    BANK_NAME,
    LAYERS,
    BankError,
    FeatureBank,
    FeatureSpec,
    build_bank,
    checkpoint_bank,
    embed,
    knn_distances,
    load_bank,
)
from diffood.images import to_model_input
from diffood.model import load_checkpoint
from diffood.scores import GaussianHead, COMBINED, DEFAULT, FEATURES, RECONSTRUCTION, Features, Pick, Reconstruction, ZMean
from diffood.scoring import feature_distances
from diffood.select import SelectConfig, choose, pick_record, score_candidates, spec_of
from diffood.sets import load_images, load_user_image
from diffood.verdict import Reference, judge, judge_entries
from tests.conftest import needs_data


@pytest.fixture
def ckpt_with_bank(tiny_checkpoint, tmp_path):
    folder = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    ckpt = load_checkpoint(folder, precision="fp32")
    g = torch.Generator().manual_seed(1)
    images = torch.rand(64, 1, 28, 28, generator=g) * 2 - 1
    e = embed(ckpt.model, images, 50, noise_for(64, 50, 0), ("mid_block",))["mid_block", "mean"]
    FeatureBank(FeatureSpec("mid_block", 50), e.half(), ckpt.sha256, {"dataset": "fashionmnist", "split": "train", "n": 64,
                                                                      "seed": 0}).save(folder / BANK_NAME)
    return load_checkpoint(folder, precision="fp32")


def test_an_embedding_stops_after_its_layer_and_equals_the_full_forward_pass(tiny_unet):
    x = torch.rand(6, 1, 28, 28) * 2 - 1
    noise = noise_for(6, 50, 0)
    alone = embed(tiny_unet, x, 50, noise, ("mid_block",), ("mean", "max"))
    every = embed(tiny_unet, x, 50, noise, LAYERS, ("mean", "max"))
    for pooling in ("mean", "max"):
        torch.testing.assert_close(alone["mid_block", pooling], every["mid_block", pooling])
    assert every["down_blocks.0", "mean"].shape == (6, 8) and every["mid_block", "mean"].shape == (6, 16)
    assert torch.allclose(every["up_blocks.1", "max"].norm(dim=1), torch.ones(6))
    assert not any(m._forward_hooks for m in tiny_unet.modules())  # hooks removed


def test_knn_distances_match_scikit_learn():
    g = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(300, 16, generator=g), dim=1)
    q = torch.nn.functional.normalize(torch.randn(50, 16, generator=g), dim=1)
    d = knn_distances(q, bank, (1, 5, 10), chunk=7)
    ref, _ = NearestNeighbors(n_neighbors=10, metric="cosine").fit(bank.numpy()).kneighbors(q.numpy())
    for k in (1, 5, 10):
        np.testing.assert_allclose(d[k].numpy(), ref[:, k - 1], atol=1e-5)


def test_a_bank_from_other_weights_or_settings_is_refused(ckpt_with_bank, tmp_path):
    path = ckpt_with_bank.path / BANK_NAME
    assert checkpoint_bank(ckpt_with_bank).n == 64
    with pytest.raises(BankError, match="other weights"):
        load_bank(path, "0" * 64)
    bank = checkpoint_bank(ckpt_with_bank)
    with pytest.raises(BankError, match="asks for a bank of 64 images with mean-pooled up_blocks.0"):
        bank.check(Features("up_blocks.0", 50, "mean", bank=64))
    with pytest.raises(BankError, match="asks for a bank of 1,000"):
        bank.check(Features("mid_block", 50, "mean", bank=1000))
    # a bank whose embeddings do not fit the layer it names (down_blocks.0 has 8 channels here, not 16)
    meta = load_file(path)
    other = FeatureBank(FeatureSpec("down_blocks.0", 50), meta["embeddings"], ckpt_with_bank.sha256, bank.source)
    other.save(path)
    with pytest.raises(BankError, match="64 x 8"):
        checkpoint_bank(ckpt_with_bank)


def test_a_damaged_bank_gives_one_line_and_no_traceback(ckpt_with_bank, capsys):
    path = ckpt_with_bank.path / BANK_NAME
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BankError, match="unreadable"):
        checkpoint_bank(ckpt_with_bank)
    rc = cli.main(["evaluate", "--checkpoint", str(ckpt_with_bank.path), "--n", "4", "--n-val", "4", "--ood", "uniform",
                   "--t", "400", "--score", "both", "--steps", "1", "--no-lpips", "--out", str(path.parent / "x")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "Traceback" not in err
    assert err.count("\n") == 0 and err.startswith("error: feature bank") and "rebuild it" in err
    save_file({"other": torch.zeros(3)}, path)  # readable, but not a bank
    with pytest.raises(BankError, match="unreadable"):
        checkpoint_bank(ckpt_with_bank)


RECON = Reconstruction((400,), 2)  # the tiny tests' reconstruction term
TERM = Features("mid_block", 50, "mean", bank=64)  # the tiny bank's feature term


def _reference(ckpt, score=None):
    cfg = EvalConfig(checkpoint=str(ckpt.path), ood=(), ts=(400,), steps=2, n_val=12, lpips=False, precision="fp32",
                     score=score or ZMean((RECON, TERM)))
    return Reference.from_result(evaluate(cfg, ckpt))


@needs_data
def test_the_feature_score_of_an_image_is_the_same_alone_in_a_batch_and_in_any_batch_size(ckpt_with_bank):
    reference = _reference(ckpt_with_bank, ZMean((RECON, Features("mid_block", 50, "mean", draws=2, bank=64))))
    assert reference.features == Features("mid_block", 50, "mean", 1, 2, 64)
    x = to_model_input(load_images("mnist", "test", 5, 0))
    alone = judge(x[2:3], ckpt_with_bank, reference, neighbours=5)[0]
    for batch_size in (2, 8):
        batch = judge(x, ckpt_with_bank, reference, batch_size=batch_size, neighbours=5)[2]
        assert batch.nearest_distance == pytest.approx(alone.nearest_distance, abs=1e-6)
        assert batch.score == pytest.approx(alone.score, rel=1e-4)  # a z-score: the distance over a small std
        assert batch.neighbours["bank_index"].tolist() == alone.neighbours["bank_index"].tolist()
    d = feature_distances(ckpt_with_bank.model, x, reference.bank, [0, 1], shared_noise=True, batch_size=3)
    assert d.loc[(d["index"] == 2) & (d["draw"] == 0), "knn1"].item() == pytest.approx(
        alone.neighbours["distance"][0], abs=1e-6)
    assert alone.neighbours["distance"].is_monotonic_increasing and len(alone.neighbours) == 5


@needs_data
def test_a_pick_with_a_gaussian_head_keeps_a_bank_of_its_embeddings_for_the_map_and_the_neighbours(ckpt_with_bank):
    """A default score whose feature evidence is a Gaussian head (no nearest-neighbour term): its bank holds the
    embeddings the head reads, of the images it is fitted on, and a verdict names the nearest of them."""
    from diffood.scores import Context
    from diffood.scores.base import fit_and_save

    head = GaussianHead("mid_block", 50, "mean", train=64)
    pick = Pick(ZMean((RECON, head)), RECON)
    assert pick.features is None and pick.embedding_term == head
    assert pick.bank_term == Features("mid_block", 50, "mean", k=1, draws=1, bank=64)
    fit_and_save(head, Context(ckpt_with_bank))
    reference = _reference(ckpt_with_bank, ZMean((RECON, head)))
    assert reference.features is None and reference.bank.spec == head.spec
    x = to_model_input(load_images("mnist", "test", 3, 0))
    verdicts = judge(x, ckpt_with_bank, reference, neighbours=4)
    d = feature_distances(ckpt_with_bank.model, x, reference.bank, [0], shared_noise=True)
    for i, v in enumerate(verdicts):
        assert v.neighbours["distance"][0] == pytest.approx(d.loc[d["index"] == i, "knn1"].item(), abs=1e-6)
        assert len(v.neighbours) == 4 and np.isnan(v.nearest_distance)  # no kNN term: no distance of its own
    assert _reference(ckpt_with_bank, RECON).bank is None  # a score that reads no embeddings shows none


@needs_data
def test_the_default_score_is_the_mean_of_the_z_scored_reconstruction_and_feature_terms(ckpt_with_bank):
    r = evaluate(EvalConfig(checkpoint=str(ckpt_with_bank.path), ood=("mnist",), ts=(400,), steps=2, n=10, n_val=12,
                            lpips=False, precision="fp32", score=ZMean((RECON, TERM))), ckpt_with_bank)
    assert list(r.named) == [DEFAULT, RECONSTRUCTION, FEATURES, "multi-t"]
    assert r.named[DEFAULT] == ZMean((RECON, TERM)) and COMBINED not in r.named
    assert (r.named[RECONSTRUCTION], r.named[FEATURES]) == (RECON, TERM)  # the given score's terms
    assert {(50, 0), (400, 0), (400, 1)} == set(zip(r.scores["t"], r.scores["draw"]))
    assert r.named[DEFAULT].calls("strided", 2) == 2 * 2 + 1
    parts = [r.score_frame(name, ["role"]).set_index(["role", "index"])["score"] for name in (RECONSTRUCTION, FEATURES)]
    both = r.score_frame(DEFAULT, ["role"]).set_index(["role", "index"])["score"]
    pd.testing.assert_series_equal(both, (parts[0] + parts[1]) / 2, check_names=False)
    knn = r.scores[(r.scores["t"] == 50)]
    val = knn[knn["role"] == "id_val"]["knn1"]
    ood = knn[knn["role"] == "ood"].set_index("index")["knn1"]
    z = (ood - val.mean()) / val.std()
    pd.testing.assert_series_equal(parts[1].loc["ood"], z, check_names=False, check_index_type=False, check_dtype=False,
                                   rtol=1e-5)
    # the feature table is cached apart: leaving features out does not touch the reconstruction table
    plain = evaluate(EvalConfig(checkpoint=str(ckpt_with_bank.path), ood=("mnist",), ts=(400,), steps=2, n=10,
                                n_val=12, lpips=False, precision="fp32", score=RECON), ckpt_with_bank)
    assert not plain.computed and set(plain.named) == {DEFAULT, "multi-t"} and "knn1" not in plain.scores


@needs_data
def test_the_default_score_is_the_feature_term_alone_and_its_verdict_needs_one_call(ckpt_with_bank):
    reference = _reference(ckpt_with_bank, score="features")
    assert reference.spec == TERM  # the bank's settings, the pick's k and draws
    assert reference.spec.calls("strided", 2) == 1
    calls = []
    hook = ckpt_with_bank.model.register_forward_pre_hook(lambda m, args: calls.append(len(args[0])))
    try:
        verdicts = judge(to_model_input(load_images("mnist", "test", 3, 0)), ckpt_with_bank, reference)
    finally:
        hook.remove()
    assert calls == [3] and all(v.per_t.empty and v.nearest_distance >= 0 for v in verdicts)


@needs_data
def test_without_a_bank_the_default_score_is_reconstruction_only_and_says_so(tiny_checkpoint):
    r = evaluate(EvalConfig(checkpoint=str(tiny_checkpoint), ood=("uniform",), ts=(400,), steps=1,
                            n=6, n_val=6, lpips=False, precision="fp32"))
    assert r.named[DEFAULT] == Pick.of(load_checkpoint(tiny_checkpoint)).reconstruction and r.bank is None
    assert "no feature bank" in r.notes[0] and "diffood bank --checkpoint" in r.notes[0]


@needs_data
def test_the_bank_command_embeds_training_images_only(tiny_checkpoint, tmp_path, capsys):
    folder = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    assert cli.main(["bank", "--checkpoint", str(folder), "--n", "40", "--layer", "up_blocks.0", "--feature-t", "25",
                     "--precision", "fp32"]) == 0
    assert "40 fashionmnist training images" in capsys.readouterr().out
    ckpt = load_checkpoint(folder, precision="fp32")
    bank = checkpoint_bank(ckpt)
    assert (bank.spec, bank.n, bank.source["split"]) == (FeatureSpec("up_blocks.0", 25, "max"), 40, "train")
    again = build_bank(ckpt, bank.spec, 40)
    torch.testing.assert_close(again.embeddings, bank.embeddings)
    train = set(map(bytes, load_images("fashionmnist", "train", None, 0).numpy()))
    assert not train & set(map(bytes, load_images("fashionmnist", "val", None, 0).numpy()))


@needs_data
def test_batch_scoring_writes_the_nearest_distance(ckpt_with_bank):
    from diffood.inputs import Entry

    reference = _reference(ckpt_with_bank)
    png = __import__("io").BytesIO()
    __import__("PIL.Image").Image.Image.save(__import__("PIL.Image").Image.new("L", (20, 20), 200), png, format="PNG")
    table = judge_entries([Entry("a.png", png.getvalue()), Entry("b.txt", b"nope")], ckpt_with_bank, reference)
    # the nearest distance is the image's own: its embedding to the nearest bank row, averaged over the draws
    x = load_user_image(png.getvalue(), id=ckpt_with_bank.data)
    d = feature_distances(ckpt_with_bank.model, x, reference.bank, range(reference.features.draws), shared_noise=True)
    assert table.loc[0, "nearest_id_distance"] == pytest.approx(d["knn1"].mean(), abs=1e-6)
    assert table.loc[0, "nearest_id_distance"] > 0 and np.isnan(table.loc[1, "nearest_id_distance"])


@needs_data
def test_the_protocol_scores_feature_and_combined_candidates_within_the_call_budget(ckpt_with_bank, tmp_path):
    cfg = SelectConfig(checkpoint=str(ckpt_with_bank.path), proxies=("fashionmnist-vflip", "uniform"), ts=(400,),
                       max_draws=1, steps=2, n_ref=8, n_id=8, n_proxy=8, feature_ts=(10, 50),
                       layers=("mid_block", "up_blocks.0"), poolings=("mean",), bank_sizes=(16, 32), max_feature_draws=2,
                       combine_features=3, combine_recon=2, max_calls=3, methods=(), precision="fp32",
                       cache_dir=str(tmp_path))
    table = score_candidates(cfg, ckpt_with_bank)
    assert set(table["kind"]) == {"reconstruction", "features", "gaussian", "combined"}
    assert table["calls"].max() <= 3
    feats = table[table["kind"] == "features"]
    assert len(feats) == 2 * 2 * 3 * 2 * 2  # t_f x layers x k x bank sizes x draws
    assert (table["kind"] == "gaussian").sum() == 2 * 2 * 2  # t_f x layers x covariances, one draw
    top = table.iloc[0]  # the best: its interval against itself is [0, 0]; every other's upper end is above its lower
    assert top["diff_lo"] == top["diff_hi"] == 0 and (table["diff_lo"] <= table["diff_hi"]).all()
    recon = table[table["kind"] == "reconstruction"]
    assert recon["recon_diff_hi"].notna().all() and table.loc[table["kind"] != "reconstruction", "recon_diff_hi"].isna().all()
    assert len(list((tmp_path / "embeddings").glob("*.safetensors"))) == 2 * (1 + 2 * 3)  # cached per set, t, draw
    best = choose(table)
    det = spec_of(best)
    assert det.calls("strided", 2) == best["calls"]
    combined = spec_of(table[table["kind"] == "combined"].iloc[0])
    assert isinstance(combined, ZMean) and type(combined.terms()[0]) is Reconstruction
    assert type(combined.terms()[1]) in (Features, GaussianHead)
    assert combined.terms()[0].ts == (400,)
    assert score_candidates(cfg, ckpt_with_bank).equals(table)  # the cached embeddings give the same table


def test_the_rule_takes_the_cheapest_candidate_the_data_cannot_tell_worse_than_the_best():
    table = pd.DataFrame({"mean": [0.950, 0.949, 0.949, 0.940, 0.948], "calls": [21, 21, 21, 1, 4],
                          "bank": [58000, 10000, 20000, 0, 0], "worst": [0.7, 0.6, 0.9, 0.9, 0.9],
                          "diff_hi": [0, 0.001, 0.002, -0.001, 0.0004]})
    assert choose(table).name == 4  # 4 calls: the one-call candidate is significantly below the best
    assert choose(table.drop(index=4)).name == 1  # equal calls: the smaller bank
    assert choose(table, tolerance=0.002).name == 4  # a record of the tolerance rule
    assert spec_of(pd.Series({"ts": "700", "draws": 4, "metrics": "mse", "layer": "mid_block", "feature_t": 50,
                              "pooling": "mean", "k": 5, "bank": 10000, "feature_draws": 1})) == ZMean(
        (Reconstruction((700,), 4, ("mse",)), Features("mid_block", 50, "mean", 5, 1, 10000)))


@needs_data
def test_the_feature_curve_adds_t_f_rows_and_meets_the_default_at_the_banks_t(ckpt_with_bank, tmp_path):
    cfg = EvalConfig(checkpoint=str(ckpt_with_bank.path), ood=("mnist",), ts=(400,), steps=1, n=24, n_val=12, lpips=False, precision="fp32", feature_ts=(10, 50, 200),
                     cache_dir=str(tmp_path))
    result = evaluate(cfg, ckpt_with_bank)
    curve = result.summary[result.summary["metric"] == "knn1"].set_index("t")
    assert sorted(curve.index) == [10, 50, 200] and (curve["calls"] == 1).all()
    default = result.summary.set_index("metric").loc["default"]
    assert curve.loc[50, "auroc"] == pytest.approx(default["auroc"]) and curve.loc[50, "fpr95"] == default["fpr95"]
    from diffood.evaluate import default_cache_dir

    assert len(list((default_cache_dir() / "banks").glob("*-t10-n64-s0.safetensors"))) == 1  # a bank per other t_f
    assert not (tmp_path / "banks").exists()  # kept in the cache, not beside the tables
    assert curve.loc[10, "auroc"] != curve.loc[200, "auroc"]
    again = evaluate(cfg, ckpt_with_bank)  # all read back: nothing computed
    assert again.computed == []  # the table keeps 6 significant digits
    pd.testing.assert_frame_equal(again.summary, result.summary, rtol=1e-4)
    threshold = default["threshold"]
    assert default["tpr"] == 0.95 and 0 < default["ood_accepted"] < 1 and default["id_accepted"] > 0.5
    assert np.isfinite(threshold)


@needs_data
def test_select_records_its_pick_in_the_checkpoint_and_the_defaults_follow_it(ckpt_with_bank, tmp_path, monkeypatch,
                                                                                capsys):
    from diffood import evaluate as ev
    from diffood import features as ft
    from diffood.cli import main

    allowed = {"fashionmnist", "fashionmnist-vflip", "uniform"}  # the ID set and the proxies: nothing else loads
    for module in (ev, ft):
        real = module.load_images
        monkeypatch.setattr(module, "load_images", lambda name, *a, _real=real, **k: (
            _real(name, *a, **k) if name in allowed else pytest.fail(f"the protocol loaded {name}")))
    folder = ckpt_with_bank.path
    before = load_checkpoint(folder)
    assert main(["select", "--checkpoint", str(folder), "--proxies", "vflip", "uniform", "--t", "400", "--max-draws", "2",
                 "--steps", "2", "--n-ref", "8", "--n-id", "8", "--n-proxy", "8", "--feature-t", "10", "50", "--layers",
                 "mid_block", "--poolings", "mean", "--bank-sizes", "16", "--max-feature-draws", "1", "--max-calls", "4",
                 "--methods", "--precision", "fp32", "--cache-dir", str(tmp_path), "--out", str(tmp_path / "sel.csv")]) == 0
    assert "recorded the pick" in capsys.readouterr().out
    after = load_checkpoint(folder)
    assert after.sha256 == before.sha256  # the weights, and so every table, unchanged
    pick = Pick.of(after)
    table = pd.read_csv(tmp_path / "sel.csv")
    assert pick.candidates == len(table) and set(pick.proxies) == {"fashionmnist-vflip", "uniform"}
    ties = table[table["diff_hi"] >= 0]  # the candidates the data cannot tell worse than the best
    assert pick.mean in ties["mean"].round(4).tolist() and pick.calls == ties["calls"].min()
    assert "fewest network calls" in pick.rule and "paired 95 % interval" in pick.rule
    assert pick.reconstruction.ts == (400,) and pick.reconstruction.draws in (1, 2)
    assert pick.default == spec_of(choose(table)) and pick.level == 0.95 and pick.images["proxy_split"] == "val"
    cfg, named, _, bank, notes = ev.plan(EvalConfig(checkpoint=str(folder)), after)  # unset, the score is the pick's
    assert cfg.score == named[DEFAULT] == ev._on_bank(pick.default, replace(pick.bank_term, bank=bank.n))
    if pick.features:  # the pick's bank holds 16 images, the one beside the weights 64: a note says to rebuild it
        assert pick.features.bank == 16 and any("rebuild it" in n for n in notes)
    given = Reconstruction((400,), 3)
    assert ev.plan(EvalConfig(checkpoint=str(folder), score=given), after)[0].score == given  # what is set stays
    notes = {}
    for name, ckpt in (("before", before), ("after", after)):
        notes[name] = ev.evaluate(EvalConfig(checkpoint=str(folder), ood=(), ts=(400,), n_val=8, steps=1, lpips=False,
                                             precision="fp32", cache_dir=str(tmp_path)), ckpt).notes
    assert any("records no score of its own" in n for n in notes["before"])  # the pages say so
    assert not any("records no score of its own" in n for n in notes["after"])


@pytest.mark.parametrize("name", ["fashionmnist", "mnist"])
def test_each_shipped_model_records_the_pick_its_own_proxies_chose(name):
    """The pick in diffood.json is the rule applied to the protocol's shipped tables, which score proxies of
    the model's own ID set alone; the shipped bank and tables are the ones the pick needs."""
    from pathlib import Path

    from diffood.evaluate import pending_images

    ckpt = load_checkpoint(name, precision="fp32", device="cpu")
    pick = Pick.of(ckpt)
    assert pick.own
    own = {f"{ckpt.data.name}-{p}" for p in ("vflip", "hflip", "invert", "shuffle")} | {"gaussian-noise", "uniform"}
    assert set(pick.proxies) == own and ckpt.data.default_ood not in pick.proxies
    repo = Path(__file__).resolve().parents[1]
    table = pd.concat([pd.read_csv(repo / s.split(" (")[0]) for s in pick.stages.split(", ")], ignore_index=True)
    assert set(table.columns) >= own and not set(table.columns) & {"mnist", "fashionmnist"}
    assert len(table) == pick.candidates and pick.level == 0.95  # the rule as recorded: the paired interval's
    cfg = SelectConfig(proxies=tuple(pick.proxies), level=pick.level, n_ref=pick.images["reference"],
                       n_id=pick.images["id"], n_proxy=pick.images["proxy"])
    again = Pick.from_record(pick_record(table, cfg))
    assert (again.default, again.reconstruction, again.proxies) == (pick.default, pick.reconstruction, pick.proxies)
    best = choose(table)
    assert (round(float(best["mean"]), 4), round(float(best["worst"]), 4)) == (pick.mean, pick.worst)
    bank, want = checkpoint_bank(ckpt), pick.bank_term  # the bank holds the embeddings the pick reads
    assert (bank.spec.layer, bank.spec.t, bank.spec.pooling, bank.n) == (want.layer, want.t, want.pooling, want.bank)
    assert pending_images(EvalConfig(checkpoint=name), ckpt) == 0  # the default evaluation ships: nothing to compute

