"""One score concept: typed specs read and written alike, a registry a new kind joins without an edit of the
evaluation, the CLI, the API or the pages, and the defects a careful read found."""

import ast
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch

import diffood
from diffood import cli, perceptual
from diffood.errors import DiffoodError
from diffood.jobs import server_jobs
from diffood.evaluate import EvalConfig, evaluate, pending_calls
from diffood.model import load_checkpoint
from diffood.scores import (
    KINDS,
    Context,
    Features,
    GaussianHead,
    Pick,
    Reconstruction,
    ScoreSpec,
    UnknownKind,
    ZMean,
    from_dict,
    parse,
    register,
)
from diffood.sets import load_images
from tests.conftest import ROOT, needs_data


@dataclass(frozen=True)
class Brightness(ScoreSpec):
    """A toy kind: the mean pixel value, no network call. Registered by the fixture alone."""

    kind = "toy-brightness"
    gain: float = 1.0

    def calls(self, sampler="strided", steps=5) -> int:
        return 0

    def describe(self) -> str:
        return f"mean pixel value times {self.gain}"

    def components(self, ctx: Context, x: torch.Tensor, state=None) -> torch.Tensor:
        return (self.gain * x.flatten(1).mean(1, keepdim=True)).double().cpu()


@pytest.fixture
def toy():
    register(Brightness)
    yield Brightness
    KINDS.pop(Brightness.kind)


SPECS = [Reconstruction((600, 700), 2, ("mse", "lpips")), Features("mid_block", 25, "mean", 5, 2, 1000),
         ZMean((Reconstruction((700,), 4), Features()))]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
def test_a_spec_is_written_and_read_back_as_itself(spec):
    d = json.loads(json.dumps(spec.to_dict()))
    assert from_dict(d) == spec and d["kind"] == spec.kind
    assert parse(json.dumps(d)) == spec
    assert spec.describe() and spec.calls("strided", 5) == {"reconstruction": 2 * 2 * 5, "features": 2,
                                                           "zmean": 4 * 5 + 1}[spec.kind]


def test_unknown_kinds_and_parameters_are_refused_in_one_line():
    with pytest.raises(UnknownKind, match="unknown score kind 'density'.*knows .*features, .*reconstruction"):
        from_dict({"kind": "density"})
    with pytest.raises(DiffoodError, match="has no parameter 'width'"):
        from_dict({"kind": "features", "width": 3})
    with pytest.raises(UnknownKind, match="unknown score 'nope'"):
        parse("nope")
    with pytest.raises(DiffoodError, match="not param=value"):
        parse("features(k)")
    with pytest.raises(DiffoodError, match="k must be one of"):
        parse("features(k=3)")
    with pytest.raises(DiffoodError, match="version 9"):
        Pick.from_record({"version": 9, "default": {}})


def test_names_and_parameters_read_with_the_checkpoints_pick():
    pick = Pick.of(load_checkpoint("mnist"))  # reconstruction and a Gaussian head on mean-pooled up_blocks.0, t_f 300
    head = GaussianHead("up_blocks.0", 300, "mean", "ledoit-wolf", 10_000)
    assert parse("default", pick) == pick.default == ZMean((Reconstruction((600, 700, 800), 1, ("mse",)), head))
    assert parse("gaussian", pick) == head  # on the embeddings the pick reads, as its bank holds them
    assert parse("features(k=5, draws=2)", pick) == Features("up_blocks.0", 300, "mean", 5, 2, 10_000)
    assert parse("reconstruction(ts=600 700, draws=2)", pick) == Reconstruction((600, 700), 2, ("mse",))
    assert parse("both", pick) == ZMean((pick.reconstruction, pick.bank_term))


def test_a_record_written_before_specs_reads_as_version_1():
    record = {"default": {"kind": "both", "features": {"layer": "up_blocks.0", "t": 300, "pooling": "mean", "k": 1,
                                                       "draws": 4, "bank": 20000},
                          "reconstruction": {"ts": [600, 700, 800], "draws": 1, "metrics": ["mse"]}, "calls": 19},
              "reconstruction": {"ts": [600, 700, 800], "draws": 1, "metrics": ["mse"]}, "tolerance": 0.002}
    pick = Pick.from_record(record)
    recon = Reconstruction((600, 700, 800), 1, ("mse",))
    assert pick.default == ZMean((recon, Features("up_blocks.0", 300, "mean", 1, 4, 20_000))) and pick.calls == 19
    assert pick.reconstruction == recon and pick.level == 0 and pick.tolerance == 0.002


@pytest.mark.parametrize("name, kind", [("fashionmnist", Features), ("mnist", ZMean)])
def test_the_shipped_records_read_as_specs_and_round_trip(name, kind):
    record = load_checkpoint(name).meta.score
    assert record.get("version") == 2
    pick = Pick.from_record(record)
    assert isinstance(pick.default, kind) and pick.own and pick.calls == record["calls"]
    again = Pick.from_record(json.loads(json.dumps(pick.to_record())))
    assert again == pick and pick.to_record()["version"] == 2


def test_the_pick_is_read_through_the_dataclass_alone():
    """No string walk into a recorded pick outside scores/: `["score"]["default"]` and friends."""
    for path in [*(ROOT / "diffood").rglob("*.py"), *(ROOT / "pages").glob("*.py")]:
        if "scores" in path.parts:
            continue
        text = path.read_text()
        for needle in ('pick["', "pick['", "meta.score[", 'score"]["default', 'default"]["features'):
            assert needle not in text, (path, needle)


@needs_data
def test_a_registered_kind_reaches_evaluate_the_cli_and_the_api_untouched(toy, tiny_checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--help"])
    assert "toy-brightness" in " ".join(capsys.readouterr().out.split())
    prefix = tmp_path / "ev"
    assert cli.main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--ood", "uniform", "--t", "100", "--n", "30",
                     "--n-val", "30", "--steps", "1", "--no-lpips", "--methods", "toy-brightness(gain=2)",
                     "--out", str(prefix)]) == 0
    summary = pd.read_csv(f"{prefix}_summary.csv").set_index("metric")
    row = summary.loc["toy-brightness"]
    # uniform noise is brighter than clothes on black: the toy separates them, at no network call
    assert row["auroc"] > 0.95 and row["calls"] == 0
    scorer = diffood.load(tiny_checkpoint, device="cpu", steps=1, score="toy-brightness")
    assert scorer.spec == Brightness()
    # its reference: the 500 ID validation images' brightness in model range, z-scored by their own spread
    val = load_images("fashionmnist", "val", 500, 0).flatten(1).double().mean(1) / 255 * 2 - 1
    np.testing.assert_allclose(scorer.reference.val_scores, ((val - val.mean()) / val.std()).numpy(), atol=1e-6)
    x = load_images("fashionmnist", "val", 5, 0).float() / 255
    np.testing.assert_allclose(scorer(x).numpy(), scorer.reference.val_scores[:5], atol=1e-6)


@needs_data
def test_a_registered_kind_is_on_the_roc_pages_table(toy, tiny_checkpoint):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=240)
    at.session_state["checkpoint"] = str(tiny_checkpoint)
    at.session_state["steps"] = 1
    at.session_state["eval_n"] = 100
    at.session_state["eval_ts"] = [600]
    at.session_state["multi_ts"] = [600]
    at.session_state["methods"] = ["toy-brightness"]
    at.run()
    at.switch_page("pages/roc.py").run()
    for b in [b for b in at.button if b.label == "Compute now"]:
        b.click().run()
    assert server_jobs().wait_all(600)  # the rest is computed in the server's background: let it land
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    scores = at.dataframe[0].value
    assert "toy-brightness" in set(scores["score"])
    assert scores.set_index("score").loc["toy-brightness", "calls"] == 0


@needs_data
def test_the_tensor_front_door_scores_as_the_png_path_does(offline_scorer):
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    x = (x * 255).round() / 255  # what a PNG holds: 8 bits a pixel
    direct = offline_scorer(x)
    assert direct.shape == (8,) and torch.isfinite(direct).all()
    pngs = offline_scorer.score([x[i] for i in range(8)], invert=False)  # the same batch, through decoding
    np.testing.assert_allclose(direct.numpy(), pngs["score"].to_numpy(), atol=1e-5)
    with pytest.raises(DiffoodError, match=r"expected images \(N, 1, 28, 28\)"):
        offline_scorer(torch.rand(2, 3, 32, 32))


@pytest.fixture
def offline_scorer(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFOOD_DATA_DIR", str(tmp_path / "no-data"))
    return diffood.load(device="cpu")


def test_scorer_evaluate_takes_every_evalconfig_field_or_refuses_it(offline_scorer):
    s = offline_scorer.evaluate(sampler="strided", steps=5, seed=0, ts=(700,), n=1000, tpr=0.95)  # was a TypeError
    shipped = pd.read_csv(offline_scorer.checkpoint.path / "evals" / "summary.csv")  # what the shipped tables hold
    expected = shipped.query("ood == 'mnist' and metric == 'default'")["auroc"].item()
    assert s.set_index("metric").loc["default", "auroc"] == pytest.approx(expected, abs=5e-5)
    with pytest.raises(DiffoodError, match="no setting 'samplr'"):
        offline_scorer.evaluate(samplr="ddim")
    with pytest.raises(DiffoodError, match="device is the scorer's own"):
        offline_scorer.evaluate(device="cuda")


def test_one_lpips_net_per_device(monkeypatch):
    perceptual.get_lpips.cache_clear()
    cpu, meta = perceptual.get_lpips("cpu"), perceptual.get_lpips("meta")
    try:
        assert cpu is not meta and cpu is perceptual.get_lpips("cpu")
        assert next(cpu.parameters()).device.type == "cpu" and next(meta.parameters()).device.type == "meta"
        assert next(perceptual._resolved().parameters()).device.type == "cpu"  # the resolved one stays put
    finally:
        perceptual.get_lpips.cache_clear()


@needs_data
def test_the_compile_estimate_counts_each_samplers_own_calls(tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    base = dict(checkpoint=str(tiny_checkpoint), ood=(), ts=(), n_val=10, score=Reconstruction((300,), 1))
    assert pending_calls(EvalConfig(**base, sampler="strided", steps=5), ckpt) == 10 * 5
    assert pending_calls(EvalConfig(**base, sampler="chain"), ckpt) == 10 * 300  # t calls, whatever `steps` says
    assert pending_calls(EvalConfig(**base, sampler="ddpm", steps=5), ckpt) == 10 * 300


def test_one_timestep_convention_and_one_process_group_start():
    """The shift between our t and diffusers' timestep is written in diffusion.py alone; torch.distributed's
    process group starts in distributed.py alone."""
    for path in (ROOT / "diffood").rglob("*.py"):
        tree = ast.parse(path.read_text())
        calls = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
        if path.name != "distributed.py":
            assert "init_process_group" not in calls, path
        if path.name != "diffusion.py":
            shifted = [n for n in ast.walk(tree) if isinstance(n, ast.BinOp) and isinstance(n.op, (ast.Sub, ast.Add))
                       and isinstance(n.left, ast.Name) and n.left.id in ("t", "k") and isinstance(n.right, ast.Constant)
                       and n.right.value == 1]
            assert not shifted, (path, [ast.unparse(n) for n in shifted])


@needs_data
def test_the_checkpoints_without_a_record_fall_back_and_say_so(tiny_checkpoint):
    pick = Pick.of(load_checkpoint(tiny_checkpoint))
    assert not pick.own and pick.default == Features("up_blocks.0", 50, "max", 1, 1, 58_000)
    r = evaluate(EvalConfig(checkpoint=str(tiny_checkpoint), ood=(), ts=(), n_val=8, steps=1, lpips=False))
    assert any("records no score of its own" in n for n in r.notes)
