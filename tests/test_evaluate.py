import gzip
import multiprocessing
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from diffood import evaluate as ev
from diffood import store
from diffood.diffusion import make_scheduler, noise_for
from diffood.evaluate import (
    SCORE_COLUMNS,
    SUMMARY_COLUMNS,
    CacheWarning,
    EvalConfig,
    combined_ts,
    evaluate,
    pending_images,
    ready,
)
from diffood.images import to_model_input
from diffood.model import DEFAULT_CHECKPOINT, load_checkpoint
from diffood.perceptual import get_lpips
from diffood.scores import DEFAULT, MULTI_T, Reconstruction
from diffood.scores.base import zmean_frame
from diffood.scoring import METRICS, score_images
from diffood.sets import load_images
from diffood.summary import summarize
from diffood.verdict import Reference, judge
from tests.conftest import needs_data


def _cfg(ckpt, **kw):
    kw = {"ts": (50, 400), "score": Reconstruction((400,), 2), "batch_size": 8, "precision": "fp32", **kw}
    return EvalConfig(checkpoint=str(ckpt), n=12, n_val=10, steps=2, **kw)


def _sorted(df):
    return df.sort_values(["role", "dataset", "t", "draw", "index"]).reset_index(drop=True)


@needs_data
def test_sweep_tables_have_the_documented_columns(tiny_checkpoint):
    seen = []
    r = evaluate(_cfg(tiny_checkpoint), progress=lambda done, total, what: seen.append((done, total)))
    assert list(r.scores.columns) == SCORE_COLUMNS
    assert len(r.scores) == (10 + 12 + 12) * 3  # per image: t = 50, and t = 400 with two draws
    assert set(r.scores["role"]) == {"id_val", "id", "ood"}
    assert set(zip(r.scores["t"], r.scores["draw"])) == {(50, 0), (400, 0), (400, 1)}
    assert r.scores[list(METRICS)].notna().all().all()
    assert np.allclose(r.scores["mse+lpips"], r.scores["mse"] + r.scores["lpips"], rtol=1e-5)
    assert list(r.summary.columns) == SUMMARY_COLUMNS
    assert set(r.summary["metric"]) == {*METRICS, MULTI_T, DEFAULT}
    assert r.summary["auroc"].between(0, 1).all()
    s = r.summary  # every AUROC within its (symmetric, DeLong) interval; a named score's other rates have theirs
    assert (s["auroc_lo"] <= s["auroc"] + 1e-12).all() and (s["auroc"] <= s["auroc_hi"] + 1e-12).all()
    named = s[s["t"].isna()]
    for rate in ("fpr95", "aupr_in", "aupr_out"):  # percentile bootstrap: ordered, in [0, 1], not centred
        lo, hi = named[f"{rate}_lo"], named[f"{rate}_hi"]
        assert lo.notna().all() and (lo <= hi).all() and lo.between(0, 1).all() and hi.between(0, 1).all()
    assert r.summary.set_index("metric").loc[DEFAULT, "calls"] == 2 * 2  # one t, two draws, two calls each
    assert seen[-1][0] == seen[-1][1] == 102


@needs_data
def test_the_cache_returns_the_same_table_without_recomputing(tiny_checkpoint, monkeypatch):
    assert pending_images(_cfg(tiny_checkpoint), load_checkpoint(tiny_checkpoint)) == (10 + 12 + 12) * 3
    first = evaluate(_cfg(tiny_checkpoint))
    assert first.computed and first.cache_file.is_file()

    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(ev, "score_images", boom)
    again = evaluate(_cfg(tiny_checkpoint))
    assert again.computed == []
    pd.testing.assert_frame_equal(_sorted(first.scores), _sorted(again.scores), check_dtype=False, rtol=1e-5)
    pd.testing.assert_frame_equal(first.summary, again.summary, rtol=1e-4)


@needs_data
def test_recompute_reads_no_table(tiny_checkpoint, monkeypatch):
    evaluate(_cfg(tiny_checkpoint))
    monkeypatch.setattr(store, "_read_cached", lambda paths, columns: pytest.fail(f"read {paths}"))
    again = evaluate(_cfg(tiny_checkpoint, recompute=True))
    assert len(again.computed) == 3 * 2  # every (set, t)


@needs_data
def test_more_t_or_draws_compute_only_what_is_missing_and_match_a_fresh_run(tiny_checkpoint, tmp_path):
    evaluate(_cfg(tiny_checkpoint))
    more = evaluate(_cfg(tiny_checkpoint, ts=(50, 400, 700), score=Reconstruction((400,), 3)))
    assert {(p.dataset, p.t) for p in more.computed} == {(s, t) for s in ("fashionmnist", "mnist") for t in (400, 700)}
    assert pending_images(more.config, load_checkpoint(tiny_checkpoint)) == 0
    assert len(more.scores) == (10 + 12 + 12) * 5
    fresh = evaluate(_cfg(tiny_checkpoint, ts=(50, 400, 700), score=Reconstruction((400,), 3), cache_dir=str(tmp_path),
                          batch_size=5))
    pd.testing.assert_frame_equal(_sorted(more.scores), _sorted(fresh.scores), check_dtype=False, rtol=1e-4)


def test_noise_draws_are_fixed_by_seed_t_and_draw_alone():
    # draw 0 is the same noise, whatever the number of images
    old = torch.randn((8, 1, 28, 28), generator=torch.Generator().manual_seed(0 * 1_000_003 + 700))
    assert torch.equal(noise_for(8, 700, 0), old)
    assert torch.equal(noise_for(20, 700, 0, draw=2)[:8], noise_for(8, 700, 0, draw=2))
    draws = [noise_for(64, 700, 0, draw=d) for d in range(4)] + [noise_for(64, 600, 0), noise_for(64, 700, 1)]
    for i in range(len(draws)):
        for j in range(i):
            assert torch.corrcoef(torch.stack([draws[i].flatten(), draws[j].flatten()]))[0, 1].abs() < 0.02


def test_draws_batched_together_equal_draws_one_at_a_time_and_any_batch_size(tiny_unet):
    x0 = to_model_input(torch.randint(0, 256, (5, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8))
    sched = make_scheduler()
    together = score_images(tiny_unet, x0, [300], sched, steps=3, draws=range(3), batch_size=4)
    apart = pd.concat([score_images(tiny_unet, x0, [300], sched, steps=3, draws=[d], batch_size=64) for d in (2, 0, 1)])
    key = ["t", "draw", "index"]
    pd.testing.assert_frame_equal(together.sort_values(key).reset_index(drop=True),
                                  apart.sort_values(key).reset_index(drop=True), rtol=1e-5, atol=1e-7)
    assert together.groupby("index")["mse"].nunique().min() == 3  # each draw is a different noising


@needs_data
def test_without_lpips_only_mse_is_reported(tiny_checkpoint):
    r = evaluate(_cfg(tiny_checkpoint, lpips=False))
    assert r.scores["lpips"].isna().all()
    assert set(r.summary["metric"]) == {"mse", MULTI_T, DEFAULT}


def _toy_scores():
    rows = []
    rng = np.random.default_rng(0)
    for role, shift in (("id_val", 0.0), ("id", 0.0), ("ood", 3.0)):
        for t in (100, 200):
            for draw in (0, 1):
                for i in range(50):
                    m, lp = rng.normal(shift + 1, 1), rng.normal(shift + 5, 2)
                    rows.append(["d" if role != "ood" else "o", "test", role, i, t, draw, m, lp, m + lp])
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def test_a_reconstruction_score_z_scores_the_draw_averaged_errors_and_averages_over_t_and_metrics():
    scores = _toy_scores()
    val = scores[scores["role"] == "id_val"]
    det = Reconstruction((100, 200), draws=2, metrics=("mse", "lpips"))
    avg = lambda df: df.groupby(["index", "t"])[["mse", "lpips"]].mean().reset_index()  # noqa: E731
    ref = avg(val).groupby("t")
    one = avg(scores[(scores["role"] == "ood") & (scores["index"] == 7)])
    by_hand = np.mean([(r[m] - ref[m].mean()[r["t"]]) / ref[m].std()[r["t"]] for _, r in one.iterrows() for m in ("mse", "lpips")])
    table = lambda df: {"reconstruction": df}  # noqa: E731
    got = zmean_frame(det, table(scores[scores["role"] == "ood"]), table(val), [])
    assert got.loc[got["index"] == 7, "score"].item() == pytest.approx(by_hand)
    # one draw is Graham et al.'s multi-t: the first draw's errors only
    first = zmean_frame(Reconstruction((100, 200), 1, ("mse", "lpips")), table(scores[scores["role"] == "ood"]),
                        table(val), [])
    assert first.loc[first["index"] == 7, "score"].item() != pytest.approx(by_hand)
    with pytest.raises(ValueError, match="lacks"):
        zmean_frame(Reconstruction((100, 300), 1), table(scores), table(val), [])
    summary = summarize(table(scores), {DEFAULT: det})
    assert summary.loc[summary["metric"] == DEFAULT, "auroc"].item() > 0.95


@needs_data
def test_verdicts_place_images_against_id_validation(tiny_checkpoint):
    cfg = _cfg(tiny_checkpoint, ood=())
    r = evaluate(cfg)
    assert set(r.scores["role"]) == {"id_val"}  # a reference needs no ID test or OOD images
    ref = Reference.from_result(r)
    assert ref.ts == (400,) and len(ref.val_scores) == 10
    assert np.mean(ref.val_scores <= ref.threshold) >= 0.95
    x = to_model_input(load_images("fashionmnist", "val", 2, 0))
    verdicts = judge(x, load_checkpoint(tiny_checkpoint, precision="fp32"), ref, lpips=get_lpips())
    # the first validation images score exactly as in the table, so their percentile is known
    assert verdicts[0].score == pytest.approx(ref.val_scores[0], abs=1e-4)
    for v in verdicts:  # each verdict is the side of the threshold its score is on, its percentile its rank
        assert v.is_ood == (v.score > ref.threshold) and v.label == ("likely OOD" if v.is_ood else "looks in-distribution")
        assert v.percentile == pytest.approx(100 * np.mean(ref.val_scores < v.score), abs=1e-9)
    assert verdicts[0].percentile == pytest.approx(100 * np.mean(ref.val_scores < ref.val_scores[0]), abs=1e-9)
    assert f"{ref.threshold:+.3f}" in verdicts[0].describe()
    assert list(verdicts[0].per_t["t"]) == [400]


def test_multi_t_combines_the_chosen_t_that_were_scored():
    assert combined_ts((500, 900), [100, 500, 700]) == (500,)
    assert combined_ts((800,), [300, 100]) == (100, 300)  # none of the chosen scored: all
    assert combined_ts(None, [700, 100]) == (100, 700)


def test_the_cache_key_follows_steps_only_for_the_samplers_that_take_them():
    key = lambda **kw: EvalConfig(**kw).cache_key("sha", True)  # noqa: E731
    assert key(sampler="strided", steps=10) != key(sampler="strided", steps=20) != key(sampler="ddim", steps=20)
    assert key(sampler="chain", steps=10) == key(sampler="chain", steps=20)
    assert key(score="reconstruction(draws=1)") == key(score="reconstruction(draws=5)") == key(precision="bf16")
    # tables hold every draw; precision: docs/performance.md


@needs_data
@pytest.mark.parametrize("damage", ["truncated", "not gzip", "wrong columns"])
def test_a_damaged_cached_table_is_moved_aside_and_recomputed(tiny_checkpoint, damage):
    first = evaluate(_cfg(tiny_checkpoint))
    path = first.cache_file
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "not gzip":
        path.write_text("<html>proxy error</html>")
    else:
        with gzip.open(path, "wt") as f:
            f.write("a,b\n1,2\n")
    with pytest.warns(CacheWarning, match="unreadable score table"):
        again = evaluate(_cfg(tiny_checkpoint))
    assert path.with_name(path.name + ".corrupt").is_file()
    assert len(again.computed) == 3 * 2
    pd.testing.assert_frame_equal(_sorted(first.scores), _sorted(again.scores), check_dtype=False, rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(_cfg(tiny_checkpoint))  # the new table reads cleanly


def _evaluate_in_child(ckpt, cache_dir, data_dir, queue):
    import os

    os.environ["DIFFOOD_DATA_DIR"] = data_dir
    r = evaluate(EvalConfig(checkpoint=ckpt, ts=(50, 400), score=Reconstruction((400,), 2), n=40, n_val=40, steps=4,
                            batch_size=8, cache_dir=cache_dir))
    queue.put(len(r.computed))


@needs_data
def test_two_processes_asking_for_one_table_compute_it_once(tiny_checkpoint, tmp_path):
    import os

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_evaluate_in_child, args=(str(tiny_checkpoint), str(tmp_path), os.environ["DIFFOOD_DATA_DIR"], queue))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(queue.get(timeout=5) for _ in procs) == [0, 3 * 2]  # one computed every (set, t), one read it


@pytest.mark.slow
@needs_data
def test_one_draw_reproduces_the_shipped_table():
    """draws = 1 is the one-draw computation: the shipped strided-10 table's values come back (fp32)."""
    ckpt = load_checkpoint(DEFAULT_CHECKPOINT, precision="fp32")
    shipped = store._read_cached([DEFAULT_CHECKPOINT / "evals" / "0dc49a0fd9d3b2813201.csv.gz"], ev.SCORE_COLUMNS)[0]
    assert (shipped["draw"] == 0).all()
    x0 = to_model_input(load_images("mnist", "test", 1000, 0))
    ours = score_images(ckpt.model, x0[:16], [700], make_scheduler(), "strided", 10, 0, get_lpips(), draws=[0])
    theirs = shipped[(shipped["dataset"] == "mnist") & (shipped["t"] == 700)].sort_values("index").head(16)
    # noise for image i does not depend on how many images share the draw, so the first 16 match
    np.testing.assert_allclose(ours["mse"], theirs["mse"], rtol=2e-4)
    np.testing.assert_allclose(ours["lpips"], theirs["lpips"], rtol=2e-4, atol=1e-6)
    summary = summarize({"reconstruction": shipped}, {MULTI_T: Reconstruction((500, 600, 700, 800, 900), 1, ("mse", "lpips"))},
                        "strided", 10)
    multi = summary.set_index("metric").loc[MULTI_T]
    assert multi["auroc"] == pytest.approx(0.960, abs=5e-4)  # the shipped figure for multi-t


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("name,ood", [("fashionmnist", "mnist"), ("mnist", "fashionmnist")])
def test_the_shipped_default_figure_comes_back_from_nothing(tmp_path, name, ood):
    """Each shipped model's headline (default score vs the other data set, README and evals/summary.csv)
    recomputed with no cached table: the data layer, preprocessing and checkpoint record must leave it as it was."""
    from diffood.model import SHIPPED_MODELS

    shipped = pd.read_csv(SHIPPED_MODELS[name] / "evals" / "summary.csv")
    want = shipped[(shipped["ood"] == ood) & (shipped["metric"] == DEFAULT)].iloc[0]
    cfg = EvalConfig(checkpoint=name, ood=(ood,), lpips=False, recompute=True, cache_dir=str(tmp_path), device="cpu")
    result = evaluate(cfg, default_only=True)  # the default score alone: 1 call per image (FashionMNIST), 16 (MNIST)
    got = result.summary[(result.summary["ood"] == ood) & (result.summary["metric"] == DEFAULT)].iloc[0]
    assert got["calls"] == want["calls"] and got["n_id"] == want["n_id"] == 1000
    assert got["auroc"] == pytest.approx(want["auroc"], abs=5e-4)
    assert got["fpr95"] == pytest.approx(want["fpr95"], abs=2e-3)


@needs_data
def test_ready_is_what_the_store_holds_and_evaluating_it_computes_nothing(tiny_checkpoint, monkeypatch):
    """While the rest is computed a page draws `ready(cfg)`: nothing, then the default score (and whatever it
    shares with the curves), then the t that are complete."""
    ckpt = load_checkpoint(tiny_checkpoint)
    cfg = _cfg(tiny_checkpoint, ts=(50, 400, 600))
    assert ready(cfg, ckpt) is None
    evaluate(cfg, ckpt, default_only=True)  # the default: t = 400, two draws, which the curve's t = 400 reads
    assert ready(cfg, ckpt) == (_cfg(tiny_checkpoint, ts=(400,)), False)
    evaluate(_cfg(tiny_checkpoint, ts=(600,)), ckpt)
    part, default_only = ready(cfg, ckpt)
    assert part == _cfg(tiny_checkpoint, ts=(400, 600)) and not default_only
    monkeypatch.setattr(ev, "score_images", lambda *a, **k: pytest.fail("computed"))
    assert set(evaluate(part, ckpt).scores["t"]) == {400, 600}
