"""The dashboard, driven by Streamlit's AppTest against a tiny random checkpoint."""

import io

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT, needs_data

pytestmark = needs_data
PAGES = ["app_pages/reconstruct.py", "app_pages/histograms.py", "app_pages/roc.py", "app_pages/upload.py"]


@pytest.fixture
def app(tiny_checkpoint):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=240)
    at.session_state["checkpoint"] = str(tiny_checkpoint)
    at.session_state["steps"] = 2
    at.session_state["eval_n"] = 100
    at.session_state["eval_ts"] = [100, 600]
    at.session_state["multi_ts"] = [100, 600]
    return at.run()


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]


def _computed(at):
    """Press 'Compute now' where the page offers it (settings not evaluated yet)."""
    buttons = [b for b in at.button if b.label == "Compute now"]
    if buttons:
        buttons[0].click().run()
    _ok(at)
    assert not [b for b in at.button if b.label == "Compute now"]
    return at


def test_every_page_runs_and_the_sidebar_persists(app):
    _ok(app)
    assert any("diffusion model learns" in m.value for m in app.markdown)
    assert any("cpu" in c.value.lower() for c in app.sidebar.caption)
    app.sidebar.selectbox(key="ood").set_value("fashionmnist-vflip").run()
    for page in PAGES:
        app.switch_page(page).run()
        _ok(app)
        assert app.session_state["ood"] == "fashionmnist-vflip"  # kept across pages
        assert app.sidebar.text_input(key="checkpoint").value == app.session_state["checkpoint"]


def test_moving_the_t_slider_changes_the_reconstructions(app):
    app.switch_page("app_pages/reconstruct.py").run()
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
    app.switch_page("app_pages/histograms.py").run()
    _computed(app)
    charts = app.get("plotly_chart")
    assert len(charts) == 1
    title = lambda: app.get("plotly_chart")[0].proto.spec  # noqa: E731
    first = title()
    app.radio(key="hist_metric").set_value("multi-t").run()
    _ok(app)
    assert title() != first and "multi-t" in title()
    fpr_before = [m.value for m in app.metric]
    app.slider[0].set_value(app.slider[0].max).run()  # everything accepted
    assert [m.value for m in app.metric][:2] == ["100.0%", "100.0%"] and [m.value for m in app.metric] != fpr_before
    app.sidebar.selectbox(key="ood").set_value("uniform").run()
    _computed(app)
    assert "uniform" in app.get("plotly_chart")[0].proto.spec


def test_roc_page_draws_curves_and_offers_the_table(app):
    app.switch_page("app_pages/roc.py").run()
    _computed(app)
    assert len(app.get("plotly_chart")) == 3
    table = app.dataframe[0].value
    assert {"mse", "lpips", "mse+lpips", "multi-t"} <= set(table["metric"])
    assert any(b.label == "Download CSV" for b in app.get("download_button"))


def _png(color_bg=255):
    img = Image.new("L", (60, 40), color_bg)
    img.paste(255 - color_bg, (20, 5, 40, 35))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_upload_scores_examples_and_files_and_survives_bad_ones(app):
    app.switch_page("app_pages/upload.py").run()
    _ok(app)
    app.radio(key="upload_source").set_value("Example: noise").run()
    _computed(app)
    verdicts = [e.value for e in app.success] + [e.value for e in app.error]
    assert len(verdicts) == 1 and "threshold" in verdicts[0]

    app.radio(key="upload_source").set_value("Upload a file").run()
    app.file_uploader(key="upload_file").set_value(("shirt.png", _png(), "image/png")).run()
    _ok(app)
    assert len(app.success) + len(app.error) == 1 and "multi-t score" in (list(app.success) + list(app.error))[0].value
    assert len(app.dataframe) == 1 and len(app.dataframe[0].value) == 2  # one row per t

    app.file_uploader(key="upload_file").set_value(("notes.png", b"not really a png", "image/png")).run()
    _ok(app)
    assert [e.value for e in app.error] == ["notes.png: not a readable image (UnidentifiedImageError)"]
    # the app keeps working after the bad file
    app.file_uploader(key="upload_file").set_value(("dark.png", _png(0), "image/png")).run()
    _ok(app)
    assert not any("not a readable image" in e.value for e in app.error)


def test_a_bad_checkpoint_is_a_message_not_a_traceback(app, tmp_path):
    app.session_state["checkpoint"] = str(tmp_path / "nowhere")
    for page in ["app_pages/home.py", *PAGES]:
        app.switch_page(page).run()
        _ok(app)
        assert any("checkpoint folder not found" in e.value for e in app.error)
