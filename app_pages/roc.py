"""ROC / AUROC vs t: ROC curves at chosen t, AUROC and FPR95 against t, and the multi-t score."""

import plotly.graph_objects as go
import streamlit as st

from app_pages.common import evaluated_tables
from diffood.metrics import roc_curve
from diffood.scoring import METRICS, MULTI_T, multi_t_scores

st.title("ROC / AUROC vs t")
cfg, result = evaluated_tables()
summary, scores, ood = result.summary, result.scores, cfg.ood[0]
per_t = summary[summary["metric"] != MULTI_T]
multi = summary[summary["metric"] == MULTI_T]
metrics = [m for m in METRICS if m in set(per_t["metric"])]
png = {"toImageButtonOptions": {"format": "png", "filename": "diffood_auroc"}}
colour = dict(zip(METRICS, ["#4c9be8", "#e8664c", "#5cc98b"]))  # one colour per metric on every chart

fig = go.Figure()
for m in metrics:
    rows = per_t[per_t["metric"] == m].sort_values("t")
    fig.add_scatter(x=rows["t"], y=rows["auroc"], mode="lines+markers", name=m, line_color=colour[m])
    best = rows.loc[rows["auroc"].idxmax()]
    fig.add_scatter(x=[best["t"]], y=[best["auroc"]], mode="markers",
                    marker=dict(symbol="star", size=16, color=colour[m]),
                    name=f"best {m}: t={int(best['t'])}, {best['auroc']:.3f}")
if len(multi):
    fig.add_hline(y=float(multi["auroc"].iloc[0]), line_dash="dash",
                  annotation_text=f"multi-t (t = {', '.join(map(str, result.multi_ts))}): {float(multi['auroc'].iloc[0]):.3f}")
fig.add_hline(y=0.5, line_dash="dot", line_color="gray", annotation_text="chance")
fig.update_layout(title=f"AUROC vs t: FashionMNIST vs {ood}", xaxis_title="t", yaxis_title="AUROC", yaxis_range=[0, 1.02])
st.plotly_chart(fig, config=png)

fig = go.Figure()
for m in metrics:
    rows = per_t[per_t["metric"] == m].sort_values("t")
    fig.add_scatter(x=rows["t"], y=rows["fpr95"], mode="lines+markers", name=m, line_color=colour[m])
if len(multi):
    fig.add_hline(y=float(multi["fpr95"].iloc[0]), line_dash="dash", annotation_text="multi-t")
fig.update_layout(title="FPR at 95 % TPR vs t (lower is better)", xaxis_title="t", yaxis_title="FPR95", yaxis_range=[0, 1.02])
st.plotly_chart(fig, config=png)

st.subheader("ROC curves")
c1, c2 = st.columns(2)
ts = sorted(scores["t"].unique())
chosen_m = c1.multiselect("Scores", [*metrics, MULTI_T], default=["mse", MULTI_T], key="roc_metrics")
best_t = int(per_t.loc[per_t["auroc"].idxmax(), "t"]) if len(per_t) else ts[-1]
chosen_t = c2.multiselect("t", ts, default=sorted({ts[0], best_t}), key="roc_ts")
fig = go.Figure()
for m in chosen_m:
    if m == MULTI_T:
        ms = multi_t_scores(scores, result.stats, result.multi_ts, keys=["role"])
        curves = [("multi-t", ms.loc[ms["role"] == "id", MULTI_T], ms.loc[ms["role"] == "ood", MULTI_T])]
    else:
        curves = [(f"{m}, t={t}", scores.loc[(scores["role"] == "id") & (scores["t"] == t), m],
                   scores.loc[(scores["role"] == "ood") & (scores["t"] == t), m]) for t in chosen_t]
    for name, a, b in curves:
        fpr, tpr, _ = roc_curve(a, b)
        fig.add_scatter(x=fpr, y=tpr, mode="lines", name=name)
fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="gray"), name="chance")
fig.update_layout(title="ROC (OOD = positive)", xaxis_title="false positive rate (ID flagged)",
                  yaxis_title="true positive rate (OOD flagged)")
st.plotly_chart(fig, config={"toImageButtonOptions": {"format": "png", "filename": "diffood_roc"}})

st.subheader("Table")
st.dataframe(summary, hide_index=True, column_config={"auroc": st.column_config.NumberColumn(format="%.4f"),
                                                      "fpr95": st.column_config.NumberColumn(format="%.4f")})
st.download_button("Download CSV", summary.to_csv(index=False), file_name=f"diffood_summary_{ood}.csv", mime="text/csv")
