"""Score your image: any upload (or a built-in example), preprocessed like the training data,
reconstructed, scored and placed against the ID distribution with a verdict."""

import io

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch
from PIL import Image

from app_pages.common import checkpoint, eval_config, evaluation, load_model, lpips_net, to_display
from diffood.data import ID_DATASET, load_images, load_user_image, to_pixels
from diffood.diffusion import make_scheduler, reconstruct
from diffood.errors import DiffoodError
from diffood.scoring import noise_for
from diffood.verdict import TARGET_TPR, Reference, judge

TYPES = ["png", "jpg", "jpeg", "bmp", "gif", "webp", "tiff", "tif"]

st.title("Score your image")
st.caption("Any image works: it is turned to grayscale, its aspect kept, padded to 28 × 28, and inverted when its "
           "background is light, so the object is bright on dark as in FashionMNIST.")


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def example(name: str) -> bytes:
    if name == "noise":
        return _png(load_images("uniform", "test", 1, seed=0)[0].numpy())
    dataset = ID_DATASET if name.startswith("FashionMNIST") else "mnist"
    return _png(load_images(dataset, "test", 1, seed=0)[0].numpy())


@st.cache_data(show_spinner="Reconstructing and scoring…", max_entries=64)
def score(data: bytes, invert: bool | None, path: str, sha: str, sampler: str, steps: int, seed: int,
          reference_key: tuple, _reference: Reference):
    ckpt = load_model(path)
    x = load_user_image(data, invert=invert)
    verdict = judge(x, ckpt, _reference, sampler, steps, seed, lpips_net())[0]
    device = next(ckpt.model.parameters()).device
    shown = [_reference.ts[i] for i in np.linspace(0, len(_reference.ts) - 1, min(4, len(_reference.ts))).round().astype(int)]
    recons = {}
    for t in shown:
        _, rec = reconstruct(ckpt.model, x.to(device), t, make_scheduler(), sampler, steps,
                             torch.Generator().manual_seed(seed + t), noise=noise_for(1, t, seed))
        recons[t] = to_display(to_pixels(rec[0]))
    return to_display(to_pixels(x[0]), 6), recons, verdict


ckpt = checkpoint()
s = st.session_state
source = st.radio("Image", ["Upload a file", "Example: FashionMNIST item", "Example: MNIST digit", "Example: noise"],
                  horizontal=True, key="upload_source")
if source == "Upload a file":
    up = st.file_uploader("Image file", type=TYPES, key="upload_file")
    if up is None:
        st.info("Upload an image, or pick an example above.")
        st.stop()
    data, name = up.getvalue(), up.name
else:
    data, name = example(source.split(": ")[1]), source
invert_choice = st.radio("Invert", ["auto (light background → invert)", "never", "always"], horizontal=True, key="upload_invert")
invert = {"never": False, "always": True}.get(invert_choice)

try:
    load_user_image(data, invert=invert)  # a bad file is reported before anything else runs
except DiffoodError as e:
    st.error(f"{name}: {e}")
    st.stop()
result = evaluation(eval_config(reference_only=True))
if result is None:
    st.stop()
reference = Reference.from_result(result)
shown, recons, verdict = score(data, invert, str(ckpt.path), ckpt.sha256, s["sampler"], int(s["steps"]), int(s["seed"]),
                               (reference.ts, reference.threshold), reference)

if verdict.is_ood:
    st.error(f"**{verdict.label[0].upper() + verdict.label[1:]}**: multi-t score {verdict.multi_t:+.2f} is above the threshold "
             f"{verdict.threshold:+.2f}; higher than {verdict.percentile:.1f} % of ID validation images.")
else:
    st.success(f"**{verdict.label[0].upper() + verdict.label[1:]}**: multi-t score {verdict.multi_t:+.2f} is at or below the threshold "
               f"{verdict.threshold:+.2f}; higher than {verdict.percentile:.1f} % of ID validation images.")
st.caption(f"The threshold accepts {TARGET_TPR:.0%} of the {len(reference.val_multi_t)} FashionMNIST validation images "
           f"(95 % TPR). multi-t = mean over t = {', '.join(map(str, reference.ts))} of the z-scored MSE and LPIPS.")

cols = st.columns(1 + len(recons))
cols[0].image(shown, caption="input, as the model sees it (28 × 28)")
for col, (t, img) in zip(cols[1:], recons.items()):
    col.image(img, caption=f"reconstruction from t = {t}", width=168)

left, right = st.columns(2)
with left:
    st.dataframe(verdict.per_t[["t", "mse", "lpips", "z_mse", "z_lpips"]], hide_index=True,
                 column_config={c: st.column_config.NumberColumn(format="%.4f") for c in ["mse", "lpips", "z_mse", "z_lpips"]})
with right:
    fig = go.Figure()
    fig.add_histogram(x=reference.val_multi_t, name="FashionMNIST validation", nbinsx=40, opacity=0.7)
    fig.add_vline(x=verdict.threshold, line_dash="dash", annotation_text="threshold")
    fig.add_vline(x=verdict.multi_t, line_color="red", line_width=3, annotation_text="this image")
    fig.update_layout(title="Where this image lands among ID images", xaxis_title="multi-t score", height=320,
                      showlegend=False, margin=dict(t=50, b=30))
    st.plotly_chart(fig)
