"""N browser sessions at once against a real `streamlit run app.py` on 127.0.0.1 (loopback only): each
opens the Reconstruct page, moves the t slider, and opens the other pages; repeated for a few rounds.
Reports how long each round takes to settle and the server's resident memory before and after each
round. Bounded: sessions x rounds page loads, each with a timeout; the server is stopped at the end.

    python benchmarks/load.py                     # 6 sessions, 3 rounds, Debian's chromium
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(port: int) -> subprocess.Popen:
    env = {**os.environ, "DIFFOOD_CACHE_DIR": tempfile.mkdtemp(prefix="diffood-load-")}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(120):
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok":
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("streamlit did not start")


def settle(page, timeout_ms: int) -> None:
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout_ms)
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms)
    page.wait_for_function("!document.querySelector('[data-stale=\"true\"]')", timeout=timeout_ms)


def session(url: str, chromium: str, steps: int, timeout_ms: int) -> float:
    """One browser: Reconstruct, `steps` slider moves, then the other pages. Seconds to settle all of it."""
    from playwright.sync_api import sync_playwright

    start = time.perf_counter()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.set_default_timeout(timeout_ms)
        page.goto(f"{url}/reconstruct")
        settle(page, timeout_ms)
        page.get_by_text("mean MSE").first.wait_for()
        slider = page.locator('[data-testid="stSlider"]').filter(has_text="Timestep").get_by_role("slider")
        slider.focus()
        for _ in range(steps):
            page.keyboard.press("PageUp")
            settle(page, timeout_ms)
        for path in ("histograms", "roc", "upload", ""):
            page.goto(f"{url}/{path}")
            settle(page, timeout_ms)
        browser.close()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="slider moves per session")
    p.add_argument("--timeout", type=float, default=240, help="seconds any one wait may take")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "load-cpu.csv"))
    a = p.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = start_server(port)
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        for r in range(a.rounds):
            before = rss_mb(server.pid)
            start = time.perf_counter()
            with ThreadPoolExecutor(a.sessions) as pool:
                times = list(pool.map(lambda _: session(url, a.chromium, a.steps, int(a.timeout * 1000)), range(a.sessions)))
            rows.append({"round": r + 1, "sessions": a.sessions, "wall_s": time.perf_counter() - start,
                         "median_session_s": sorted(times)[len(times) // 2], "max_session_s": max(times),
                         "server_rss_before_mb": before, "server_rss_after_mb": rss_mb(server.pid)})
            print(rows[-1], flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    df = pd.DataFrame(rows)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(a.out, index=False)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
