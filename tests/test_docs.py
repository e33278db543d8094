"""The docs name the code's defaults: each claim below is read from the docs and checked against the code."""

import re
import subprocess

import pytest

from diffood import inputs
from diffood.diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS
from diffood.evaluate import DEFAULT_MULTI_TS
from diffood.images import MAX_UPLOAD_PIXELS
from diffood.model import SHIPPED_MODELS, load_checkpoint
from diffood.scores import Pick
from diffood.verdict import TARGET_TPR
from tests.conftest import ROOT

DOCS = {p.name: p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]}


def test_readme_is_a_front_page_and_every_docs_link_resolves():
    assert len(DOCS["README.md"].splitlines()) <= 200
    for name, text in DOCS.items():
        base = ROOT if name == "README.md" else ROOT / "docs"
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if not target.startswith("http"):
                assert (base / target).exists(), f"{name} links to {target}"


def test_no_tracked_text_narrates_history_or_calls_a_score_the_seeds():
    tracked = subprocess.run(["git", "ls-files", "*.md", "*.py", "*.toml", "*.txt"], cwd=ROOT, capture_output=True,
                             text=True).stdout.split()
    for path in tracked:
        text = (ROOT / path).read_text()
        assert not re.search(r"\bsitting\b", text, re.IGNORECASE), path
        if path.startswith(("diffood/", "pages/")) or path == "app.py":
            assert "seed's" not in text, path


def test_the_defaults_the_docs_name_are_the_codes():
    method, data, dashboard = (" ".join(DOCS[name].split()) for name in ("method.md", "data.md", "dashboard.md"))
    assert f"`{DEFAULT_SAMPLER}` (default, {DEFAULT_STEPS} steps)" in method
    assert "over *t* = " + ", ".join(map(str, DEFAULT_MULTI_TS[:-1])) + f", {DEFAULT_MULTI_TS[-1]}" in method
    pick = Pick.of(load_checkpoint(SHIPPED_MODELS["fashionmnist"]))  # the default model's recorded pick
    (t,), draws = pick.reconstruction.ts, pick.reconstruction.draws
    assert f"MSE at *t* = {t} averaged over {draws} independent noise draws" in method
    assert f"*t*_f = {pick.features.t}" in method and f"`{pick.features.layer}`" in method
    assert f"{TARGET_TPR:.0%}".replace("%", " %") in method
    scan = inputs.SCAN
    claim = f"{scan.entries:,} entries looked at, {scan.depth} levels, {scan.seconds:.0f} s"
    assert claim in data and claim.replace(f"{scan.depth} levels", f"{scan.depth} levels deep") in dashboard
    assert f"{inputs.MAX_ENTRIES} entries" in dashboard.replace(f"{inputs.MAX_ENTRIES:,}", str(inputs.MAX_ENTRIES))
    assert f"{inputs.MAX_TOTAL_BYTES // 2**20} MiB unpacked" in dashboard
    assert f"{MAX_UPLOAD_PIXELS // 1_000_000} megapixels" in dashboard
    assert f"compression ratio of {inputs.MAX_RATIO}" in dashboard


@pytest.mark.parametrize("name", ["fashionmnist", "mnist"])
def test_the_readme_results_are_the_shipped_summaries(name):
    import pandas as pd

    summary = pd.read_csv(SHIPPED_MODELS[name] / "evals" / "summary.csv")
    default = summary[summary["metric"] == "default"].set_index("ood")["auroc"]
    ood = "mnist" if name == "fashionmnist" else "fashionmnist"
    assert f"**{default[ood]:.4f}**" in DOCS["README.md"]


def test_the_api_example_in_the_docs_runs(tmp_path, monkeypatch, capsys):
    """docs/cli.md's runnable example, as a reader would paste it: offline, on the shipped model and sample."""
    monkeypatch.setenv("DIFFOOD_DATA_DIR", str(tmp_path / "no-data"))
    block = DOCS["cli.md"].split("A runnable example")[1].split("```python")[1].split("```")[0]
    exec(compile(block, "docs/cli.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "1 noise draw 1" in printed and "4 noise draws 20" in printed


@pytest.mark.parametrize("name,ood", [("fashionmnist", "mnist"), ("mnist", "fashionmnist")])
def test_the_readme_full_test_set_figures_are_the_recorded_tables(name, ood):
    import pandas as pd

    s = pd.read_csv(ROOT / "docs" / "results" / f"{name}-default-full-test-sets.csv")
    row = s[(s["metric"] == "default") & (s["ood"] == ood)].iloc[0]
    assert (row["n_id"], row["n_ood"]) == (10_000, 10_000)
    assert f"{row['auroc']:.4f} [{row['auroc_lo']:.4f}, {row['auroc_hi']:.4f}]" in DOCS["README.md"]
