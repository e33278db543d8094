"""The selection's proxies never touch a reported image: every image each shipped model's protocol used (ID side,
reference, proxies) against every image its reported figures use (the shipped tables and the full test sets, seeds
0-2)."""

from pathlib import Path

import pandas as pd
import pytest

from diffood.evaluate import EvalConfig, image_sets, resolve
from diffood.model import load_checkpoint
from diffood.scores import Pick
from diffood.sets import provenance

from tests.conftest import needs_data

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"fashionmnist": "model", "mnist": "model-mnist"}


def reported(name: str, ckpt) -> set:
    """(source, position) of every image a reported figure of the shipped model uses."""
    sizes = {}
    for path in [REPO / "diffood/assets" / FOLDERS[name] / "evals/summary.csv",
                 *(REPO / "docs/results").glob(f"{name}-*.csv")]:
        table = pd.read_csv(path)
        for ood, n in table.groupby("ood")["n_ood"].max().items():
            sizes[ood] = max(sizes.get(ood, 0), int(n))
    out = set()
    for seed in (0, 1, 2):
        for ood, n in sizes.items():
            cfg = resolve(EvalConfig(checkpoint=name, ood=(ood,), n=n, seed=seed), ckpt)
            for role, set_, split, k in image_sets(cfg, ckpt):
                if role != "id_val":
                    out |= provenance(set_, split, k, seed, id=ckpt.data)
    return out


@needs_data
@pytest.mark.parametrize("name", ["fashionmnist", "mnist"])
def test_no_image_of_the_selection_is_in_a_reported_set(name):
    """The recorded protocol's images (reference, ID side, proxies) share none with a reported set."""
    ckpt = load_checkpoint(name, device="cpu")
    pick, data = Pick.of(ckpt), ckpt.data
    images = pick.images
    assert images.get("proxy_split") == "val"  # the proxies are made from validation images
    used = provenance(data.name, "val", images["reference"] + images["id"], 0, id=data)  # reference and ID side
    for proxy in pick.proxies:
        used |= provenance(proxy, "val", images["proxy"], 0, id=data)
    shown = reported(name, ckpt)
    assert len(used) == images["reference"] + images["id"] + images["proxy"] * 2  # val images, then two noises
    assert not used & shown
    # the check finds what it looks for: proxies made from the test images would share the reported flips'
    assert provenance(f"{data.name}-vflip", "test", images["proxy"], 0, id=data) & shown


@needs_data
def test_the_selection_side_and_its_proxies_are_apart():
    """The transformed proxies are made from the reference images, never from the ID side's."""
    ref = provenance("fashionmnist", "val", 1000, 0)
    side = provenance("fashionmnist", "val", 2000, 0) - ref
    assert provenance("fashionmnist-hflip", "val", 1000, 0) == ref and not ref & side and len(side) == 1000
    assert not provenance("gaussian-noise", "val", 1000, 0) & provenance("gaussian-noise", "test", 10_000, 0)
