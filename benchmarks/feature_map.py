"""The Feature space page's cost: embedding 1000 ID + 1000 OOD images as the default score does (its first
view with nothing cached), the first view once embeddings are cached (the bank sample, PCA and the figure),
and t-SNE of ID + OOD + bank sample (3000 points).

    python benchmarks/feature_map.py --data-dir ../shared/data
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch
from common import parser, report, timer

from diffood.diffusion import default_device
from diffood.featuremap import bank_sample, embed_images, project
from diffood.features import checkpoint_bank
from diffood.model import load_checkpoint


def figure(xy: np.ndarray, sets: list[int]) -> go.Figure:
    fig = go.Figure()
    for k in sorted(set(sets)):
        pick = np.array(sets) == k
        fig.add_scatter(x=xy[pick, 0], y=xy[pick, 1], mode="markers", customdata=np.flatnonzero(pick))
    fig.to_json()  # what Streamlit sends
    return fig


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--n", type=int, default=1000, help="ID test and OOD images each; as many bank rows")
    p.add_argument("--ood", default="mnist")
    a = p.parse_args()
    device = torch.device(a.device) if a.device else default_device()
    ckpt = load_checkpoint(a.checkpoint, device=device)
    bank = checkpoint_bank(ckpt)
    rows = []
    with timer(device) as cold:
        points = [embed_images(ckpt, bank, ckpt.data.name, a.n, 0, a.data_dir), embed_images(ckpt, bank, a.ood, a.n, 0, a.data_dir)]
    rows.append({"step": f"embed {a.n} ID + {a.n} OOD images (1 call each)", "points": 2 * a.n, "seconds": cold["s"]})
    with timer(device) as first:
        _, sample = bank_sample(bank, a.n)
        allpoints = np.concatenate([*points, sample])
        view = project(allpoints, "PCA")
        figure(view.xy, [0] * a.n + [1] * a.n + [2] * len(sample))
    rows.append({"step": "first view, embeddings cached: bank sample + PCA + figure", "points": len(allpoints),
                 "seconds": first["s"]})
    with timer(device) as tsne:
        view = project(allpoints, "t-SNE")
        figure(view.xy, [0] * a.n + [1] * a.n + [2] * len(sample))
    rows.append({"step": "t-SNE + figure", "points": len(allpoints), "seconds": tsne["s"]})
    report(rows, "feature_map", device, a.out)


if __name__ == "__main__":
    main()
