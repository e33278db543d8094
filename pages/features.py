"""Feature space: ID test images, the OOD set and a sample of the feature bank where the default score sees
them (the UNet's own features), projected to 2-D; select points to see their images and nearest neighbours."""

import hashlib

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import torch

from diffood.errors import DiffoodError
from diffood.featuremap import PROJECTIONS, bank_sample, embed_images, most_similar, project, selection_archive
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
result = evaluation(cfg, default_only=True)  # the map needs the default score alone: computed at once
if result is None:
    st.stop()
reference = Reference.from_result(result, DEFAULT, tpr())
bank = reference.bank
if bank is None:
    st.info("The default score of this checkpoint reads no UNet features, or its checkpoint has no bank of them, so "
            f"there is no feature space to show: build a bank with `diffood bank --checkpoint {ckpt.path}`.")
    st.stop()
st.caption(f"Each point is an image where the default score sees it: {bank.spec.describe()}, one network call "
           f"(the first noise draw), beside {bank.n:,} training images in the bank. Its score is the default "
           f"({reference.spec.describe()}); ✕ marks the images the verdict calls OOD at the threshold that accepts "
           f"{reference.tpr:.1%} of ID validation images (the sidebar's TPR).")


@st.cache_data(show_spinner="Embedding images…", max_entries=32)
def embeddings(path: str, sha: str, fingerprint: str, name: str, n: int, seed: int) -> np.ndarray:
    ckpt = load_model(path)
    return embed_images(ckpt, checkpoint_bank(ckpt), name, n, seed)


@st.cache_data(show_spinner=False, max_entries=16)
def projected(digest: str, method: str, seed: int, _points: np.ndarray):
    return project(_points, method, seed)


left, middle, right = st.columns(3)
n = left.select_slider("Images per set", [v for v in (100, 250, 500, 1000, 2000) if v <= cfg.n], value=min(250, cfg.n),
                       key="map_n", help="250 are on any machine for the shipped models (their sample); more need the data")
method = middle.radio("Projection", PROJECTIONS, horizontal=True, key="map_method",
                      help="PCA at once; t-SNE (scikit-learn) takes seconds to tens of seconds, and is kept once made")
colour_by = right.radio("Colour by", ["set", "verdict", "score"], horizontal=True, key="map_colour",
                        help="score: the default score of each test image (bank images have none: grey); a click on "
                             "a legend entry hides or shows its set")
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
finite = scores[np.isfinite(scores)]
for (label, colour) in zip(dict.fromkeys(labels), colours):
    pick = np.array([lab == label for lab in labels])
    ood = scores[pick] > reference.threshold
    text = [f"{label} #{r}" + (f"<br>score {v:+.2f}" if np.isfinite(v) else "") for r, v in
            zip(np.array(rows)[pick], scores[pick])]
    if colour_by == "verdict":
        colour = np.where(np.isfinite(scores[pick]), np.where(ood, "#d62728", "#2ca02c"), "#8a8a8a")
    marker = dict(color=colour, size=6, opacity=0.35 if "bank" in label else 0.8, symbol=np.where(ood, "x", "circle"))
    if colour_by == "score" and np.isfinite(scores[pick]).any():
        marker.update(color=scores[pick], colorscale="Viridis", cmin=float(finite.min()), cmax=float(finite.max()),
                      colorbar=dict(title="score", x=1.02) if "(ID)" in label else None)
    fig.add_scatter(x=view.xy[pick, 0], y=view.xy[pick, 1], mode="markers", name=label, text=text, hoverinfo="text",
                    customdata=np.flatnonzero(pick), marker=marker)
similar = s.get("map_similar")  # (digest, the chosen point, its k most similar): drawn as rings
if similar and similar[0] == digest:
    _, anchor, near = similar
    fig.add_scatter(x=view.xy[near, 0], y=view.xy[near, 1], mode="markers", name=f"{len(near)} most similar to "
                    f"{labels[anchor]} #{rows[anchor]}", hoverinfo="skip",
                    marker=dict(symbol="circle-open", size=14, line=dict(width=2), color="#f0a43a"))
    fig.add_scatter(x=view.xy[[anchor], 0], y=view.xy[[anchor], 1], mode="markers", name="the chosen image",
                    hoverinfo="skip", marker=dict(symbol="diamond-open", size=16, line=dict(width=2), color="#000000"))
uploads = s.get("map_uploads", {})
if uploads and view.pca is not None:
    placed = view.place(np.stack(list(uploads.values())))
    fig.add_scatter(x=placed[:, 0], y=placed[:, 1], mode="markers+text", name="your images", text=list(uploads),
                    textposition="top center", marker=dict(symbol="star", size=16, color="#f0a43a"))
fig.update_layout(title=f"{method} of the default score's features", height=620, dragmode="select",
                  legend=dict(orientation="h", y=-0.15), xaxis_title=f"{method} 1", yaxis_title=f"{method} 2")
event = st.plotly_chart(fig, on_select="rerun", selection_mode=("points", "box", "lasso"), key="feature_map",
                        config={"toImageButtonOptions": {"format": "png", "filename": "diffood_feature_map"}})
if uploads and view.pca is None:
    st.caption("Your images are placed on the PCA view; t-SNE cannot place new points.")
if similar and similar[0] == digest:
    _, anchor, near = similar
    st.caption(f"Ringed on the map: the {len(near)} points nearest to {labels[anchor]} #{rows[anchor]} by cosine "
               f"distance in the same features: " + ", ".join(f"{labels[j]} #{rows[j]}" for j in near))

picked = sorted({int(p["customdata"]) for p in (event.selection.points if event else []) if "customdata" in p})
if not picked:
    st.info("Select points with the box or lasso tool (or click one) to see their images, scores and nearest training "
            "images, mark the most similar images, or export the selection.")
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


def images_of(chosen: list[int], seed: int) -> list[torch.Tensor | None]:
    """The points' images (uint8, C x S x S), None where one is not on this machine; each set read once. It runs
    when the export is downloaded, outside the script run, so it reads nothing from the session."""
    sets = {}
    for name in dict.fromkeys(names[i] for i in chosen if names[i] != "bank"):
        try:
            sets[name] = load_images(name, "test", n, seed, id=data)
        except DiffoodError:
            pass
    in_bank = [i for i in chosen if names[i] == "bank"]
    try:
        banked = dict(zip(in_bank, bank_images(bank, [rows[i] for i in in_bank], id=data))) if in_bank else {}
    except DiffoodError:
        banked = {}
    return [banked.get(i) if names[i] == "bank" else sets[names[i]][rows[i]] if names[i] in sets else None
            for i in chosen]


st.subheader("The most similar images")
left, right = st.columns([3, 1])
chosen = left.selectbox("To this image", picked, key="map_anchor", format_func=lambda i: f"{labels[i]} #{rows[i]}")
k = right.number_input("k", 1, 100, 10, key="map_k")
if st.button("Mark them on the map", key="map_mark"):
    s["map_similar"] = (digest, chosen, most_similar(points, chosen, int(k)).tolist())
    st.rerun()

st.subheader("Export the selection")
table = pd.DataFrame({"set": [names[i] for i in picked], "label": [labels[i] for i in picked],
                      "index": [rows[i] for i in picked], "score": scores[picked],
                      "verdict": np.where(~np.isfinite(scores[picked]), "",
                                          np.where(scores[picked] > reference.threshold, "likely OOD", "in-distribution"))})
st.download_button(f"Download the {len(picked)} images and their scores (.zip)",
                   lambda seed=int(s["seed"]): selection_archive(table, images_of(picked, seed)),
                   file_name="diffood_selection.zip", mime="application/zip", key="map_export",
                   help="PNG images and selection.csv (set, index, score, verdict): a folder to use as an OOD set, or "
                        "a list of images to clean")
