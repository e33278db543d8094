"""Home: the method in a few lines, the model card, and the way to each page."""

import json

import streamlit as st

from diffood.model import count_parameters
from diffood.scores import Pick
from pages.common import checkpoint, page, through_app

through_app()

st.title("diffood: out-of-distribution detection by diffusion reconstruction")

ckpt = checkpoint()
data = ckpt.data
pick = Pick.of(ckpt)
left, right = st.columns([3, 2])
with left:
    st.markdown(
        f"""
A denoising diffusion model learns **one** distribution: here **{data.label}**
({data.train_images:,} training images, {data.size} × {data.size} px, {'grayscale' if data.channels == 1 else 'RGB'}).
To judge an image we **noise** it to a timestep *t*, let the model **reconstruct** it, and measure how far the
reconstruction lands from the original: pixel MSE plus LPIPS, a perceptual distance on ImageNet
AlexNet features.

* In-distribution images come back close to themselves.
* Out-of-distribution images (here **{data.default_ood}** by default) come back **as {data.label} images**, so
  their error is larger.
* Too small a *t* and everything reconstructs perfectly; too large and nothing of the input is left.
  Averaging the z-scored errors over several *t* (Graham et al., CVPR-W 2023) avoids picking one.
* The same model also judges an image by its **own features**: noised lightly, run through the UNet
  once, an image lands near the training images it resembles.
* The **default score** is chosen among these, reconstruction errors, the field's methods and their
  combinations on proxy OOD sets made from the ID data alone (flipped, inverted, patch-shuffled, noise),
  never on the OOD set it is reported on: `diffood select`, which records its pick in the checkpoint (a
  model without one uses the FashionMNIST model's, and the pages say so). This model's: {pick.default.describe()};
  {pick.calls} network call{'s' * (pick.calls > 1)} per image. The reconstruction score stays beside it. Pick
  another model, or add your own checkpoint, in the sidebar.
"""
    )
    st.page_link(page("reconstruct"), label="Reconstruct: drag *t*, see what the model makes of each image", icon=":material/autorenew:")
    st.page_link(page("histograms"), label="Score histograms: ID vs OOD at one *t*", icon=":material/bar_chart:")
    st.page_link(page("roc"), label="ROC / AUROC vs t: where detection works; the default score, multi-*t* and the best single *t*", icon=":material/show_chart:")
    st.page_link(page("features"), label="Feature space: where ID and OOD images lie for the default score; select to see them",
                 icon=":material/scatter_plot:")
    st.page_link(page("upload"), label="Score your images: upload one, many or a .zip and get verdicts", icon=":material/image_search:")

with right:
    samples = ckpt.path / "samples.png"
    if samples.is_file():
        st.image(str(samples), caption=f"Samples generated from pure noise: what the model believes {data.label} looks like",
                 width="stretch")
    else:
        st.info("This checkpoint has no samples.png.")

st.subheader("Model card")
tr = ckpt.meta.training
card = {
    "Architecture": f"diffusers UNet2DModel, {count_parameters(ckpt.model) / 1e6:.2f} M parameters, "
    f"channels {tuple(ckpt.model.config.block_out_channels)}, blocks {', '.join(ckpt.model.config.down_block_types)}",
    "Schedule": f"{ckpt.meta.beta_schedule} (cosine), T = {ckpt.meta.num_train_timesteps}, {ckpt.meta.prediction_type} prediction",
    "Data": ckpt.meta.training_data or "not recorded",
    "Classes": ", ".join(data.classes) or "none recorded",
    "Uploads": f"fitted to {data.size} × {data.size} {'grayscale' if data.channels == 1 else 'RGB'}, aspect kept"
               + (", inverted when their background is light" if data.invert_uploads else ""),
    "Training": (f"{tr['images_seen']:,} images seen ({tr['epochs']} epochs), final loss {tr['final_loss']}, "
                 f"{tr['wall_time_s'] / 3600:.1f} h on {tr['hardware']}") if tr.get("images_seen") else "not recorded",
    "Checkpoint": f"{ckpt.path} (sha256 {ckpt.sha256[:12]}…)",
}
st.table({"": list(card.keys()), "value": list(card.values())})
with st.expander("diffood.json"):
    st.code(json.dumps(tr, indent=2), language="json")
