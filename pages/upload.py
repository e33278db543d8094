"""Score your images: one or many uploads (or .zip archives, or a built-in example), preprocessed like
the training data, reconstructed, scored with the default score and placed against the ID distribution."""

import hashlib

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import torch

from diffood.datasets import fetch, resolve_data_dir
from diffood.diffusion import noise_for, reconstruct
from diffood.errors import DiffoodError
from diffood.evaluate import table_status
from diffood.featuremap import embed_upload
from diffood.features import FeatureBank, bank_images
from diffood.images import to_pixels, to_png
from diffood.inputs import Entry, expand
from diffood.scores import RECONSTRUCTION
from diffood.sets import load_images, load_user_image
from diffood.verdict import Reference, every_score, judge, judge_entries
from pages.common import (
    UPLOAD_TYPES,
    checkpoint,
    eval_config,
    evaluation,
    load_model,
    lpips_net,
    page,
    through_app,
    to_display,
    tpr,
    with_every_method,
)

through_app()


ckpt = checkpoint()
data = ckpt.data
st.title("Score your image")
st.caption(f"Any image works: it is turned to {'grayscale' if data.channels == 1 else 'RGB'}, its aspect kept, padded "
           f"to {data.size} × {data.size}"
           + (f", and inverted when its background is light, so the object is bright on dark as in {data.label}"
              if data.invert_uploads else "") + ". Several files or a .zip archive give a table.")


def example(dataset: str) -> bytes:
    return to_png(load_images(dataset, "test", 1, seed=0, id=data)[0])


@st.cache_data(show_spinner="Scoring…", max_entries=64)
def score_one(data: bytes, invert: bool | None, path: str, sha: str, sampler: str, steps: int, seed: int,
              reference_key: tuple, _reference: Reference, _evidence: Reference):
    """The verdict on one image, and the reconstruction evidence beside it: `_evidence` (the reconstruction
    score) judged too when the default score is another, and the reconstructions at its t."""
    ckpt = load_model(path)
    x = load_user_image(data, invert=invert, id=ckpt.data)
    verdict = judge(x, ckpt, _reference, lpips_net(), neighbours=5)[0]
    evidence = verdict if _evidence is _reference else judge(x, ckpt, _evidence, lpips_net())[0]
    device = next(ckpt.model.parameters()).device
    recons = {}
    for t in _evidence.ts:
        _, rec = reconstruct(ckpt.model, x.to(device), t, ckpt.scheduler, sampler, steps,
                             torch.Generator().manual_seed(seed + t), noise=noise_for(1, t, seed, x.shape[1:]), precision=ckpt.precision)
        recons[t] = to_display(to_pixels(rec[0]))
    return to_display(to_pixels(x[0]), 6), recons, verdict, evidence


@st.cache_data(show_spinner="Scoring it by every method…", max_entries=64)
def _every_score(data: bytes, invert: bool | None, path: str, sha: str, sampler: str, steps: int, seed: int,
                 tpr_: float, version: str, _result) -> pd.DataFrame:
    ckpt = load_model(path)
    return every_score(load_user_image(data, invert=invert, id=ckpt.data), ckpt, _result, tpr_, lpips_net())


def every_method(data_: bytes, invert: bool | None, settings: tuple) -> None:
    """This image's score, ID percentile and verdict by every method, each against its own ID validation scores."""
    st.subheader("Every method on this image")
    cfg = with_every_method(eval_config(reference_only=True))
    result = evaluation(cfg, button="Score it by every method")
    if result is None:
        return
    table = _every_score(data_, invert, *settings, tpr(), table_status(cfg, load_model(settings[0]))[1], result)
    st.dataframe(table, hide_index=True, column_config={
        "value": st.column_config.NumberColumn("score", format="%+.3f"),
        "percentile": st.column_config.NumberColumn("ID percentile", format="%.1f"),
        "threshold": st.column_config.NumberColumn(format="%+.3f")})
    st.caption("Each score against its own ID validation images (higher = more OOD); its threshold accepts the "
               "sidebar's share of them. Calls: network calls per image.")


@st.cache_data(show_spinner=False, max_entries=16)
def neighbour_images(fingerprint: str, indices: tuple[int, ...], _bank: FeatureBank, _id) -> tuple[list[np.ndarray], str]:
    """The bank's training images at `indices` for display, or none and the reason."""
    try:
        return [to_display(img.float() / 255, 4) for img in bank_images(_bank, list(indices), id=_id)], ""
    except DiffoodError as e:
        return [], str(e)


def nearest_images(verdict, reference: Reference) -> None:
    """The evidence in the score's features: the nearest ID training images and their distances."""
    bank, knn = reference.bank, reference.features
    st.markdown("**Its nearest ID training images in the model's own feature space**")
    near = verdict.neighbours
    images, reason = neighbour_images(bank.fingerprint(), tuple(int(i) for i in near["bank_index"]), bank, data)
    if images:
        for i, (col, row) in enumerate(zip(st.columns(len(near)), near.itertuples())):
            col.image(images[i], caption=f"#{i + 1}: distance {row.distance:.4f}", width=112)
    else:
        st.dataframe(near.assign(neighbour=range(1, len(near) + 1))[["neighbour", "bank_index", "distance"]],
                     hide_index=True, column_config={
                         "bank_index": st.column_config.NumberColumn("training image (bank row)", format="%d"),
                         "distance": st.column_config.NumberColumn("cosine distance", format="%.4f")})
        st.caption(f"Distances only: the training images are not on this machine ({reason})")
        if data.spec.is_torchvision and st.button(f"Download {data.label} to show these images", key="fetch_id",
                                                  help=f"torchvision fetches it into {resolve_data_dir()}"):
            with st.spinner(f"Downloading {data.label}…"):
                try:
                    fetch(data.spec, resolve_data_dir())
                except DiffoodError as e:
                    st.error(str(e))
                    return
            neighbour_images.clear()
            st.rerun()
    caption = f"Cosine distance between {bank.spec.describe()} (first noise draw); the bank holds {bank.describe()}."
    if knn is not None:  # a nearest-neighbour term: its distance against the ID validation images'
        val = reference.val[reference.val["t"] == knn.t].groupby("index")["knn1"].mean()
        caption += (f" This image's nearest distance, averaged over {knn.draws} draw{'s' * (knn.draws > 1)}: "
                    f"{verdict.nearest_distance:.4f}; ID validation images: median {val.median():.4f}, 95th "
                    f"percentile {val.quantile(0.95):.4f}.")
    st.caption(caption)


def reconstruction_evidence(evidence, reference: Reference, shown, recons, separate: bool) -> None:
    """The reconstruction score's evidence: the input, its reconstructions, errors and z-scores per t; its own
    verdict too when it is `separate` from the default score."""
    st.markdown("**What the model makes of it from noise**" + (
        f": the {reference.name} score alone says *{evidence.label}* ({evidence.score:+.2f}, ID validation "
        f"percentile {evidence.percentile:.1f})" if separate else ""))
    cols = st.columns(1 + len(recons))
    cols[0].image(shown, caption=f"input, as the model sees it ({data.size} × {data.size})")
    for col, (t, img) in zip(cols[1:], recons.items()):
        col.image(img, caption=f"reconstruction from t = {t} (first draw)", width=168)
    if len(evidence.per_t):
        st.dataframe(evidence.per_t[["t", "mse", "lpips", "z_mse", "z_lpips"]], hide_index=True,
                     column_config={c: st.column_config.NumberColumn(format="%.4f") for c in ["mse", "lpips", "z_mse", "z_lpips"]})


def id_histogram(reference: Reference, marks: dict[str, float], title: str) -> go.Figure:
    fig = go.Figure()
    fig.add_histogram(x=reference.val_scores, name=f"{data.label} validation", nbinsx=40, opacity=0.7)
    fig.add_vline(x=reference.threshold, line_dash="dash", annotation_text="threshold")
    for name, value in marks.items():
        fig.add_vline(x=value, line_color="red", line_width=2 if len(marks) > 1 else 3,
                      annotation_text=name if len(marks) <= 12 else None)
    fig.update_layout(title=title, xaxis_title=f"{reference.name} score (higher = more OOD)", height=340,
                      showlegend=False, margin=dict(t=50, b=30))
    return fig


s = st.session_state
examples = {f"Example: {data.label} image": data.name, f"Example: {data.default_ood} image": data.default_ood,
            "Example: noise": "uniform"}
sent = s.get("explain_case")  # (name, PNG) of an image sent here from the hardest cases
choices = ["Upload files", *examples, *([sent[0]] if sent else [])]
if s.get("upload_source") not in choices:  # the examples of another model
    s["upload_source"] = "Upload files"
source = st.radio("Image", choices, horizontal=True, key="upload_source")
if sent and source == sent[0]:
    entries = [Entry(*sent)]
elif source == "Upload files":
    uploads = st.file_uploader("Images or .zip archives", type=UPLOAD_TYPES, accept_multiple_files=True, key="upload_file")
    if not uploads:
        st.info("Upload one or more images (or a .zip of them), or pick an example above.")
        st.stop()
    entries = [e for up in uploads for e in expand(up.name, up.getvalue())]
else:
    try:
        entries = [Entry(source, example(examples[source]))]
    except DiffoodError as e:
        st.error(f"{source}: {e}")
        st.stop()
invert = None
if data.channels == 1:
    invert_choice = st.radio("Invert", ["auto (light background → invert)" if data.invert_uploads else "auto (never)",
                                        "never", "always"], horizontal=True, key="upload_invert")
    invert = {"never": False, "always": True}.get(invert_choice)

if len(entries) == 1:  # a bad file is reported before anything else runs
    try:
        if entries[0].error:
            raise DiffoodError(entries[0].error)
        load_user_image(entries[0].data, invert=invert, id=data)
    except DiffoodError as e:
        st.error(f"{entries[0].name}: {e}")
        st.stop()
result = evaluation(eval_config(reference_only=True))
if result is None:
    st.stop()
reference = Reference.from_result(result, tpr=tpr())
settings = (str(ckpt.path), ckpt.key, s["sampler"], int(s["steps"]), int(s["seed"]))

if len(entries) == 1:
    entry = entries[0]
    evidence_ref = Reference.from_result(result, RECONSTRUCTION, tpr()) if RECONSTRUCTION in result.named else reference
    shown, recons, verdict, evidence = score_one(entry.data, invert, *settings, (reference.spec, reference.threshold,
                                                                                 evidence_ref.spec), reference, evidence_ref)
    text = (f"**{verdict.label[0].upper() + verdict.label[1:]}**: score {verdict.score:+.2f} is "
            f"{'above' if verdict.is_ood else 'at or below'} the threshold {verdict.threshold:+.2f}; "
            f"higher than {verdict.percentile:.1f} % of ID validation images.")
    (st.error if verdict.is_ood else st.success)(text)
    st.caption(f"The threshold accepts {reference.tpr:.1%} of the {len(reference.val_scores)} {data.label} validation "
               f"images (the TPR set in the sidebar). Score: {reference.spec.describe()}.")
    left, right = st.columns([3, 2])
    with right:
        st.plotly_chart(id_histogram(reference, {"this image": verdict.score}, "Where this image lands among ID images"))
    with left:
        st.subheader("Why this verdict")
        if verdict.neighbours is not None:
            nearest_images(verdict, reference)
        reconstruction_evidence(evidence, evidence_ref, shown, recons, evidence_ref is not reference)
    every_method(entry.data, invert, settings)
    if reference.bank is not None:
        placed = s.setdefault("map_uploads", {})
        if st.button("Place it on the feature map", key="place_on_map", disabled=entry.name in placed):
            placed[entry.name] = embed_upload(ckpt, reference.bank, load_user_image(entry.data, invert, data),
                                              int(s["seed"]))
        if entry.name in placed:
            st.page_link(page("features"), label=f"See {entry.name} on the feature map", icon=":material/scatter_plot:")
    st.stop()

digest = hashlib.sha256(b"".join(hashlib.sha256(e.name.encode() + (e.data or b"")).digest() for e in entries)
                        + repr((invert, settings, reference.spec, reference.threshold)).encode()).hexdigest()
if s.get("batch_digest") != digest:
    bar = st.progress(0.0, text=f"Scoring {len(entries)} files…")
    table = judge_entries(entries, ckpt, reference, lpips_net(), invert,
                          progress=lambda done, total: bar.progress(done / total, text=f"Scored {done} of {total} images"))
    bar.empty()
    s["batch_digest"], s["batch_table"] = digest, table
table = s["batch_table"]
scored = table[table["error"] == ""]
bad = table[table["error"] != ""]
st.subheader(f"{len(scored)} images scored: {int((scored['verdict'] == 'likely OOD').sum())} likely OOD")
st.dataframe(scored.drop(columns="error"), hide_index=True,
             column_config={"score": st.column_config.NumberColumn(format="%+.3f"),
                            "percentile": st.column_config.NumberColumn("ID percentile", format="%.1f"),
                            "nearest_id_distance": st.column_config.NumberColumn("nearest ID distance", format="%.4f",
                                                                                 help="to the nearest ID training image "
                                                                                      "in the UNet's feature space")})
st.download_button("Download CSV", table.to_csv(index=False), file_name="diffood_scores.csv", mime="text/csv")
if len(bad):
    st.warning(f"{len(bad)} files were not scored:\n\n" + "\n".join(f"- `{r.file}`: {r.error}" for r in bad.itertuples()))
if len(scored):
    st.plotly_chart(id_histogram(reference, dict(zip(scored["file"], scored["score"])), "Where these images land among ID images"))
st.caption(f"The threshold {reference.threshold:+.3f} accepts {reference.tpr:.1%} of the {len(reference.val_scores)} "
           f"{data.label} validation images. Score: {reference.spec.describe()}.")
