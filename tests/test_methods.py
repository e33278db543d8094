"""The field's methods as score kinds (DiffPath, MSMA, a Gaussian feature head, the likelihood), checked on a
model whose answer is known in closed form: for data x0 ~ N(0, σ²I) the optimal noise prediction is
ε*(x_t, t) = √(1 − ᾱ_t) x_t / (ᾱ_t σ² + 1 − ᾱ_t)."""

import math
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from diffood.diffusion import ddim_generate, ddim_invert, make_scheduler
from diffood.errors import DiffoodError
from diffood.evaluate import EvalConfig, evaluate
from diffood.fitted import NotFitted, fit_path, load_fit
from diffood.images import to_model_input
from diffood.metrics import auroc
from diffood.model import Checkpoint, CheckpointMeta, load_checkpoint
from diffood.scores import MSMA, Context, DiffPath, GaussianHead, Likelihood, Pick, method_names, parse, table_name
from diffood.scores.base import Fitted, fit_and_save
from diffood.sets import load_images
from tests.conftest import DATA_DIR, needs_data

SIGMA = 0.2


class Exact(torch.nn.Module):
    """The optimal ε-prediction for x0 ~ N(0, σ²I) on the checkpoint's schedule, called as a diffusers UNet is."""

    def __init__(self, sigma: float, scheduler):
        super().__init__()
        self.sigma = sigma
        self.register_buffer("abars", scheduler.alphas_cumprod.double())

    def forward(self, x, timestep):
        a = self.abars[timestep.long()].reshape(-1, 1, 1, 1)
        return types.SimpleNamespace(sample=((1 - a).sqrt() * x.double() / (a * self.sigma ** 2 + 1 - a)).to(x.dtype))


@pytest.fixture(scope="module")
def exact():
    scheduler = make_scheduler()
    return Checkpoint(Exact(SIGMA, scheduler), CheckpointMeta(), Path("/nonexistent/exact"), "exact-model")


def gaussian(n: int, sigma: float, seed: int) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) * sigma


@pytest.mark.parametrize("name", ["diffpath", "diffpath(variant=1d)", "msma", "likelihood(variance=large, discrete=false)"])
def test_each_method_scores_the_wider_gaussian_as_ood(exact, name):
    spec = parse(name)
    ctx = Context(exact, batch_size=200)
    state = spec.fit_statistics(spec.statistics(ctx, gaussian(1000, SIGMA, 1))) if isinstance(spec, Fitted) else None
    id_s = spec.components(ctx, gaussian(200, SIGMA, 2), state)[:, 0].numpy()
    ood_s = spec.components(ctx, gaussian(200, 2 * SIGMA, 3), state)[:, 0].numpy()
    assert auroc(id_s, ood_s) > 0.95


def test_the_gaussian_head_scores_the_wider_gaussian_as_ood(tiny_checkpoint):
    """The feature kind needs a UNet's blocks, so it runs on the tiny random one, read at its last block (the
    deeper blocks of a random UNet keep little of the input once normalised): the wider inputs' features lie
    off the Gaussian fitted on the narrow ones."""
    ckpt = load_checkpoint(tiny_checkpoint)
    spec = GaussianHead(layer="up_blocks.2", t=10, pooling="mean", train=400)
    ctx = Context(ckpt, batch_size=200)
    state = spec.fit_statistics(spec.statistics(ctx, gaussian(400, SIGMA, 1)))
    id_s = spec.components(ctx, gaussian(200, SIGMA, 2), state)[:, 0].numpy()
    ood_s = spec.components(ctx, gaussian(200, 2 * SIGMA, 3), state)[:, 0].numpy()
    assert auroc(id_s, ood_s) > 0.95


def test_the_likelihood_gives_the_gaussians_bits_per_dimension(exact):
    """-E log2 N(x; 0, σ²) per dimension is ½ log2(2πeσ²). With the exact mean and the reverse variance β_t the
    bound is tight for Gaussian data; what is left is the stratified sum over t: within 0.1 bit at the
    default 19 strata, 0.03 at 200, and closer with more strata."""
    truth = 0.5 * math.log2(2 * math.pi * math.e * SIGMA ** 2)
    x = gaussian(100, SIGMA, 4)
    ctx = Context(exact, batch_size=100)
    error = {k: abs(Likelihood(k, discrete=False, variance="large").bits(ctx, x).mean() - truth) for k in (19, 200)}
    assert error[19] < 0.1 and error[200] < 0.03 and error[200] < error[19]


def test_ddim_inversion_then_generation_returns_the_image(exact):
    """The path diffpath walks is DDIM's: up then down the same levels lands back on x, ever closer with more
    steps (first order), and the far end looks like N(0, I)."""
    x = gaussian(50, SIGMA, 5)
    errors = {}
    for k in (100, 200):
        levels = sorted({1 + i * 999 // k for i in range(k + 1)})
        end, eps = ddim_invert(exact.model, x, levels, exact.scheduler)
        back = ddim_generate(exact.model, end, levels[::-1], exact.scheduler)
        errors[k] = float((back - x).pow(2).mean().sqrt() / SIGMA)
        assert len(eps) == len(levels) - 1 and abs(float(end.std()) - 1) < 0.05
    assert errors[200] < 0.05 and errors[200] < 0.6 * errors[100]


def test_diffpath_reads_k_calls_on_the_reference_levels(exact):
    calls = []
    model = exact.model

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x, timestep):
            calls.append(int(timestep[0]))
            return model(x, timestep)

    ckpt = Checkpoint(Counting(), CheckpointMeta(), Path("/nonexistent"), "counting")
    stats = DiffPath(steps=10).statistics(Context(ckpt), gaussian(3, SIGMA, 6))
    assert calls == list(range(0, 1000, 100)) and stats.shape == (3, 6)  # diffusers' timesteps 0, 100, ..., 900


@needs_data
def test_a_fit_is_deterministic_saved_and_read_back_to_the_same_scores(tiny_checkpoint, tmp_path):
    import shutil

    folder = tmp_path / "tiny"
    shutil.copytree(tiny_checkpoint, folder)
    ckpt = load_checkpoint(folder)
    ctx = Context(ckpt, batch_size=64)
    x = gaussian(8, 0.5, 7).clamp(-1, 1)
    for spec in (DiffPath(steps=3, train=60), DiffPath("1d", steps=3, train=60), MSMA(ts=(1, 10, 100), train=60),
                 GaussianHead("mid_block", 10, "mean", "diagonal", train=60)):
        with pytest.raises(NotFitted, match="diffood fit-score"):
            spec.fit(ctx)
        path = fit_and_save(spec, ctx)
        assert path == fit_path(folder, spec)
        first = spec.components(ctx, x).numpy()
        again = spec.fit_statistics(spec.training_statistics(ctx))
        assert all(torch.equal(again[k].double(), v.double()) for k, v in load_fit(ckpt, spec)[0].items())
        assert np.allclose(spec.components(ctx, x, again).numpy(), first)
    with pytest.raises(DiffoodError, match="fits nothing"):
        fit_and_save(Likelihood(), ctx)


def test_a_fit_made_for_other_weights_is_refused(tiny_checkpoint, tmp_path):
    import shutil

    folder = tmp_path / "tiny"
    shutil.copytree(tiny_checkpoint, folder)
    ckpt = load_checkpoint(folder)
    spec = MSMA(ts=(1, 10), train=40)
    other = Checkpoint(ckpt.model, ckpt.meta, folder, "another-weights-sha")
    from diffood.fitted import save_fit

    save_fit(other, spec, {"x": torch.zeros(1)}, {})
    with pytest.raises(NotFitted, match="other weights"):
        load_fit(ckpt, spec)


def test_all_names_every_method_in_its_variants():
    names = [parse(m).name for m in method_names()]
    assert {"diffpath-6d", "diffpath-1d", "msma", "gaussian", "gaussian-diagonal", "likelihood"} <= set(names)
    assert all(parse(m).calls() <= 25 for m in method_names())
    assert parse("likelihood(discrete=false)").discrete is False
    with pytest.raises(DiffoodError):
        parse("likelihood(discrete=maybe)")


@pytest.mark.parametrize("name", ["fashionmnist", "mnist"])
def test_every_method_reads_from_the_shipped_tables_without_computing(name):
    """`diffood evaluate --methods all` on a shipped model: one summary row per method, nothing computed, and on
    the FashionMNIST model the likelihood calls MNIST *more* likely (Nalisnick et al.): AUROC far below 0.5."""
    ckpt = load_checkpoint(name)
    r = evaluate(EvalConfig(checkpoint=name, methods=tuple(method_names())), ckpt)
    assert not r.computed
    rows = r.summary[r.summary["t"].isna()].set_index("metric")
    for m in method_names():
        spec = parse(m, Pick.of(ckpt))
        label = next(n for n, s in r.named.items() if s == spec)
        assert rows.loc[label, "calls"] == spec.calls() and 0 <= rows.loc[label, "auroc"] <= 1
    if name == "fashionmnist":
        assert rows.loc["likelihood", "auroc"] < 0.2


@pytest.mark.slow
@needs_data
def test_the_shipped_method_tables_equal_a_recomputation():
    """On the shipped FashionMNIST model (tables computed on a GPU in fp32): each method's values for the first
    100 ID validation, ID test and MNIST images, recomputed here from the shipped fits, equal the shipped
    table's, and so does the AUROC they give."""
    ckpt = load_checkpoint("fashionmnist", precision="fp32")
    shipped = evaluate(EvalConfig(checkpoint="fashionmnist", ood=("mnist",), ts=(), methods=tuple(method_names())), ckpt)
    ctx = Context(ckpt, data_dir=str(DATA_DIR))
    images = {role: to_model_input(load_images(name, split, n, 0, DATA_DIR, id=ckpt.data))[:100]
              for role, name, split, n in (("id_val", "fashionmnist", "val", 500), ("id", "fashionmnist", "test", 1000),
                                           ("ood", "mnist", "test", 1000))}
    methods = [s for s in shipped.named.values() if not any(t.table for t in s.terms())]
    assert len(methods) == 6
    for spec in methods:
        rows = shipped.tables[table_name(spec)]
        state = spec.fit(ctx) if isinstance(spec, Fitted) else None
        mine = {role: spec.components(ctx, x, state)[:, 0].numpy() for role, x in images.items()}
        stored = {role: rows[rows["role"] == role].sort_values("index")["c0"].to_numpy()[:100] for role in images}
        for role in images:
            scale = np.abs(stored[role]).mean() + 1e-9
            assert np.allclose(mine[role], stored[role], rtol=1e-3, atol=1e-3 * scale), (spec.name, role)
        assert abs(auroc(mine["id"], mine["ood"]) - auroc(stored["id"], stored["ood"])) < 0.005
