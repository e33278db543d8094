"""The first answer on something new: a real server and headless Chromium upload a .zip of N images as an OOD set
on the shipped FashionMNIST model, then time (a) until Score histograms draws the default score's histogram and
(b) with --full, until the ROC page is complete (its per-t charts, cards and table), beside (c) the same
evaluation by `diffood evaluate` in a process of its own, with nothing drawn. The upload and its decoding count.
Where a page offers a button instead, it is clicked, as a visitor would. --repo serves several checkouts (this
one and an older commit, say) in turn, --rounds times over, so that before and after share the machine's state;
the table gives each stage's median per checkout.

    python benchmarks/first_answer.py [--n 1000] [--full] [--repo PATH ...] [--rounds R]
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

from common import parser, report
from PIL import Image

from diffood.sets import load_images

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run"]
TIMEOUT_MS = 1_800_000
FIRST, COMPLETE = "(a) first histogram of the default score", "(b) the ROC page complete"
CLI = "(c) the same evaluation by diffood evaluate, nothing drawn"


def archive(n: int, data_dir: str | None) -> bytes:
    """n MNIST test images as PNG files in a .zip."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, image in enumerate(load_images("mnist", "test", n, 0, data_dir)):
            png = io.BytesIO()
            Image.fromarray(image[0].numpy()).save(png, format="PNG")
            z.writestr(f"digits/{i:05d}.png", png.getvalue())
    return buf.getvalue()


def serve(repo: Path, data_dir: str | None, cache: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "DIFFOOD_CACHE_DIR": cache, "PYTHONPATH": str(repo)}
    if data_dir:
        env["DIFFOOD_DATA_DIR"] = data_dir
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1"], cwd=repo, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("streamlit did not start")


def settled(page) -> None:
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=TIMEOUT_MS)
    page.wait_for_function("!document.querySelector('[data-stale=\"true\"]')", timeout=TIMEOUT_MS)


def click_compute(page) -> None:
    """Press the page's compute button where it shows one instead of the chart (what a visitor does)."""
    button = page.get_by_role("button", name="Compute now")
    if button.count():
        button.first.click()


def browser_times(pw, repo: Path, data: bytes, n: int, full: bool, data_dir: str | None) -> dict[str, float]:
    """(a) and, with `full`, (b) for one checkout, on a fresh server with an empty cache."""
    times = {}
    with tempfile.TemporaryDirectory() as cache:
        proc, url = serve(repo, data_dir, cache)
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"{url}/histograms")
            page.get_by_text("ID accepted (TPR)").wait_for()  # the shipped default set, drawn from shipped tables
            settled(page)
            uploader = page.locator('[data-testid="stFileUploader"]').filter(has_text="Or upload an OOD set")
            start = time.perf_counter()
            uploader.locator('input[type="file"]').set_input_files(
                files=[{"name": "digits.zip", "mimeType": "application/zip", "buffer": data}])
            page.get_by_text(f"uploaded digits.zip ({n} images)").first.wait_for()
            settled(page)
            click_compute(page)
            page.locator(".gtitle", has_text="default score").first.wait_for()
            page.get_by_text("ID accepted (TPR)").wait_for()
            times[FIRST] = time.perf_counter() - start
            if full:
                page.get_by_role("link", name="ROC / AUROC vs t").click()
                page.get_by_text("Download CSV").or_(page.get_by_role("button", name="Compute now")).first.wait_for()
                click_compute(page)
                page.get_by_text("Download CSV").first.wait_for()
                page.wait_for_function("!document.body.innerText.includes('Computing the rest in the background')",
                                       timeout=TIMEOUT_MS, polling=500)
                times[COMPLETE] = time.perf_counter() - start
        finally:
            browser.close()
            proc.terminate()
            proc.wait(timeout=30)
    return times


def cli_time(repo: Path, data: bytes, data_dir: str | None) -> float:
    """(c): `diffood evaluate` on the same .zip, in a process of its own, with an empty cache."""
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "digits.zip").write_bytes(data)
        env = {**os.environ, "DIFFOOD_CACHE_DIR": cache, "PYTHONPATH": str(repo),
               **({"DIFFOOD_DATA_DIR": data_dir} if data_dir else {})}
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "diffood", "evaluate", "--ood", str(Path(folder) / "digits.zip"),
                        "--out", str(Path(folder) / "cli")], cwd=repo, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start


def revision(repo: Path) -> str:
    """The checkout's commit, marked -dirty where it has uncommitted changes (then the commit is not what ran)."""
    done = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return done.stdout.strip() or repo.name


def main() -> None:
    from playwright.sync_api import sync_playwright

    p = parser(__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1000, help="images in the uploaded .zip")
    p.add_argument("--full", action="store_true", help="also time the ROC page until it is complete, and (c)")
    p.add_argument("--repo", nargs="+", default=[str(ROOT)], help="the checkouts whose app is served, in turn")
    p.add_argument("--rounds", type=int, default=1, help="times each checkout is measured (medians reported)")
    a = p.parse_args()
    data = archive(a.n, a.data_dir)
    repos = [Path(r).resolve() for r in a.repo]
    seen: dict[tuple[str, Path], list[float]] = {}
    with sync_playwright() as pw:
        for _ in range(a.rounds):
            for repo in repos:  # before and after alternate: a machine that slows down slows both
                for stage, seconds in browser_times(pw, repo, data, a.n, a.full, a.data_dir).items():
                    seen.setdefault((stage, repo), []).append(seconds)
                if a.full:
                    seen.setdefault((CLI, repo), []).append(cli_time(repo, data, a.data_dir))
    rows = [{"stage": stage, "checkout": revision(repo), "images": a.n, "rounds": len(times),
             "seconds": round(statistics.median(times), 1), "min": round(min(times), 1), "max": round(max(times), 1)}
            for (stage, repo), times in seen.items()]
    report(sorted(rows, key=lambda r: r["stage"]), "first_answer", "cpu", a.out)


if __name__ == "__main__":
    main()
