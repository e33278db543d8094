"""End to end: the real `streamlit run app.py` on 127.0.0.1, driven in headless Chromium with Playwright.

Uses the shipped checkpoint and an empty data folder, so it also proves the default views need no
download and no data beyond what the repository ships. Screenshots go to a folder the test prints.
"""

import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from diffood.images import MAX_UPLOAD_BYTES
from diffood.model import DEFAULT_CHECKPOINT, SHIPPED_LABELS
from tests.conftest import DATA_DIR, ROOT, needs_data

SHIPPED_OOD = ["mnist", "fashionmnist-vflip", "fashionmnist-hflip", "gaussian-noise", "uniform"]
DEEP_LINKS = {"reconstruct": "mean MSE", "histograms": "ID accepted (TPR)", "roc": "Download CSV",
              "features": "Select points with the box or lasso tool", "upload": "Upload one or more"}

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed"),
    pytest.mark.skipif(not (DEFAULT_CHECKPOINT / "config.json").is_file(), reason="no shipped checkpoint"),
]
TIMEOUT_MS = 240_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp_path_factory, data_dir=None, address: str | None = "127.0.0.1", with_process=False):
    """`streamlit run app.py` on a free port (bound to `address`; None: as the README starts it, the shipped
    config's), an empty data folder (or `data_dir`) and its own cache; yields the URL (on 127.0.0.1, always),
    then stops it and checks its log for tracebacks and warnings."""
    port = _free_port()
    data_dir = data_dir or tmp_path_factory.mktemp("no-data")
    env = {**os.environ, "DIFFOOD_DATA_DIR": str(data_dir), "DIFFOOD_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))}
    for name in ("DIFFOOD_CHECKPOINT", "DIFFOOD_ALLOWED_ROOTS"):
        env.pop(name, None)
    log = open(tmp_path_factory.mktemp("log") / "streamlit.log", "w+")
    bind = ["--server.address", address] if address else []
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), *bind],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        log.seek(0)
        pytest.fail("streamlit did not start:\n" + log.read()[-3000:])
    yield (url, proc) if with_process else url
    proc.terminate()
    proc.wait(timeout=30)
    log.seek(0)
    text = log.read()
    print(f"\nserver log:\n{text[-2000:]}")
    assert "Traceback" not in text, "the server logged a traceback"
    assert not re.search(r"warn|deprecat", text, re.IGNORECASE), "the server logged a warning"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from _start(tmp_path_factory)


@pytest.fixture
def fresh_server(tmp_path_factory):
    yield from _start(tmp_path_factory)


@pytest.fixture
def server_with_data(tmp_path_factory):
    yield from _start(tmp_path_factory, DATA_DIR)


@pytest.fixture(scope="module")
def shots():
    folder = ROOT / "test-artifacts" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


def _page(browser, url, path=""):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{url}/{path}")
    return page


def _settled(page):
    """Wait until Streamlit has finished running the script."""
    page.wait_for_selector('[data-testid="stApp"]')
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=TIMEOUT_MS)
    page.wait_for_function("!document.querySelector('[data-stale=\"true\"]')", timeout=TIMEOUT_MS)  # faded: rerunning
    page.wait_for_timeout(300)


def _uploader(page, label):
    return page.locator('[data-testid="stFileUploader"]').filter(has_text=label).locator('input[type="file"]')


def _png_bytes():
    img = Image.new("RGB", (80, 100), "white")
    img.paste((20, 20, 20), (20, 15, 60, 85))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _zip_bytes():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("clothes/shirt.png", _png_bytes())
        z.writestr("clothes/dark.png", _png_bytes())
        z.writestr("readme.txt", "not an image")
        z.writestr("huge.png", bytes(MAX_UPLOAD_BYTES + 1))  # compresses to almost nothing
    return buf.getvalue()


def _choose(page, box: str, option):
    """Pick `option` (a name or pattern) in the sidebar's selectbox labelled `box`. A rerun that lands between
    opening the list and clicking closes the list again, so open it again until the option is there."""
    select = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').filter(has_text=box)
    choice = page.get_by_role("option", name=option, exact=isinstance(option, str))
    for _ in range(5):
        select.click()
        try:
            choice.click(timeout=15_000)
            break
        except PlaywrightTimeout:
            page.keyboard.press("Escape")
            _settled(page)
    else:
        raise AssertionError(f"{box}: no option {option} after five tries")
    _settled(page)


def _choose_ood(page, name):
    _choose(page, "OOD set", re.compile(f"^{re.escape(name)}:"))


def test_every_page_slider_and_uploads_in_a_real_browser(server, browser, shots):
    page = _page(browser, server)
    _settled(page)
    page.get_by_text("A denoising diffusion model learns").wait_for()
    page.get_by_text("Model card").wait_for()
    page.get_by_text("images seen").wait_for()  # the model card table, from diffood.json
    page.screenshot(path=str(shots / "home.png"), full_page=True)

    page.get_by_role("link", name="Reconstruct", exact=True).click()
    _settled(page)
    page.get_by_text("mean MSE").first.wait_for()
    before = page.get_by_text("mean MSE").first.inner_text()
    slider = page.locator('[data-testid="stSlider"]').filter(has_text="Timestep").get_by_role("slider")
    slider.focus()
    for _ in range(10):
        page.keyboard.press("ArrowRight")
    page.get_by_text("at t = 510").nth(1).wait_for()  # ten steps right of 500, in the ID and the OOD column
    _settled(page)
    assert page.get_by_text("mean MSE").first.inner_text() != before
    page.screenshot(path=str(shots / "reconstruct.png"), full_page=True)

    page.get_by_role("link", name="Score histograms").click()
    _settled(page)
    page.get_by_text("AUROC").first.wait_for()
    page.get_by_text("ID accepted (TPR)").wait_for()
    assert not page.get_by_text("Compute now").count()  # shipped tables: nothing to compute
    page.screenshot(path=str(shots / "histograms.png"), full_page=True)

    page.get_by_role("link", name="ROC / AUROC vs t").click()
    _settled(page)
    page.get_by_text("Download CSV").wait_for()
    page.get_by_text("AUROC vs t").first.wait_for()
    page.screenshot(path=str(shots / "roc.png"), full_page=True)

    page.get_by_role("link", name="Score your image").click()
    _settled(page)
    _uploader(page, "Images or .zip archives").set_input_files(
        files=[{"name": "shirt.png", "mimeType": "image/png", "buffer": _png_bytes()}])
    page.get_by_text("ID validation images.").first.wait_for()
    verdict = page.locator('[data-testid="stAlert"]').first.inner_text()
    assert "looks in-distribution" in verdict.lower() or "likely ood" in verdict.lower()
    page.get_by_text("Its nearest ID training images in the model's own feature space").wait_for()
    page.get_by_text("Distances only: the training images are not on this machine").wait_for()  # no data folder here
    page.get_by_role("button", name="Download FashionMNIST to show these images").wait_for()  # offered, not done
    assert page.locator('[data-testid="stDataFrame"]').count() >= 1  # the five distances, in full

    _uploader(page, "Images or .zip archives").set_input_files(
        files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"just some text"}])
    page.get_by_text("notes.png: not a readable image").wait_for()
    page.screenshot(path=str(shots / "upload-bad-file.png"), full_page=True)

    _uploader(page, "Images or .zip archives").set_input_files(
        files=[{"name": "batch.zip", "mimeType": "application/zip", "buffer": _zip_bytes()},
               {"name": "single.png", "mimeType": "image/png", "buffer": _png_bytes()}])
    page.get_by_text(re.compile(r"\d+ images scored")).wait_for()
    page.screenshot(path=str(shots / "upload-batch.png"), full_page=True)
    page.get_by_text(re.compile(r"\d+ files were not scored")).wait_for()
    page.get_by_text("batch.zip/readme.txt").wait_for()
    page.get_by_text("batch.zip/huge.png").wait_for()
    page.get_by_text("Download CSV").wait_for()
    page.screenshot(path=str(shots / "upload-batch.png"), full_page=True)
    page.close()


@needs_data
def test_an_upload_shows_its_nearest_id_training_images(server_with_data, browser, shots):
    page = _page(browser, server_with_data, "upload")
    _settled(page)
    _uploader(page, "Images or .zip archives").set_input_files(
        files=[{"name": "shirt.png", "mimeType": "image/png", "buffer": _png_bytes()}])
    page.get_by_text("Its nearest ID training images in the model's own feature space").wait_for()
    _settled(page)
    for i in range(1, 6):
        page.get_by_text(re.compile(rf"#{i}: distance 0\.\d{{4}}")).wait_for()
    assert page.locator('[data-testid="stImage"]').filter(has_text="distance").count() == 5
    page.screenshot(path=str(shots / "upload.png"), full_page=True)
    page.close()


def test_each_shipped_ood_set_opens_without_computing(server, browser):
    page = _page(browser, server, "histograms")
    _settled(page)
    for name in SHIPPED_OOD:
        _choose_ood(page, name)
        page.get_by_text("ID accepted (TPR)").wait_for()
        assert not page.get_by_text("Compute now").count(), name
        page.locator('[data-testid="stPlotlyChart"]').get_by_text(f"{name} (OOD)").wait_for()
    page.close()


PAGE_MARKERS = {"Reconstruct": "mean MSE", "Score histograms": "ID accepted (TPR)", "ROC / AUROC vs t": "Download CSV",
                "Feature space": "Select points with the box or lasso tool", "Score your image": "Upload one or more"}


@pytest.mark.parametrize("model", list(SHIPPED_LABELS.values()))
def test_every_page_opens_with_each_shipped_model(server, browser, shots, model):
    page = _page(browser, server)
    _settled(page)
    _choose(page, "Model", f"{model} (shipped)")
    page.get_by_text(f"learns one distribution: here {model} (").wait_for()  # texts from the checkpoint's record
    page.screenshot(path=str(shots / f"home-{model.lower()}.png"), full_page=True)
    for link, marker in PAGE_MARKERS.items():
        page.get_by_role("link", name=link, exact=True).click()
        _settled(page)
        page.get_by_text(marker).first.wait_for()
        assert not page.get_by_text("Compute now").count(), (model, link)  # its shipped tables serve the defaults
        assert not page.get_by_text("Compute the feature curve").count(), (model, link)
        if link == "ROC / AUROC vs t":  # every method side by side, from shipped tables, offline
            page.get_by_text("Dotted lines are figures the papers published").wait_for()
            assert not page.get_by_text("Compute every method").count(), model
    page.close()


def test_a_deep_link_as_the_servers_first_visit_runs_through_app(fresh_server, browser):
    page = _page(browser, fresh_server, "roc")  # before app.py has run once in this server
    _settled(page)
    page.get_by_text("Download CSV").wait_for()
    page.locator('[data-testid="stSidebar"]').get_by_text("Settings").wait_for()
    page.get_by_role("link", name="Score histograms").wait_for()  # st.navigation's menu, not the file list
    page.close()


@pytest.mark.parametrize("path", list(DEEP_LINKS))
def test_deep_links_open_each_page_with_the_sidebar(server, browser, path):
    page = _page(browser, server, path)
    _settled(page)
    page.get_by_text(DEEP_LINKS[path]).first.wait_for()
    page.locator('[data-testid="stSidebar"]').get_by_text("Settings").wait_for()
    page.close()


def test_two_browser_contexts_at_once_both_get_results(server, browser):
    contexts = [browser.new_context(viewport={"width": 1200, "height": 900}) for _ in range(2)]
    pages = [c.new_page() for c in contexts]
    for p in pages:  # both sessions are open and running on the server at the same time
        p.set_default_timeout(TIMEOUT_MS)
        p.goto(f"{server}/reconstruct", wait_until="commit")
    results = []
    for p in pages:
        p.get_by_text("mean MSE").first.wait_for()
        results.append(p.get_by_text("mean MSE").first.inner_text())
    for c in contexts:
        c.close()
    assert all("at t = 500" in r for r in results)
    assert results[0] == results[1]  # same settings, same seed: same numbers


@pytest.fixture
def readme_server(tmp_path_factory):
    yield from _start(tmp_path_factory, address=None, with_process=True)


@pytest.fixture
def open_server(tmp_path_factory):
    """Bound to every interface, with no allowed folders: the tests still connect on 127.0.0.1 alone."""
    yield from _start(tmp_path_factory, address="0.0.0.0")


def test_the_server_started_as_the_readme_says_listens_on_loopback_only(readme_server):
    import ipaddress

    import psutil

    url, proc = readme_server
    listening = [c.laddr for c in psutil.Process(proc.pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening and all(ipaddress.ip_address(a.ip).is_loopback for a in listening), listening
    assert urllib.request.urlopen(f"{url}/_stcore/health", timeout=5).read() == b"ok"


def _type_ood_folder(page, path):
    box = page.locator('[data-testid="stSidebar"] [data-testid="stTextInput"]').filter(has_text="Add an OOD folder")
    box.locator("input").fill(path)
    box.locator("input").press("Enter")
    _settled(page)


def test_server_paths_that_hold_no_images_are_one_line(server, browser, shots):
    page = _page(browser, server, "reconstruct")
    _settled(page)
    for path in ("/", "/proc"):
        _type_ood_folder(page, path)
        page.get_by_text(re.compile(f"^{re.escape(path)} is ")).first.wait_for()
        assert page.locator('[data-testid="stException"]').count() == 0
        assert page.get_by_text("Traceback").count() == 0
        page.get_by_text("mean MSE").first.wait_for()  # the ID column still works
    page.screenshot(path=str(shots / "server-path-refused.png"), full_page=True)
    page.close()


def test_an_open_server_refuses_its_folders_and_takes_an_uploaded_set(open_server, browser, shots):
    page = _page(browser, open_server, "reconstruct")
    _settled(page)
    _type_ood_folder(page, "/usr/share")
    page.get_by_text(re.compile("reading the server's folders is off .* DIFFOOD_ALLOWED_ROOTS")).wait_for()
    assert page.locator('[data-testid="stException"]').count() == 0
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(12):
            z.writestr(f"mine/{i:02d}.png", _png_bytes())
    _uploader(page, "Or upload an OOD set").set_input_files(
        files=[{"name": "mine.zip", "mimeType": "application/zip", "buffer": buf.getvalue()}])
    _settled(page)
    page.get_by_role("heading", name="uploaded mine.zip (12 images)").wait_for()
    page.get_by_text("mean MSE").nth(1).wait_for()  # the uploaded set's column, reconstructed
    _settled(page)
    assert page.locator('[data-testid="stImage"]').count() >= 16  # 8 ID rows and 8 of the uploaded set
    page.screenshot(path=str(shots / "uploaded-ood-set.png"), full_page=True)
    for link, marker in (("Score histograms", "ID accepted (TPR)"), ("ROC / AUROC vs t", "Download CSV")):
        page.get_by_role("link", name=link).click()
        _settled(page)
        compute = page.get_by_role("button", name="Compute now")
        compute.or_(page.get_by_text(marker)).first.wait_for()  # the uploaded set is new: computed on request
        if compute.count():
            compute.click()
            _settled(page)
        page.get_by_text(marker).first.wait_for()
    page.close()


def test_a_box_selection_on_the_feature_map_shows_the_selected_images(server, browser, shots):
    page = _page(browser, server, "features")
    _settled(page)
    page.get_by_text("Select points with the box or lasso tool").wait_for()
    area = page.locator('[data-testid="stPlotlyChart"] .nsewdrag').first
    box = area.bounding_box()
    page.mouse.move(box["x"] + 5, box["y"] + 5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] - 5, box["y"] + box["height"] - 5, steps=12)
    page.mouse.up()
    _settled(page)
    page.get_by_text(re.compile(r"^\d+ selected")).wait_for()
    page.locator('[data-testid="stImage"]').first.wait_for()  # the selected images themselves
    page.get_by_text(re.compile(r"score [+-]\d\.\d{3}")).first.wait_for()
    # their nearest training images: pictured where the training data is at hand, else named (this server has none)
    page.get_by_text(re.compile(r"^nearest training images: #\d+ at \d")).first.wait_for()
    page.screenshot(path=str(shots / "features.png"), full_page=True)
    selected = int(page.get_by_text(re.compile(r"^\d+ selected")).first.inner_text().split()[0])
    with page.expect_download() as download:  # the export: every selected image and its score
        page.get_by_role("button", name=re.compile("^Download the")).click()
    with zipfile.ZipFile(download.value.path()) as z:
        table = pd.read_csv(z.open("selection.csv"), keep_default_na=False)
        assert len(table) == selected and set(z.namelist()) == {"selection.csv", *table["file"]} - {""}
    page.get_by_role("button", name="Mark them on the map").click()  # the 10 most similar, ringed
    _settled(page)
    page.get_by_text(re.compile(r"^Ringed on the map: the 10 points nearest")).wait_for()
    page.locator(".legendtext", has_text="10 most similar to").first.wait_for()
    page.close()


def _letters_zip(n: int) -> bytes:
    """n small images of bars and blocks, nothing like clothing, as one .zip."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(n):
            a = np.zeros((28, 28), np.uint8)
            r, c = rng.integers(2, 20, 2)
            a[r:r + rng.integers(3, 8), :] = 255 if i % 2 else 0
            a[:, c:c + rng.integers(2, 6)] = 200
            png = io.BytesIO()
            Image.fromarray(a).save(png, format="PNG")
            z.writestr(f"letters/{i:03d}.png", png.getvalue())
    return buf.getvalue()


def test_an_uploaded_set_answers_first_and_draws_the_rest_as_it_arrives(fresh_server, browser, shots):
    """A 300-image upload: the default score's histogram without a click; the ROC page's curves partial, then
    complete, computed in the server's background while the threshold moves; no exception anywhere."""
    page = _page(browser, fresh_server, "histograms")
    _settled(page)
    _uploader(page, "Or upload an OOD set").set_input_files(
        files=[{"name": "letters.zip", "mimeType": "application/zip", "buffer": _letters_zip(300)}])
    page.get_by_text("ID accepted (TPR)").first.wait_for()  # the default score's histogram and rates
    assert page.get_by_role("button", name="Compute now").count() == 0
    page.get_by_role("link", name="ROC / AUROC vs t").click()
    page.get_by_text("Computing the rest in the background").first.wait_for()
    page.get_by_text(re.compile(r"AUROC vs t: .* \(t = [\d, ]+: (computing, \d+ %|waiting)\)")).first.wait_for()
    page.screenshot(path=str(shots / "partial-curves.png"), full_page=True)
    page.get_by_role("link", name="Score histograms").click()  # meanwhile: the threshold moves
    page.get_by_text("ID accepted (TPR)").first.wait_for()
    box = page.locator('[data-testid="stSlider"]').filter(has_text="Threshold")
    before = box.inner_text()  # its label, bounds and value
    for _ in range(20):  # a redraw as a piece lands may take the focus: press again until it moves
        box.get_by_role("slider").focus()
        page.keyboard.press("ArrowRight")
        page.wait_for_timeout(500)
        if box.inner_text() != before:
            break
    else:
        page.screenshot(path=str(shots / "threshold-stuck.png"), full_page=True)
        pytest.fail("the threshold did not move while the curves were computed")
    _settled(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    page.get_by_role("link", name="ROC / AUROC vs t").click()
    complete = re.compile(r"AUROC vs t: .*uploaded letters\.zip \(300 images\)$")  # no t left to compute
    page.get_by_text(complete).first.wait_for(timeout=900_000)  # 300 images x 35 calls: minutes on two CPU cores
    _settled(page)
    assert page.get_by_text("Computing the rest in the background").count() == 0
    assert page.locator('[data-testid="stException"]').count() == 0
    page.screenshot(path=str(shots / "complete-curves.png"), full_page=True)
    page.close()
