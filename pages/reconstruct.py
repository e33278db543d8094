"""Reconstruct: originals, noised inputs, reconstructions and error maps as t moves."""

import streamlit as st
import torch

from diffood.diffusion import noise_for, reconstruct
from diffood.errors import DiffoodError
from diffood.images import to_model_input, to_pixels
from diffood.scoring import reconstruction_errors
from diffood.sets import load_images
from pages.common import checkpoint, dataset_label, heat, load_model, lpips_net, strip, through_app, to_display

through_app()

st.title("Reconstruct")
st.caption("Each row: original · noised x_t · reconstruction · |error| (black = none, white = 1). "
           "The noise is fixed by the seed, so moving t changes only t.")


@st.cache_data(show_spinner=False, max_entries=256)
def reconstructions(path: str, sha: str, dataset: str, n: int, t: int, sampler: str, steps: int, seed: int):
    ckpt = load_model(path)
    device = next(ckpt.model.parameters()).device
    x0 = to_model_input(load_images(dataset, "test", n, seed, id=ckpt.data)).to(device)
    xt, rec = reconstruct(ckpt.model, x0, t, ckpt.scheduler, sampler, steps, torch.Generator().manual_seed(seed + t),
                          noise=noise_for(len(x0), t, seed, x0.shape[1:]), precision=ckpt.precision)
    errors = reconstruction_errors(x0, rec, lpips_net())
    rows = []
    for i in range(len(x0)):
        a, b = to_pixels(x0[i]), to_pixels(rec[i])
        rows.append(strip([to_display(a), to_display(to_pixels(xt[i])), to_display(b), heat((a - b).abs())]))
    return rows, errors


ckpt = checkpoint()
s = st.session_state
n = st.select_slider("Images per set", [4, 8, 12, 16], value=8, key="recon_n")


@st.fragment
def view() -> None:
    t = st.slider("Timestep t (0 = clean, 1000 = pure noise)", 0, 999, 500, step=1, key="recon_t")
    for col, dataset in zip(st.columns(2), [ckpt.data.name, s["ood"]]):
        with col:
            st.subheader(dataset_label(ckpt.data, dataset))
            try:
                rows, err = reconstructions(str(ckpt.path), ckpt.key, dataset, n, t, s["sampler"], int(s["steps"]), int(s["seed"]))
            except DiffoodError as e:
                st.error(str(e))
                continue
            st.caption(f"mean MSE {err['mse'].mean():.4f} · mean LPIPS {err['lpips'].mean():.3f} at t = {t}")
            for i, row in enumerate(rows):
                st.image(row, caption=f"MSE {err['mse'][i]:.4f} · LPIPS {err['lpips'][i]:.3f}")


view()
