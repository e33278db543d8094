"""The dashboard, driven by Streamlit's AppTest against a tiny random checkpoint."""

import io
import shutil
import threading

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from diffood.jobs import server_jobs
from tests.conftest import DATA_DIR, ROOT, needs_data

pytestmark = needs_data
PAGES = ["pages/reconstruct.py", "pages/histograms.py", "pages/roc.py", "pages/features.py", "pages/upload.py"]


def make_app(checkpoint):
    """The app opened on `checkpoint` (the model picker lists it from the first run on)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=240)
    at.session_state["checkpoint"] = str(checkpoint)
    at.session_state["steps"] = 2
    at.session_state["eval_n"] = 100
    at.session_state["eval_ts"] = [100, 600]
    at.session_state["multi_ts"] = [100, 600]
    return at.run()


@pytest.fixture
def app(tiny_checkpoint):
    return make_app(tiny_checkpoint)


def goto(at, page):
    """AppTest runs a switched-to file in `pages/` alone, as the server answers a deep link before
    app.py has run once; the page then runs app.py, so the sidebar and navigation are there."""
    at.switch_page(page).run()
    assert at.sidebar.header and at.sidebar.header[0].value == "Settings", "the page ran without app.py"
    return at


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]


COMPUTE = ("Compute now", "Compute the rest")


def _computed(at):
    """Press 'Compute now' where the page offers it (settings not evaluated yet), let the server's background
    work finish, and draw the page again."""
    buttons = [b for b in at.button if b.label in COMPUTE]
    if buttons:
        buttons[0].click().run()
    assert server_jobs().wait_all(600)
    at.run()
    _ok(at)
    assert not [b for b in at.button if b.label in COMPUTE]
    return at


def test_every_page_runs_and_the_sidebar_persists(app):
    _ok(app)
    assert any("diffusion model learns" in m.value for m in app.markdown)
    assert any("cpu" in c.value.lower() for c in app.sidebar.caption)
    app.sidebar.selectbox(key="ood").set_value("fashionmnist-vflip").run()
    for page in PAGES:
        goto(app, page)
        _ok(app)
        assert app.session_state["ood"] == "fashionmnist-vflip"  # kept across pages
        assert app.sidebar.selectbox(key="checkpoint").value == app.session_state["checkpoint"]


def test_moving_the_t_slider_changes_the_reconstructions(app):
    goto(app, "pages/reconstruct.py")
    _ok(app)
    assert len(app.get("image")) >= 16

    def summary():
        return [c.value for c in app.caption if c.value.startswith("mean MSE")]

    at_500 = summary()
    app.slider(key="recon_t").set_value(0).run()
    at_0 = summary()
    assert at_0 != at_500 and all("mean MSE 0.0000" in s for s in at_0)  # t = 0 returns the input
    app.slider(key="recon_t").set_value(900).run()
    assert summary() not in (at_0, at_500)


def test_histograms_switch_metric_threshold_and_ood_set(app):
    goto(app, "pages/histograms.py")
    _computed(app)
    charts = app.get("plotly_chart")
    assert len(charts) == 1
    title = lambda: app.get("plotly_chart")[0].proto.spec  # noqa: E731
    first = title()
    assert "default score" in first  # the default score is what the page opens with
    app.radio(key="hist_metric").set_value("multi-t").run()
    _ok(app)
    assert title() != first and "multi-t" in title()
    app.radio(key="hist_metric").set_value("mse").run()
    _ok(app)
    assert "mse at t = 700" in title()  # the t nearest 700 among those scored (700: the default score's)
    fpr_before = [m.value for m in app.metric]
    app.slider[0].set_value(app.slider[0].max).run()  # everything accepted
    assert [m.value for m in app.metric][:2] == ["100.0%", "100.0%"] and [m.value for m in app.metric] != fpr_before
    app.sidebar.selectbox(key="ood").set_value("uniform").run()
    _computed(app)
    assert "uniform" in app.get("plotly_chart")[0].proto.spec


def test_roc_page_draws_curves_and_offers_the_table(app):
    goto(app, "pages/roc.py")
    _computed(app)
    assert len(app.get("plotly_chart")) == 3
    scores, table = app.dataframe[0].value, app.dataframe[-1].value
    assert {"multi-t", "default"} <= set(scores["score"]) and {"aupr_in", "aupr_out"} <= set(scores.columns)
    assert (scores["auroc_lo"] <= scores["auroc"]).all() and (scores["auroc"] <= scores["auroc_hi"]).all()
    assert any("default vs multi-t:" in c.value and "paired DeLong" in c.value for c in app.caption)
    band = [t for t in app.get("plotly_chart")[0].proto.spec.split('"name"') if "95 % interval" in t]
    assert band  # the per-t AUROC curves carry their interval band
    assert {"mse", "lpips", "mse+lpips", "multi-t", "default"} <= set(table["metric"])
    assert {"auroc", "fpr95", "aupr_in", "aupr_out"} <= set(table.columns)
    assert any("AUPR-In" in c.value for c in app.caption)
    cards = [m.label for m in app.metric]  # the default score, multi-t and the best single t side by side
    assert cards[0].startswith("default") and cards[1].startswith("multi-t") and cards[2].endswith("· AUROC")
    assert app.metric[2].help.startswith("the best single t")
    assert any(b.label == "Download CSV" for b in app.get("download_button"))


def _png(color_bg=255):
    img = Image.new("L", (60, 40), color_bg)
    img.paste(255 - color_bg, (20, 5, 40, 35))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_upload_scores_examples_and_files_and_survives_bad_ones(app):
    goto(app, "pages/upload.py")
    _ok(app)
    app.radio(key="upload_source").set_value("Example: noise").run()
    _computed(app)
    verdicts = [e.value for e in app.success] + [e.value for e in app.error]
    assert len(verdicts) == 1 and "threshold" in verdicts[0]

    app.radio(key="upload_source").set_value("Upload files").run()
    app.file_uploader(key="upload_file").set_value(("shirt.png", _png(), "image/png")).run()
    _ok(app)
    assert len(app.success) + len(app.error) == 1 and "score" in (list(app.success) + list(app.error))[0].value
    assert len(app.dataframe) == 1 and len(app.dataframe[0].value) == 1  # one row per t of the default score

    app.file_uploader(key="upload_file").set_value(("notes.png", b"not really a png", "image/png")).run()
    _ok(app)
    assert [e.value for e in app.error] == ["notes.png: not a readable image (UnidentifiedImageError)"]
    # the app keeps working after the bad file
    app.file_uploader(key="upload_file").set_value(("dark.png", _png(0), "image/png")).run()
    _ok(app)
    assert not any("not a readable image" in e.value for e in app.error)


def _zip(entries):
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_upload_scores_many_files_and_archives_and_lists_the_bad_ones(app):
    from diffood.images import MAX_UPLOAD_BYTES

    goto(app, "pages/upload.py")
    app.radio(key="upload_source").set_value("Upload files").run()
    archive = _zip({"a.png": _png(), "b.png": _png(0), "notes.txt": b"hello", "huge.png": bytes(MAX_UPLOAD_BYTES + 1)})
    app.file_uploader(key="upload_file").set_value([("batch.zip", archive, "application/zip"),
                                                    ("single.png", _png(), "image/png")]).run()
    _computed(app)
    table = app.dataframe[0].value
    assert sorted(table["file"]) == ["batch.zip/a.png", "batch.zip/b.png", "single.png"]
    assert set(table["verdict"]) <= {"looks in-distribution", "likely OOD"}
    warning = app.warning[0].value
    assert "2 files were not scored" in warning and "batch.zip/notes.txt" in warning and "batch.zip/huge.png" in warning
    assert any(b.label == "Download CSV" for b in app.get("download_button"))
    assert len(app.get("plotly_chart")) == 1  # every image marked on the ID histogram


def test_a_damaged_cached_table_is_a_warning_and_a_compute_button(app):
    goto(app, "pages/histograms.py")
    _computed(app)
    from diffood.evaluate import default_cache_dir

    for table in default_cache_dir().glob("*.csv.gz"):
        table.write_bytes(b"\x1f\x8b truncated")
    goto(app, "pages/roc.py")
    _ok(app)
    assert any("unreadable score table" in w.value for w in app.warning)
    _computed(app)
    assert len(app.get("plotly_chart")) == 3


@pytest.fixture
def banked_checkpoint(tiny_checkpoint, tmp_path):
    from diffood.features import BANK_NAME, FeatureSpec, build_bank
    from diffood.model import load_checkpoint

    folder = shutil.copytree(tiny_checkpoint, tmp_path / "banked")
    build_bank(load_checkpoint(folder, precision="fp32"), FeatureSpec("mid_block", 50), n=64).save(folder / BANK_NAME)
    return folder


@pytest.mark.parametrize("model", ["fashionmnist", "mnist"])
def test_home_names_each_shipped_models_own_default_score(model):
    from diffood.model import SHIPPED_MODELS, load_checkpoint
    from diffood.scores import Pick

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["checkpoint"] = str(SHIPPED_MODELS[model])
    at.run()
    _ok(at)
    pick = Pick.of(load_checkpoint(model))
    text = " ".join(m.value for m in at.markdown)
    assert f"This model's: {pick.default.describe()};" in text and f"{pick.calls} network call" in text


def test_without_a_bank_the_pages_say_the_default_is_reconstruction_only(app):
    goto(app, "pages/roc.py")
    _computed(app)
    assert any("has no feature bank" in i.value for i in app.info)


def test_with_a_feature_bank_the_pages_show_both_terms_and_the_nearest_id_images(banked_checkpoint):
    app = make_app(banked_checkpoint)
    goto(app, "pages/roc.py")
    _computed(app)
    labels = [m.label for m in app.metric]
    assert labels[:4] == ["default · AUROC", "reconstruction · AUROC", "both · AUROC", "multi-t · AUROC"]
    assert "nearest of 64 ID training images" in app.metric[0].help
    goto(app, "pages/histograms.py")
    assert app.radio(key="hist_metric").options[:4] == ["default", "reconstruction", "both", "multi-t"]
    goto(app, "pages/upload.py")
    app.radio(key="upload_source").set_value("Example: mnist image").run()
    _computed(app)
    assert [h.value for h in app.subheader] == ["Why this verdict", "Every method on this image"]
    evidence = " ".join(m.value for m in app.markdown)
    assert "nearest ID training images in the model's own feature space" in evidence
    assert "the reconstruction score alone says" in evidence
    captions = [img.proto.imgs[0].caption for img in app.get("image")]
    assert [c.split(":")[0] for c in captions if c.startswith("#")] == ["#1", "#2", "#3", "#4", "#5"]
    assert not any("Distances only" in c.value for c in app.caption)


def test_a_bad_checkpoint_is_a_message_not_a_traceback(tmp_path):
    app = make_app(tmp_path / "nowhere")
    for page in ["pages/home.py", *PAGES]:
        goto(app, page)
        _ok(app)
        assert any("checkpoint folder not found" in e.value for e in app.error)


@pytest.mark.parametrize("path", ["/", "/proc", "/proc/1/cwd", "/no/such/folder", "/etc/hostname"])
def test_a_server_path_that_is_no_image_folder_is_one_line(app, path):
    goto(app, "pages/reconstruct.py")
    app.sidebar.text_input(key="ood_folder").input(path).run()
    _ok(app)
    shown = [e.value for e in app.error]  # the sidebar's and the page's
    assert len(shown) == 1 and path in shown[0], shown
    assert "Traceback" not in shown[0] and "pages/" not in shown[0]
    assert app.slider(key="recon_t")  # the rest of the page works


def test_off_loopback_server_paths_are_refused_and_an_uploaded_set_is_used(app, monkeypatch, tmp_path):
    import zipfile

    from streamlit import config

    monkeypatch.delenv("DIFFOOD_ALLOWED_ROOTS", raising=False)
    previous = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")
    try:
        goto(app, "pages/reconstruct.py")
        app.sidebar.text_input(key="ood_folder").input("/usr/share").run()
        _ok(app)
        [line] = [e.value for e in app.sidebar.error]
        assert "/usr/share" in line and "DIFFOOD_ALLOWED_ROOTS" in line
        assert app.sidebar.selectbox(key="ood").value != "/usr/share"
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for i in range(6):
                z.writestr(f"set/{i}.png", _png(40 * i))
            z.writestr("set/readme.txt", "not an image")
        uploader = [u for u in app.sidebar.get("file_uploader") if u.label.startswith("Or upload an OOD set")][0]
        uploader.set_value(("mine.zip", buf.getvalue(), "application/zip")).run()
        _ok(app)
        chosen = app.sidebar.selectbox(key="ood").value
        assert "upload-" in chosen and not app.sidebar.error
        [label] = [h.value for h in app.subheader if "uploaded mine.zip" in h.value]
        assert "6 images" in label and len(app.image) == 8 + 6  # 8 ID rows, and all 6 uploaded images
        goto(app, "pages/histograms.py")
        _computed(app)
        assert app.get("plotly_chart")
        folder = chosen.rstrip("/").rsplit("/", 1)[-1]  # upload-<sha>: the server's cache folder
        for page in PAGES:
            _computed(goto(app, page))
            text = _page_text(app)
            assert "mine.zip" in text or page in ("pages/reconstruct.py", "pages/upload.py"), page
            assert folder not in text and str(tmp_path) not in text, page  # named by its label, never its path
    finally:
        config.set_option("server.address", previous)


def _page_text(at) -> str:
    """Everything a visitor of the page can read: text elements, selectable options, tables and charts."""
    parts = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "info", "warning", "error", "success", "text",
                 "metric"):
        parts += [str(getattr(e, "value", "")) + str(getattr(e, "label", "")) for e in at.get(kind)]
        parts += [str(getattr(e, "value", "")) for e in at.sidebar.get(kind)]
    for box in [*at.selectbox, *at.sidebar.selectbox, *at.multiselect, *at.radio]:
        parts += [str(o) for o in box.options]
    parts += [d.value.to_csv() for d in at.dataframe]
    parts += [c.proto.spec for c in at.get("plotly_chart")]
    return "\n".join(parts)


def _plotly_array(value):
    """A plotly figure's array from its JSON: a list, or base64 bytes with their dtype."""
    import base64

    import numpy as np

    return np.frombuffer(base64.b64decode(value["bdata"]), value["dtype"]) if isinstance(value, dict) else np.asarray(value)


def test_the_feature_space_page_maps_id_ood_and_bank_by_pca_and_tsne(banked_checkpoint):
    at = make_app(banked_checkpoint)
    goto(at, "pages/features.py")
    _computed(at)
    [chart] = at.get("plotly_chart")
    import json

    figure = json.loads(chart.proto.spec)
    names = [trace["name"] for trace in figure["data"]]
    assert len(names) == 3 and names[0].endswith("(ID)") and names[1].endswith("(OOD)") and "feature bank" in names[2]
    sizes = [len(_plotly_array(trace["x"])) for trace in figure["data"]]
    assert sizes == [100, 100, 64], sizes  # 100 ID and OOD images (n = 100 here), all 64 rows of the bank
    at.radio(key="map_colour").set_value("score").run()
    _ok(at)
    marker = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]["marker"]
    assert "colorscale" in marker and len(_plotly_array(marker["color"])) == 100  # each ID image by its score
    at.radio(key="map_colour").set_value("set").run()
    at.radio(key="map_method").set_value("t-SNE").run()
    _ok(at)
    assert "t-SNE" in json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["title"]["text"]
    assert any("Select points" in i.value for i in at.info)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["fashionmnist", "mnist"])
def test_the_feature_space_page_opens_offline_with_each_shipped_model(model, tmp_path, monkeypatch):
    import json

    from diffood.model import SHIPPED_MODELS

    monkeypatch.setenv("DIFFOOD_DATA_DIR", str(tmp_path))  # no data: the shipped sample and tables only
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=240)
    at.session_state["checkpoint"] = str(SHIPPED_MODELS[model])
    at.run()
    goto(at, "pages/features.py")
    _ok(at)
    assert not [b for b in at.button if b.label == "Compute now"]
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert [len(_plotly_array(t["x"])) for t in figure["data"]] == [250, 250, 250]


@pytest.mark.slow
def shipped_roc_page(name, tmp_path, monkeypatch):
    """The ROC page on a shipped model with no data folder (the shipped sample and tables only), opened with
    nothing to compute."""
    from diffood.model import SHIPPED_MODELS

    monkeypatch.setenv("DIFFOOD_DATA_DIR", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.session_state["checkpoint"] = str(SHIPPED_MODELS[name])
    at.run()
    goto(at, "pages/roc.py")
    _ok(at)
    assert not [b for b in at.button if b.label.startswith("Compute")]
    return at


def test_the_roc_page_shows_the_mnist_models_own_pick_offline(tmp_path, monkeypatch):
    """The MNIST model scores with the pick its own proxies chose (reconstruction and a Gaussian head on its
    features at t_f = 300), from shipped tables; the feature curve marks the t_f its bank holds."""
    import json

    import pandas as pd

    from diffood.model import SHIPPED_MODELS

    at = shipped_roc_page("mnist", tmp_path, monkeypatch)
    assert not any("records no score of its own" in i.value for i in at.info)
    summary = pd.read_csv(SHIPPED_MODELS["mnist"] / "evals" / "summary.csv")
    default = summary[(summary["metric"] == "default") & (summary["ood"] == "fashionmnist")].iloc[0]
    assert at.metric[0].label == "default · AUROC" and at.metric[0].value == f"{default['auroc']:.3f}"
    assert "Mahalanobis distance in mean-pooled up_blocks.0" in at.metric[0].help and "t = 600, 700, 800" in at.metric[0].help
    curve = json.loads(at.get("plotly_chart")[2].proto.spec)
    assert any(a.get("text") == "chosen t_f = 300" for a in curve["layout"].get("annotations", []))
    assert any("where the AUROC is the feature term's" in c.value for c in at.caption)


def test_without_the_training_images_the_why_view_lists_distances_and_fetches_them_on_a_click(
        banked_checkpoint, tmp_path, monkeypatch):
    from diffood import datasets

    empty = tmp_path / "data"
    empty.mkdir()
    monkeypatch.setenv("DIFFOOD_DATA_DIR", str(empty))
    fetched = []

    def fake_torchvision(name, train, data_dir, download):  # the download, mocked: copies the real files in
        if download:
            fetched.append((name, train))
            shutil.copytree(DATA_DIR / "FashionMNIST", data_dir / "FashionMNIST", dirs_exist_ok=True)
        return real(name, train, data_dir, False)

    real = datasets._torchvision
    monkeypatch.setattr(datasets, "_torchvision", fake_torchvision)
    app = make_app(banked_checkpoint)
    goto(app, "pages/upload.py")
    app.radio(key="upload_source").set_value("Example: noise").run()
    _computed(app)
    assert any("Distances only" in c.value for c in app.caption) and fetched == []  # nothing downloaded unasked
    table = app.dataframe[0].value
    assert list(table["neighbour"]) == [1, 2, 3, 4, 5] and table["distance"].is_monotonic_increasing
    [button] = [b for b in app.button if b.label.startswith("Download FashionMNIST")]
    button.click().run()
    _ok(app)
    assert sorted(fetched) == [("fashionmnist", False), ("fashionmnist", True)]
    captions = [img.proto.imgs[0].caption for img in app.get("image")]
    assert [c.split(":")[0] for c in captions if c.startswith("#")] == ["#1", "#2", "#3", "#4", "#5"]


def test_every_method_side_by_side_offline_on_the_shipped_model(tmp_path, monkeypatch):
    """The ROC page's method comparison on the shipped FashionMNIST model, from shipped tables: a row per method
    with its calls, the Pareto front, and the published figures marked as such; Score your image gives one
    image's score and percentile by every method."""
    import json

    at = shipped_roc_page("fashionmnist", tmp_path, monkeypatch)
    [table] = [d.value for d in at.dataframe if "pareto" in d.value.columns]
    assert {"diffpath-6d", "diffpath-1d", "msma", "gaussian", "gaussian-diagonal", "likelihood"} <= set(table["score"])
    assert list(table["calls"]) == sorted(table["calls"])
    best_so_far = table["auroc"].cummax().shift(fill_value=-1)
    assert list(table["pareto"]) == list(table["auroc"] > best_so_far)
    assert table.set_index("score").loc["likelihood", "auroc"] < 0.2  # MNIST is *more* likely (Nalisnick et al.)
    [chart] = [json.loads(c.proto.spec) for c in at.get("plotly_chart")
               if "AUROC against network calls" in json.loads(c.proto.spec)["layout"]["title"]["text"]]
    assert chart["layout"]["xaxis"]["type"] == "log"
    notes = [a["text"] for a in chart["layout"]["annotations"]]
    assert any(n.startswith("published: DiffPath 0.991 (Heng, Thiery & Soh, NeurIPS 2024") for n in notes)

    goto(at, "pages/upload.py")
    at.radio(key="upload_source").set_value("Example: mnist image").run()
    _ok(at)
    [every] = [d.value for d in at.dataframe if "percentile" in d.value.columns and "calls" in d.value.columns]
    names = {n for n in every["score"]}
    assert {"default", "msma", "diffpath-6d", "likelihood", "gaussian"} <= names
    assert every["percentile"].between(0, 100).all()
    assert (every["verdict"] == np.where(every["value"] > every["threshold"], "likely OOD", "looks in-distribution")).all()


def _captions(at) -> list[str]:
    """The captions of the images the page shows, in order."""
    return [caption for image in at.image for caption in image.captions]


def test_the_hardest_cases_are_the_images_on_the_wrong_side_and_a_bin_lists_its_images(app, tiny_checkpoint):
    from diffood.evaluate import EvalConfig, evaluate
    from diffood.model import load_checkpoint

    goto(app, "pages/histograms.py")
    _computed(app)
    ckpt = load_checkpoint(tiny_checkpoint, device="cpu")
    result = evaluate(EvalConfig(checkpoint=str(tiny_checkpoint), ts=(100, 600), multi_ts=(100, 600), steps=2, n=100,
                                 device="cpu"), ckpt)  # the page's evaluation, read from the same cache
    frame = result.score_frame("default")
    frame = frame[frame["role"].isin(["id", "ood"])]  # the test images and the OOD set's
    ids, oods = frame[frame["role"] == "id"], frame[frame["role"] == "ood"]
    slider = next(s for s in app.slider if s.label.startswith("Threshold"))
    thr = float(np.quantile(ids["score"], 0.9))  # about 10 false alarms
    slider.set_value(thr).run()
    _ok(app)
    thr = next(s for s in app.slider if s.label.startswith("Threshold")).value
    alarms = ids[ids["score"] > thr].sort_values("score", ascending=False)
    misses = oods[oods["score"] <= thr].sort_values("score")
    counts = {m.value.split(":")[0].strip("*"): int(m.value.rsplit(": ", 1)[1].split("*")[0]) for m in app.markdown
              if m.value.startswith(("**False alarms", "**Misses"))}
    assert counts == {"False alarms": len(alarms), "Misses": len(misses)}
    shown = [c.split(":")[0].rsplit("#", 1)[1] for c in _captions(app)]
    expected = [str(i) for i in [*alarms["index"][:12], *misses["index"][:12]]]
    assert shown == expected and len(alarms) > 0  # each list most wrong first
    edges = np.linspace(frame["score"].min(), frame["score"].max(), 61)  # the page's 60 bins
    fullest = int(np.argmax(np.histogram(frame["score"], edges)[0]))
    app.selectbox(key="hist_bin").set_value(fullest).run()
    _ok(app)
    inside = frame[(frame["score"] >= edges[fullest]) & (frame["score"] < edges[fullest + 1])]
    assert any(c.value.startswith(f"{len(inside)} images, highest score first") for c in app.caption)
    listed = [c.split(":")[0].rsplit("#", 1)[1] for c in _captions(app)][len(expected):]
    assert listed == [str(i) for i in inside.sort_values("score", ascending=False)["index"][:24]]
    first = app.selectbox(key="hardest_why").value  # an image of the lists opens its "why"
    assert first.startswith("false alarm") and first.endswith(f"#{alarms['index'].iloc[0]}")
    app.button(key="hardest_open").click().run()
    assert [t.value for t in app.title] == ["Score your image"]
    _computed(goto(app, "pages/upload.py"))  # AppTest's next run is its own page's: go there as the server does
    assert app.radio(key="upload_source").value == first
    assert any("validation images" in m.value for m in [*app.error, *app.success])  # its verdict


def test_on_new_settings_the_default_scores_histogram_comes_first_and_the_rest_arrives_in_the_background(app):
    """A new OOD set: the histogram of the default score is drawn at once, without a click; the rest is computed
    by one background job of the server (the page and the ROC page asking for it share it), drawn when done."""
    jobs = server_jobs()
    gate = threading.Event()  # holds the server's one worker, so that the page's job waits behind it
    jobs.submit("test-gate", "a job ahead", lambda progress: gate.wait(60))
    try:
        goto(app, "pages/histograms.py")
        _ok(app)
        assert not [b for b in app.button if b.label in COMPUTE]
        assert app.radio(key="hist_metric").options == ["default"] and app.get("plotly_chart")
        assert "default score" in app.get("plotly_chart")[0].proto.spec
        [job] = [j for j in jobs.listing() if j.key != "test-gate"]
        assert job.state == "waiting" and any("1 job ahead" in c.value for c in app.caption)
        goto(app, "pages/roc.py")  # the same settings on another page: the same job, no second one
        _ok(app)
        assert [j.key for j in jobs.listing()] == ["test-gate", job.key]
    finally:
        gate.set()
    assert job.wait(600) and job.state == "done", job.error
    goto(app, "pages/histograms.py")
    _ok(app)
    assert {"multi-t", "mse"} <= set(app.radio(key="hist_metric").options)
