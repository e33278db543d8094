"""Score histograms: ID vs OOD score distributions at one t, with a movable threshold."""

from dataclasses import replace

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from diffood.diffusion import sampler_name
from diffood.metrics import auroc, rates_at_threshold, threshold_at_tpr
from diffood.scores import Pick, method_names, parse
from diffood.scoring import METRICS
from pages.common import checkpoint, evaluated_tables, evaluation, through_app, tpr

through_app()

st.title("Score histograms")
cfg, result = evaluated_tables()

scores, ood = result.scores, cfg.ood[0]
pick = Pick.of(checkpoint())
more = {spec.name: spec for spec in (parse(m, pick) for m in method_names()) if spec not in result.named.values()}
metric = st.radio("Score", [*result.named, *more, *METRICS], horizontal=True, key="hist_metric",
                  help="\n\n".join(f"{name}: {spec.describe()}" for name, spec in result.named.items())
                  + "\n\nThe default was chosen on proxy OOD sets; reconstruction and features are its two terms alone; "
                    "multi-t is the z-mean of MSE and LPIPS over t = 500-900 (Graham et al., CVPR-W 2023). The others: one metric at one t, one noise draw.")
if metric in more:  # a method the sidebar does not report: its own tables, computed on request
    result = evaluation(replace(cfg, methods=(*cfg.methods, more[metric])), button=f"Compute {metric}")
    if result is None:
        st.stop()
    metric = next(name for name, spec in result.named.items() if spec == more[metric])
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

fig = go.Figure()
fig.add_histogram(x=id_s, name=f"{checkpoint().data.label} test (ID)", opacity=0.6, histnorm="probability density", nbinsx=60)
fig.add_histogram(x=ood_s, name=f"{ood} (OOD)", opacity=0.6, histnorm="probability density", nbinsx=60)
fig.add_vline(x=thr, line_dash="dash", annotation_text="threshold")
fig.update_layout(barmode="overlay", title=f"{label}: AUROC {auroc(id_s, ood_s):.3f}", xaxis_title="score (higher = more OOD)",
                  yaxis_title="density", legend=dict(orientation="h", y=-0.2))
st.plotly_chart(fig, config={"toImageButtonOptions": {"format": "png", "filename": "diffood_histogram"}})

c1, c2, c3 = st.columns(3)
c1.metric("ID accepted (TPR)", f"{id_ok:.1%}")
c2.metric("OOD accepted (FPR)", f"{ood_ok:.1%}")
c3.metric("OOD detected", f"{1 - ood_ok:.1%}")
st.caption(f"The starting threshold {default_thr:.4f} accepts {tpr():.1%} of the {len(val_s)} ID validation images "
           f"(the sidebar's TPR). "
           f"{len(id_s)} ID test and {len(ood_s)} OOD images; {sampler_name(cfg.sampler, cfg.steps)} sampler, seed {cfg.seed}."
           + (f" The {metric} score: {result.named[metric].describe()}." if metric in result.named else ""))
