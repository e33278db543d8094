"""The benchmarks measure what they say: the sweep computes everything, reading no table."""

import sys

import pytest

from diffood import evaluate as ev
from diffood import store
from tests.conftest import ROOT, needs_data

sys.path.insert(0, str(ROOT / "benchmarks"))
sweep = pytest.importorskip("sweep")


@needs_data
def test_the_sweep_benchmark_reads_no_cached_or_shipped_table(tiny_checkpoint, tmp_path, monkeypatch):
    kw = dict(ts=(50, 400), score="reconstruction(ts=400, draws=2)", n=8, n_val=8, steps=2)
    cached = ev.evaluate(ev.EvalConfig(checkpoint=str(tiny_checkpoint), cache_dir=str(tmp_path), **kw))
    assert cached.cache_file.is_file()  # a table the benchmark could have read
    cfg = sweep.config(str(tiny_checkpoint), None, str(tmp_path), "cpu", **kw)
    monkeypatch.setattr(store, "_read_cached", lambda paths, columns: pytest.fail(f"the benchmark read {paths}"))
    result = ev.evaluate(cfg)
    assert len(result.computed) == 3 * 2  # every (set, t) computed


def test_the_sweep_benchmark_uses_the_defaults():
    cfg = sweep.config("ckpt", None, "/tmp/x", "cpu")
    default = ev.EvalConfig()
    fields = ("ts", "ood", "n", "n_val", "score", "methods", "sampler", "steps")
    assert [getattr(cfg, f) for f in fields] == [getattr(default, f) for f in fields]
    assert cfg.recompute
