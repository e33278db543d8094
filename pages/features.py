"""Feature space: ID test images, the OOD set and a sample of the feature bank where the default score sees
them (the UNet's own features), projected to 2-D; select points to see their images and nearest neighbours."""

import hashlib

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch

from diffood.errors import DiffoodError
from diffood.featuremap import PROJECTIONS, bank_sample, embed_images, project
from diffood.features import bank_images, checkpoint_bank
from diffood.scores import DEFAULT
from diffood.sets import load_images
from diffood.verdict import Reference
from pages.common import checkpoint, dataset_label, eval_config, evaluation, load_model, through_app, to_display, tpr

through_app()

st.title("Feature space")
ckpt = checkpoint()
data = ckpt.data
s = st.session_state
cfg = eval_config()
result = evaluation(cfg)
if result is None:
    st.stop()
reference = Reference.from_result(result, DEFAULT, tpr())
bank = reference.bank
if bank is None:
    st.info("The default score of this checkpoint has no feature term, so there is no feature space to show: build a "
            f"bank with `diffood bank --checkpoint {ckpt.path}`.")
    st.stop()
st.caption(f"Each point is an image where the default score sees it: {bank.spec.describe()}, one network call "
           f"(the first noise draw). Its score is the z-scored distance to the nearest of {bank.n:,} training images; "
           f"✕ marks the images the verdict calls OOD at the threshold that accepts {reference.tpr:.1%} of ID "
           f"validation images (the sidebar's TPR).")


@st.cache_data(show_spinner="Embedding images…", max_entries=32)
def embeddings(path: str, sha: str, fingerprint: str, name: str, n: int, seed: int) -> np.ndarray:
    ckpt = load_model(path)
    return embed_images(ckpt, checkpoint_bank(ckpt), name, n, seed)


@st.cache_data(show_spinner=False, max_entries=16)
def projected(digest: str, method: str, seed: int, _points: np.ndarray):
    return project(_points, method, seed)


left, right = st.columns(2)
n = left.select_slider("Images per set", [v for v in (100, 250, 500, 1000, 2000) if v <= cfg.n], value=min(250, cfg.n),
                       key="map_n", help="250 are on any machine for the shipped models (their sample); more need the data")
method = right.radio("Projection", PROJECTIONS, horizontal=True, key="map_method",
                     help="PCA at once; t-SNE (scikit-learn) takes seconds to tens of seconds, and is kept once made")
sets = [(data.name, f"{data.label} test (ID)"), (s["ood"], f"{dataset_label(data, s['ood'])} (OOD)")]
points, labels, rows, names = [], [], [], []
try:
    for name, label in sets:
        e = embeddings(str(ckpt.path), ckpt.key, bank.fingerprint(), name, n, int(s["seed"]))
        points.append(e)
        labels += [label] * len(e)
        rows += list(range(len(e)))
        names += [name] * len(e)
except DiffoodError as e:
    st.error(str(e))
    st.stop()
bank_rows, bank_points = bank_sample(bank, n, int(s["seed"]))
points.append(bank_points)
labels += [f"{data.label} training (feature bank)"] * len(bank_rows)
rows += bank_rows.tolist()
names += ["bank"] * len(bank_rows)
points = np.concatenate(points)
scored = result.score_frame(DEFAULT)
score = {(r.dataset, int(r.index)): r.score for r in scored[scored["role"].isin(["id", "ood"])].itertuples()}
scores = np.array([score.get((name, row), np.nan) for name, row in zip(names, rows)])

digest = hashlib.sha256(points.tobytes()).hexdigest()
if method == "t-SNE" and s.get("tsne_done") != digest:
    bar = st.progress(0.0, text=f"t-SNE of {len(points):,} points…")
    projected(digest, method, int(s["seed"]), points)
    bar.progress(1.0, text="t-SNE done")
    bar.empty()
    s["tsne_done"] = digest
view = projected(digest, method, int(s["seed"]), points)

fig = go.Figure()
colours = ["#4c9be8", "#e8664c", "#8a8a8a"]
for (label, colour) in zip(dict.fromkeys(labels), colours):
    pick = np.array([lab == label for lab in labels])
    ood = scores[pick] > reference.threshold
    text = [f"{label} #{r}" + (f"<br>score {v:+.2f}" if np.isfinite(v) else "") for r, v in
            zip(np.array(rows)[pick], scores[pick])]
    fig.add_scatter(x=view.xy[pick, 0], y=view.xy[pick, 1], mode="markers", name=label, text=text, hoverinfo="text",
                    customdata=np.flatnonzero(pick),
                    marker=dict(color=colour, size=6, opacity=0.35 if "bank" in label else 0.8,
                                symbol=np.where(ood, "x", "circle")))
uploads = s.get("map_uploads", {})
if uploads and view.pca is not None:
    placed = view.place(np.stack(list(uploads.values())))
    fig.add_scatter(x=placed[:, 0], y=placed[:, 1], mode="markers+text", name="your images", text=list(uploads),
                    textposition="top center", marker=dict(symbol="star", size=16, color="#f0a43a"))
fig.update_layout(title=f"{method} of the default score's features", height=620, dragmode="select",
                  legend=dict(orientation="h", y=-0.15), xaxis_title=f"{method} 1", yaxis_title=f"{method} 2")
event = st.plotly_chart(fig, on_select="rerun", selection_mode=("box", "lasso"), key="feature_map",
                        config={"toImageButtonOptions": {"format": "png", "filename": "diffood_feature_map"}})
if uploads and view.pca is None:
    st.caption("Your images are placed on the PCA view; t-SNE cannot place new points.")

picked = sorted({int(p["customdata"]) for p in (event.selection.points if event else []) if "customdata" in p})
if not picked:
    st.info("Select points with the box or lasso tool to see their images, scores and nearest training images.")
    st.stop()


@st.cache_data(show_spinner=False, max_entries=64)
def thumbnails(path: str, sha: str, name: str, n: int, seed: int, wanted: tuple[int, ...]) -> list[np.ndarray]:
    ckpt = load_model(path)
    images = load_images(name, "test", n, seed, id=ckpt.data)
    return [to_display(images[i].float() / 255, 3) for i in wanted]


st.subheader(f"{len(picked)} selected" + (" (the first 12 shown)" if len(picked) > 12 else ""))
for i in picked[:12]:
    name, row = names[i], rows[i]
    cols = st.columns([1, 2, 3])
    try:
        shown = (bank_images(bank, [row], id=data)[0].float() / 255 if name == "bank" else None)
        image = to_display(shown, 3) if shown is not None else thumbnails(str(ckpt.path), ckpt.key, name, n,
                                                                          int(s["seed"]), (row,))[0]
        cols[0].image(image, caption=f"{labels[i]} #{row}")
    except DiffoodError as e:
        cols[0].caption(f"{labels[i]} #{row}: image not on this machine ({e})")
    if np.isfinite(scores[i]):
        verdict = "likely OOD" if scores[i] > reference.threshold else "looks in-distribution"
        cols[1].markdown(f"score **{scores[i]:+.3f}**: {verdict}  \nthreshold {reference.threshold:+.3f} "
                         f"({reference.tpr:.1%} TPR)")
    else:
        cols[1].markdown("a training image in the bank")
    index, distance = bank.nearest(torch.from_numpy(points[i]), 4 if name == "bank" else 3)
    near = [(int(j), float(d)) for j, d in zip(index, distance) if not (name == "bank" and int(j) == row)][:3]
    try:
        pictures = bank_images(bank, [j for j, _ in near], id=data)
        for col, (j, d), img in zip(cols[2].columns(3), near, pictures):
            col.image(to_display(img.float() / 255, 3), caption=f"nearest: {d:.4f}")
    except DiffoodError:
        cols[2].markdown("nearest training images: " + ", ".join(f"#{j} at {d:.4f}" for j, d in near))
