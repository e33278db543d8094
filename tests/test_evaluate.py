import numpy as np
import pandas as pd
import pytest

from diffood import evaluate as ev
from diffood.data import load_images, to_model_input
from diffood.evaluate import SCORE_COLUMNS, SUMMARY_COLUMNS, EvalConfig, evaluate, pending_images, summarize
from diffood.model import load_checkpoint
from diffood.perceptual import get_lpips
from diffood.scoring import METRICS, MULTI_T, combined_ts, id_statistics, multi_t_scores
from diffood.verdict import Reference, judge
from tests.conftest import needs_data


def _cfg(ckpt, **kw):
    return EvalConfig(checkpoint=str(ckpt), ts=(50, 400), n=12, n_val=10, steps=2, batch_size=8, **kw)


@needs_data
def test_sweep_tables_have_the_documented_columns(tiny_checkpoint):
    seen = []
    r = evaluate(_cfg(tiny_checkpoint), progress=lambda done, total, what: seen.append((done, total)))
    assert list(r.scores.columns) == SCORE_COLUMNS
    assert len(r.scores) == (10 + 12 + 12) * 2  # one row per image x t
    assert set(r.scores["role"]) == {"id_val", "id", "ood"}
    assert r.scores[list(METRICS)].notna().all().all()
    assert np.allclose(r.scores["mse+lpips"], r.scores["mse"] + r.scores["lpips"], rtol=1e-5)
    assert list(r.summary.columns) == SUMMARY_COLUMNS
    assert set(r.summary["metric"]) == {*METRICS, MULTI_T}
    assert r.summary["auroc"].between(0, 1).all()
    assert seen[-1][0] == seen[-1][1] == 68


@needs_data
def test_the_cache_returns_the_same_table_without_recomputing(tiny_checkpoint, monkeypatch):
    assert pending_images(_cfg(tiny_checkpoint), load_checkpoint(tiny_checkpoint)) == (10 + 12 + 12) * 2
    first = evaluate(_cfg(tiny_checkpoint))
    assert first.computed and first.cache_file.is_file()

    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(ev, "score_images", boom)
    again = evaluate(_cfg(tiny_checkpoint))
    assert again.computed == []
    pd.testing.assert_frame_equal(first.scores, again.scores, check_dtype=False, rtol=1e-5)
    pd.testing.assert_frame_equal(first.summary, again.summary, rtol=1e-4)


@needs_data
def test_another_t_computes_only_what_is_missing_and_matches_a_fresh_run(tiny_checkpoint, tmp_path):
    evaluate(_cfg(tiny_checkpoint))
    more = evaluate(EvalConfig(**{**_cfg(tiny_checkpoint).__dict__, "ts": (50, 400, 700)}))
    assert {t for *_, t in more.computed} == {700}
    assert pending_images(more.config, load_checkpoint(tiny_checkpoint)) == 0
    fresh = evaluate(EvalConfig(**{**_cfg(tiny_checkpoint).__dict__, "ts": (50, 400, 700), "cache_dir": str(tmp_path)}))
    key = ["role", "dataset", "t", "index"]
    a, b = more.scores.sort_values(key).reset_index(drop=True), fresh.scores.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_dtype=False, rtol=1e-4)


@needs_data
def test_without_lpips_only_mse_is_reported(tiny_checkpoint):
    r = evaluate(_cfg(tiny_checkpoint, lpips=False))
    assert r.scores["lpips"].isna().all()
    assert set(r.summary["metric"]) == {"mse", MULTI_T}


def test_multi_t_is_the_mean_of_z_scored_mse_and_lpips():
    rows = []
    rng = np.random.default_rng(0)
    for role, shift in (("id_val", 0.0), ("id", 0.0), ("ood", 3.0)):
        for t in (100, 200):
            for i in range(50):
                m, lp = rng.normal(shift + 1, 1), rng.normal(shift + 5, 2)
                rows.append(["d" if role != "ood" else "o", "test", role, i, t, m, lp, m + lp])
    scores = pd.DataFrame(rows, columns=SCORE_COLUMNS)
    stats = id_statistics(scores[scores["role"] == "id_val"])
    one = scores[(scores["role"] == "ood") & (scores["index"] == 7)]
    by_hand = np.mean([(r.mse - stats.loc[r.t, ("mse", "mean")]) / stats.loc[r.t, ("mse", "std")] for r in one.itertuples()]
                      + [(r.lpips - stats.loc[r.t, ("lpips", "mean")]) / stats.loc[r.t, ("lpips", "std")] for r in one.itertuples()])
    got = multi_t_scores(scores[scores["role"] == "ood"], stats)
    assert got.loc[got["index"] == 7, MULTI_T].item() == pytest.approx(by_hand)
    summary = summarize(scores)
    assert summary.loc[summary["metric"] == MULTI_T, "auroc"].item() > 0.95


@needs_data
def test_verdicts_place_images_against_id_validation(tiny_checkpoint):
    cfg = _cfg(tiny_checkpoint, ood=())
    r = evaluate(cfg)
    assert set(r.scores["role"]) == {"id_val"}  # a reference needs no ID test or OOD images
    ref = Reference.from_result(r)
    assert ref.ts == (50, 400) and len(ref.val_multi_t) == 10
    assert np.mean(ref.val_multi_t <= ref.threshold) >= 0.95
    x = to_model_input(load_images("fashionmnist", "val", 2, 0))
    verdicts = judge(x, load_checkpoint(tiny_checkpoint), ref, cfg.sampler, cfg.steps, lpips=get_lpips())
    # the first validation images score exactly as in the table, so their percentile is known
    assert verdicts[0].multi_t == pytest.approx(ref.val_multi_t[0], abs=1e-4)
    assert verdicts[0].label in ("looks in-distribution", "likely OOD")
    assert "threshold" in verdicts[0].describe()


def test_multi_t_combines_the_chosen_t_that_were_scored():
    assert combined_ts((500, 900), [100, 500, 700]) == (500,)
    assert combined_ts((800,), [300, 100]) == (100, 300)  # none of the chosen scored: all
    assert combined_ts(None, [700, 100]) == (100, 700)


def test_the_cache_key_follows_steps_only_for_the_samplers_that_take_them():
    key = lambda **kw: EvalConfig(**kw).cache_key("sha", True)  # noqa: E731
    assert key(sampler="strided", steps=10) != key(sampler="strided", steps=20) != key(sampler="ddim", steps=20)
    assert key(sampler="chain", steps=10) == key(sampler="chain", steps=20)
    assert key() == key(sampler="strided", steps=10)
