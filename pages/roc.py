"""ROC / AUROC vs t: the default score beside multi-t (Graham et al.'s z-mean over t) and the best single t; AUROC and FPR95
against t per metric; ROC curves."""

from dataclasses import replace

import plotly.graph_objects as go
import streamlit as st

from diffood.comparison import method_table, published
from diffood.evaluate import FEATURE_CURVE_TS
from diffood.metrics import POSITIVE_CLASS, roc_curve
from diffood.scores import DEFAULT, FEATURES, MULTI_T, RECONSTRUCTION
from diffood.scoring import METRICS
from diffood.summary import describe_difference
from pages.common import (checkpoint, dataset_label, evaluated_tables, in_background, still_computing, through_app,
                          with_every_method)

through_app()

st.title("ROC / AUROC vs t")
cfg, result, _ = evaluated_tables()
pending = still_computing(cfg, result)  # named on the per-t charts while the rest lands
pending = f" ({pending})" if pending else ""
summary, scores, ood = result.summary, result.scores, cfg.ood[0]
label = dataset_label(checkpoint().data, ood)  # an uploaded set by its files' names, never the server's path
per_t = summary[summary["t"].notna() & summary["metric"].isin(METRICS)]
combined = summary[summary["t"].isna()].set_index("metric")
metrics = [m for m in METRICS if m in set(per_t["metric"])]
png = {"toImageButtonOptions": {"format": "png", "filename": "diffood_auroc"}}
colour = dict(zip(METRICS, ["#4c9be8", "#e8664c", "#5cc98b"]))  # one colour per metric on every chart
best = per_t.loc[per_t["auroc"].idxmax()] if len(per_t) else None

def calls(n) -> str:
    return f"{int(n)} call{'s' * (int(n) != 1)}"


named = [name for name in result.named if name in combined.index]  # every score the evaluation names
cards = st.columns(len(named) + 1)
for col, name in zip(cards, named):
    row = combined.loc[name]
    col.metric(f"{name} · AUROC", f"{row['auroc']:.3f}", help=f"{name} score: {result.named[name].describe()}. "
               f"95 % intervals: AUROC [{row['auroc_lo']:.3f}, {row['auroc_hi']:.3f}] (DeLong), FPR95 "
               f"[{row['fpr95_lo']:.3f}, {row['fpr95_hi']:.3f}] (bootstrap)",
               delta=f"[{row['auroc_lo']:.3f}, {row['auroc_hi']:.3f}] · FPR95 {row['fpr95']:.3f} · {calls(row['calls'])}",
               delta_color="off", delta_arrow="off")
if best is not None:
    cards[-1].metric(f"{best['metric']}, t = {int(best['t'])} · AUROC", f"{best['auroc']:.3f}", delta_color="off",
                    delta=f"FPR95 {best['fpr95']:.3f} · {calls(best['calls'])}", delta_arrow="off",
                    help="the best single t, chosen here with the OOD set's labels: an optimistic figure")

RATES = {"auroc": "AUROC", "fpr95": "FPR95", "aupr_in": "AUPR-In", "aupr_out": "AUPR-Out"}
number = {c: st.column_config.NumberColumn(label, format="%.4f") for c, label in RATES.items()}
with_bounds = [c for r in RATES for c in (r, f"{r}_lo", f"{r}_hi")]
number |= {f"{r}_{end}": st.column_config.NumberColumn(f"{label} {end}", format="%.4f")
           for r, label in RATES.items() for end in ("lo", "hi")}
st.dataframe(combined.loc[named, [*with_bounds, "calls"]].rename_axis("score").reset_index(), hide_index=True,
             column_config=number)
differences = [describe_difference(row) for other in named[1:]
               for row in result.compare(DEFAULT, other).query("ood == @ood").to_dict("records")]
st.caption(POSITIVE_CLASS + " Intervals are 95 %: DeLong's for AUROC, a stratified bootstrap (1000 resamples) for "
           "the others. Paired AUROC differences on the same images (paired DeLong): " + "; ".join(differences) + ".")

fig = go.Figure()
for m in metrics:
    rows = per_t[per_t["metric"] == m].sort_values("t")
    fig.add_scatter(x=[*rows["t"], *rows["t"][::-1]], y=[*rows["auroc_hi"], *rows["auroc_lo"][::-1]], fill="toself",
                    fillcolor=colour[m], opacity=0.2, line_width=0, hoverinfo="skip", showlegend=False,
                    name=f"{m}: 95 % interval")
    fig.add_scatter(x=rows["t"], y=rows["auroc"], mode="lines+markers", name=m, line_color=colour[m])
    top = rows.loc[rows["auroc"].idxmax()]
    fig.add_scatter(x=[top["t"]], y=[top["auroc"]], mode="markers", marker=dict(symbol="star", size=16, color=colour[m]),
                    name=f"best {m}: t={int(top['t'])}, {top['auroc']:.3f}")
for name, dash in ((DEFAULT, "solid"), (MULTI_T, "dash")):
    if name in combined.index:
        fig.add_hline(y=float(combined.loc[name, "auroc"]), line_dash=dash, line_color="#f0a43a" if name == DEFAULT else "gray",
                      annotation_text=f"{name}: {float(combined.loc[name, 'auroc']):.3f}",
                      annotation_position="top right" if name == DEFAULT else "bottom right")
fig.add_hline(y=0.5, line_dash="dot", line_color="gray", annotation_text="chance")
fig.update_layout(title=f"AUROC vs t: {checkpoint().data.label} vs {label}{pending}", xaxis_title="t", yaxis_title="AUROC", yaxis_range=[0, 1.02])
st.plotly_chart(fig, config=png)

fig = go.Figure()
for m in metrics:
    rows = per_t[per_t["metric"] == m].sort_values("t")
    fig.add_scatter(x=rows["t"], y=rows["fpr95"], mode="lines+markers", name=m, line_color=colour[m])
for name, dash in ((DEFAULT, "solid"), (MULTI_T, "dash")):
    if name in combined.index:
        fig.add_hline(y=float(combined.loc[name, "fpr95"]), line_dash=dash, annotation_text=name)
fig.update_layout(title=f"FPR at 95 % TPR vs t (lower is better){pending}", xaxis_title="t", yaxis_title="FPR95", yaxis_range=[0, 1.02])
st.plotly_chart(fig, config=png)

knn = result.features
if knn is not None:
    st.subheader("The feature score against its noise level")
    curve = in_background(replace(cfg, feature_ts=FEATURE_CURVE_TS), button="Compute the feature curve")
    if curve is not None:
        rows = curve.summary[(curve.summary["metric"] == knn.metric) & (curve.summary["ood"] == ood)].sort_values("t")
        chosen = rows[rows["t"] == knn.t]
        fig = go.Figure()
        for rate, name, line in (("auroc", "AUROC", "#f0a43a"), ("fpr95", "FPR95", "#4c9be8")):
            fig.add_scatter(x=rows["t"], y=rows[rate], mode="lines+markers", name=name, line_color=line)
            fig.add_scatter(x=chosen["t"], y=chosen[rate], mode="markers", showlegend=False,
                            marker=dict(symbol="star", size=16, color=line))
        feature = combined.loc[FEATURES if FEATURES in combined.index else DEFAULT]
        if knn.draws > 1:  # the curve is one draw per t_f; the feature term averages several at its own
            fig.add_scatter(x=[knn.t], y=[feature["auroc"]], mode="markers", name=f"{knn.draws} draws: AUROC",
                            marker=dict(symbol="diamond", size=12, color="#f0a43a"))
        fig.add_vline(x=knn.t, line_dash="dash", annotation_text=f"chosen t_f = {knn.t}")
        fig.update_layout(title=f"Feature score vs t_f: {checkpoint().data.label} vs {label}", xaxis_title="t_f",
                          xaxis_type="log", yaxis_range=[0, 1.02])
        st.plotly_chart(fig, config=png)
        one = replace(knn, draws=1).describe().replace(f"t = {knn.t}", "t = t_f")
        st.caption(f"One network call per image at each t_f: {one}, with a bank of the same training images embedded "
                   f"at that t_f. The star is the chosen t_f" + (
                       ", where the AUROC is the feature term's." if knn.draws == 1 else
                       f"; there the feature term averages {knn.draws} draws ({calls(knn.draws)} per image): AUROC "
                       f"{feature['auroc']:.3f}, FPR95 {feature['fpr95']:.3f} (the diamond)."))

st.subheader("Every method, side by side")
every = in_background(with_every_method(cfg), button="Compute every method")
if every is not None:
    table = method_table(every.summary, ood)
    st.dataframe(table.assign(described=[every.named[n].describe() if n in every.named else "" for n in table["score"]]),
                 hide_index=True, column_config=number | {"pareto": st.column_config.CheckboxColumn("Pareto front")})
    fig = go.Figure()
    fig.add_scatter(x=table["calls"], y=table["auroc"], mode="markers+text", text=table["score"],
                    textposition="top center", name="diffood, this model",
                    error_y=dict(type="data", symmetric=False, array=table["auroc_hi"] - table["auroc"],
                                 arrayminus=table["auroc"] - table["auroc_lo"]))
    front = table[table["pareto"]]
    fig.add_scatter(x=front["calls"], y=front["auroc"], mode="lines", line=dict(shape="hv", dash="dash"),
                    name="Pareto front")
    for p in published(checkpoint().data.name, ood):
        fig.add_hline(y=p.auroc, line_dash="dot", line_color="gray",
                      annotation_text=f"published: {p.method} {p.auroc:.3f} ({p.paper}; {p.model})")
    fig.update_layout(title=f"AUROC against network calls per image: {checkpoint().data.label} vs {label}",
                      xaxis_title="network calls per image", xaxis_type="log", yaxis_title="AUROC",
                      yaxis_range=[0, 1.02])
    st.plotly_chart(fig, config={"toImageButtonOptions": {"format": "png", "filename": "diffood_methods"}})
    st.caption("Every method on the same model, images and protocol; the bars are 95 % DeLong intervals. Dotted "
               "lines are figures the papers published on their own models, for reference, not computed here.")

st.subheader("ROC curves")
c1, c2 = st.columns(2)
single = scores[scores["draw"] == 0]
ts = sorted(single["t"].unique())
options = [*result.named, *metrics]
chosen_m = c1.multiselect("Scores", options, default=[*(n for n in (DEFAULT, RECONSTRUCTION, MULTI_T) if n in result.named),
                                                     *([best["metric"]] if best is not None else [])],
                          key="roc_metrics")
chosen_t = c2.multiselect("t (for single-t scores)", ts, default=[int(best["t"])] if best is not None else ts[-1:],
                          key="roc_ts")
fig = go.Figure()
for m in chosen_m:
    if m in result.named:
        s = result.score_frame(m, ["role"])
        curves = [(m, s.loc[s["role"] == "id", "score"], s.loc[s["role"] == "ood", "score"])]
    else:
        curves = [(f"{m}, t={t}", single.loc[(single["role"] == "id") & (single["t"] == t), m],
                   single.loc[(single["role"] == "ood") & (single["t"] == t), m]) for t in chosen_t]
    for name, a, b in curves:
        fpr, tpr, _ = roc_curve(a, b)
        fig.add_scatter(x=fpr, y=tpr, mode="lines", name=name)
fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="gray"), name="chance")
fig.update_layout(title="ROC (OOD = positive)", xaxis_title="false positive rate (ID flagged)",
                  yaxis_title="true positive rate (OOD flagged)")
st.plotly_chart(fig, config={"toImageButtonOptions": {"format": "png", "filename": "diffood_roc"}})

st.subheader("Table")
shown = summary.assign(ood=summary["ood"].map(lambda name: dataset_label(checkpoint().data, name)))
st.dataframe(shown, hide_index=True, column_config=number)
st.download_button("Download CSV", shown.to_csv(index=False), file_name="diffood_summary.csv", mime="text/csv")
