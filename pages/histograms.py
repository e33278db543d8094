"""Score histograms: ID vs OOD score distributions at one t, with a movable threshold."""

from dataclasses import replace

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from diffood.diffusion import sampler_name
from diffood.evaluate import as_json, from_json, resolve
from diffood.images import to_png
from diffood.hardest import CASES, TITLES, bin_rows, case_images, wrong_cases
from diffood.metrics import auroc, rates_at_threshold, threshold_at_tpr
from diffood.scores import Pick, method_names, parse
from diffood.scoring import METRICS
from pages.common import (checkpoint, dataset_label, evaluated_tables, in_background, load_model, page, through_app,
                          to_display, tpr)

through_app()

st.title("Score histograms")
cfg, result, partial = evaluated_tables()

scores, ood = result.scores, cfg.ood[0]
pick = Pick.of(checkpoint())
more = {} if partial else {  # partial: the rest is being computed; a method not reported is offered once it is done
    spec.name: spec for spec in (parse(m, pick) for m in method_names()) if spec not in result.named.values()}
choices = [*result.named, *more, *(METRICS if result.config.ts else [])]
if st.session_state.get("hist_metric") not in choices:
    st.session_state.pop("hist_metric", None)
metric = st.radio("Score", choices, horizontal=True, key="hist_metric",
                  help="\n\n".join(f"{name}: {spec.describe()}" for name, spec in result.named.items())
                  + "\n\nThe default was chosen on proxy OOD sets; reconstruction and features are its two terms alone; "
                    "multi-t is the z-mean of MSE and LPIPS over t = 500-900 (Graham et al., CVPR-W 2023). The others: one metric at one t, one noise draw.")
if metric in more:  # a method the sidebar does not report: its own tables, computed on request
    result = in_background(replace(cfg, methods=(*cfg.methods, more[metric])), button=f"Compute {metric}")
    metric = next((name for name, spec in (result.named if result else {}).items() if spec == more[metric]), None)
    if metric is None:
        st.stop()  # not there yet: its button, or its progress
if metric in result.named:
    table = result.score_frame(metric)
    label = f"{metric} score"
else:
    single = scores[scores["draw"] == 0]
    t = st.select_slider("t", sorted(single["t"].unique()), value=min(single["t"].unique(), key=lambda v: abs(v - 700)), key="hist_t")
    table = single[single["t"] == t].rename(columns={metric: "score"})
    label = f"{metric} at t = {t}"
id_s = table.loc[table["role"] == "id", "score"].to_numpy()
ood_s = table.loc[table["role"] == "ood", "score"].to_numpy()
val_s = table.loc[table["role"] == "id_val", "score"].to_numpy()
if np.isnan(id_s).all():
    st.warning("LPIPS is unavailable (see the sidebar), so this score has no values.")
    st.stop()

default_thr = threshold_at_tpr(val_s, tpr())
lo, hi = float(np.nanmin(np.r_[id_s, ood_s])), float(np.nanmax(np.r_[id_s, ood_s]))
thr = st.slider("Threshold (score above it = OOD)", lo, hi, float(np.clip(default_thr, lo, hi)), (hi - lo) / 500,
                format="%.4f", key=f"thr-{metric}-{label}-{tpr()}")
id_ok, ood_ok = rates_at_threshold(id_s, ood_s, thr)

BINS = 60
edges = np.linspace(lo, hi, BINS + 1)
fig = go.Figure()
bins = dict(start=lo, end=hi, size=(hi - lo) / BINS) if hi > lo else None  # the bars are the bins listed below
fig.add_histogram(x=id_s, name=f"{checkpoint().data.label} test (ID)", opacity=0.6, histnorm="probability density", xbins=bins)
fig.add_histogram(x=ood_s, name=f"{dataset_label(checkpoint().data, ood)} (OOD)", opacity=0.6, histnorm="probability density", xbins=bins)
fig.add_vline(x=thr, line_dash="dash", annotation_text="threshold")
fig.update_layout(barmode="overlay", title=f"{label}: AUROC {auroc(id_s, ood_s):.3f}", xaxis_title="score (higher = more OOD)",
                  yaxis_title="density", legend=dict(orientation="h", y=-0.2))
event = st.plotly_chart(fig, config={"toImageButtonOptions": {"format": "png", "filename": "diffood_histogram"}},
                        on_select="rerun", selection_mode="points", key=f"hist_chart-{metric}-{label}")

c1, c2, c3 = st.columns(3)
c1.metric("ID accepted (TPR)", f"{id_ok:.1%}")
c2.metric("OOD accepted (FPR)", f"{ood_ok:.1%}")
c3.metric("OOD detected", f"{1 - ood_ok:.1%}")
st.caption(f"The starting threshold {default_thr:.4f} accepts {tpr():.1%} of the {len(val_s)} ID validation images "
           f"(the sidebar's TPR). "
           f"{len(id_s)} ID test and {len(ood_s)} OOD images; {sampler_name(cfg.sampler, cfg.steps)} sampler, seed {cfg.seed}."
           + (f" The {metric} score: {result.named[metric].describe()}." if metric in result.named else ""))


@st.cache_data(show_spinner=False, max_entries=64)
def _images(path: str, sha: str, config_json: str, wanted: tuple) -> list:
    """The images of table rows (role, dataset, index), read once per rows and settings (a threshold move reruns)."""
    rows = pd.DataFrame(list(wanted), columns=["role", "dataset", "index"])
    ckpt = load_model(path)
    return case_images(resolve(from_json(config_json), ckpt), rows, ckpt)


def images_of(rows) -> list:
    return _images(str(checkpoint().path), checkpoint().key, as_json(cfg),
                   tuple(rows[["role", "dataset", "index"]].itertuples(index=False, name=None)))


def gallery(rows, images) -> None:
    """The rows' images in a grid, each captioned with its score and ID percentile."""
    for i, (row, image) in enumerate(zip(rows.itertuples(), images)):
        if i % 6 == 0:  # a row of six at a time, so that the reading order is the list's
            columns = st.columns(6)
        with columns[i % 6]:
            caption = f"{dataset_label(checkpoint().data, row.dataset)} #{row.index}: {row.score:+.2f} ({row.percentile:.1f} %)"
            if image is None:
                st.caption(f"{caption}: image not at hand")
            else:
                st.image(to_display(image.float() / 255, 3), caption=caption)


frame = table[table["role"].isin(list(CASES))]
cases = wrong_cases(frame, thr, val_s)
st.subheader("The hardest cases at this threshold")
st.caption("Scores with the share of ID validation images scoring lower (%); each list most wrong first. Offline, "
           "the images come from the shipped sample, which holds the first images of each set.")
SHOWN = 12
listed = cases.groupby("case", sort=False).head(SHOWN)
images = dict(zip(listed.index, images_of(listed)))
for case in CASES.values():
    rows = cases[cases["case"] == case]
    st.markdown(f"**{TITLES[case]}: {len(rows)}**" + (f" (the {SHOWN} most wrong shown)" if len(rows) > SHOWN else ""))
    gallery(rows.head(SHOWN), [images[i] for i in rows.head(SHOWN).index])
st.download_button("Download the hardest cases (CSV)", cases.assign(dataset=cases["dataset"].map(
    lambda name: dataset_label(checkpoint().data, name))).to_csv(index=False), file_name="diffood_hardest.csv",
    mime="text/csv", key="hardest_csv")
at_hand = {f"{r.case}: {dataset_label(checkpoint().data, r.dataset)} #{r.index}": images[r.Index]
           for r in listed.itertuples() if images[r.Index] is not None}
if at_hand:
    chosen = st.selectbox("Why this verdict? An image of the lists", list(at_hand), key="hardest_why")
    if st.button("Open it in Score your image", key="hardest_open"):
        st.session_state["explain_case"] = (chosen, to_png(at_hand[chosen]))
        st.session_state["upload_source"], st.session_state["upload_invert"] = chosen, "never"
        st.switch_page(page("upload"))

st.subheader("The images in one bin")
counts = np.histogram(frame["score"], edges)[0]
options = [i for i, c in enumerate(counts) if c]
picked = [p.get("x") for p in (event.selection.get("points", []) if event else []) if p.get("x") is not None]
if picked:  # a bar clicked on the chart: its bin
    st.session_state["hist_bin"] = int(np.clip(np.searchsorted(edges, picked[0], side="right") - 1, 0, BINS - 1))
if st.session_state.get("hist_bin") not in options:
    st.session_state.pop("hist_bin", None)
which = st.selectbox("Bin (click a bar, or choose)", options, key="hist_bin", index=None, placeholder="none",
                     format_func=lambda i: f"{edges[i]:+.3f} to {edges[i + 1]:+.3f}: {counts[i]} images")
if which is not None:
    rows = bin_rows(frame, edges, which, val_s)
    st.caption(f"{len(rows)} images, highest score first" + (f"; the first {SHOWN * 2} shown" if len(rows) > SHOWN * 2 else ""))
    gallery(rows.head(SHOWN * 2), images_of(rows.head(SHOWN * 2)))
