"""End to end in a real browser: JupyterLab on localhost, headless Chromium driven by Playwright, runs the quickstart
tutorial, moves a slider of its face-part explorer and checks from screenshots that the face image changed.

Needs Debian's chromium (/usr/bin/chromium), JupyterLab and Playwright (dev requirements). Locally it is skipped when
one is missing; `.ci/run` installs them and sets DISENTANGLE_BROWSER_TEST=required, so in CI a missing piece fails."""
from __future__ import annotations
import io, os, secrets, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def missing_pieces():
    out = []
    if not Path(CHROMIUM).exists(): out.append(f"chromium ({CHROMIUM})")
    for mod in ("playwright", "jupyterlab"):
        try: __import__(mod)
        except ImportError: out.append(mod)
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def wait_for(url, seconds=90):
    t = time.time()
    while time.time() - t < seconds:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200: return
        except Exception: time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer at {url} within {seconds} s")


def pixels(png: bytes) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)


def test_quickstart_explorer_in_jupyterlab(tmp_path):
    gaps = missing_pieces()
    if gaps:
        if os.environ.get("DISENTANGLE_BROWSER_TEST") == "required": pytest.fail(f"browser test: missing {gaps}")
        pytest.skip(f"browser test: missing {gaps}")
    from playwright.sync_api import sync_playwright
    import nbformat
    nb = nbformat.read(REPO / "nbs" / "tutorials" / "quickstart.ipynb", as_version=4)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}   # nbdev_clean strips it
    nbformat.write(nb, tmp_path / "quickstart.ipynb")
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "IN_TEST": "1", "OMP_NUM_THREADS": "1", "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")}
    server = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}", "--ServerApp.ip=127.0.0.1",
                               f"--ServerApp.token={token}", f"--ServerApp.root_dir={tmp_path}", "--LabApp.news_url=", "--ServerApp.disable_check_xsrf=False"],
                              cwd=tmp_path, env=env, stdout=open(tmp_path / "lab.log", "w"), stderr=subprocess.STDOUT)
    try:
        wait_for(f"http://127.0.0.1:{port}/api/status?token={token}")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/lab/tree/quickstart.ipynb?token={token}", wait_until="domcontentloaded")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
            try: page.locator(".jp-Dialog button", has_text="Select").first.click(timeout=20_000)    # the kernel chooser, when asked
            except Exception: pass
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            # the last explorer (method 1 trained here) draws its image when its cell has run
            try: page.wait_for_function("document.querySelectorAll('img.widget-image').length >= 2", timeout=300_000)
            except Exception:
                page.screenshot(path=str(tmp_path / "timeout.png"), full_page=True); raise
            image = page.locator("img.widget-image").last
            image.scroll_into_view_if_needed()
            page.wait_for_timeout(1000)
            before = image.screenshot(path=str(tmp_path / "before.png"))
            donor = page.locator(".widget-hslider", has_text="donor").last
            donor.locator(".noUi-handle").click()
            for _ in range(2): page.keyboard.press("ArrowRight")
            changed, after = 0.0, before
            for _ in range(60):                       # the kernel redraws; poll the picture
                page.wait_for_timeout(500)
                after = image.screenshot()
                a, b = pixels(before), pixels(after)
                changed = float(np.abs(a - b).mean()) if a.shape == b.shape else 255.0
                if changed > 1.0: break
            (tmp_path / "after.png").write_bytes(after)
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            browser.close()
        assert changed > 1.0, f"the explorer's image did not change after moving the donor slider (mean pixel change {changed:.2f}); screenshots in {tmp_path}"
    finally:
        server.terminate()
        try: server.wait(20)
        except subprocess.TimeoutExpired: server.kill()


def test_report_opens_offline(tmp_path):
    "A run's report.html in headless Chromium with every request outside the file refused: nothing fails, the math is rendered, the figure loads."
    gaps = [g for g in missing_pieces() if g != "jupyterlab"]
    if gaps:
        if os.environ.get("DISENTANGLE_BROWSER_TEST") == "required": pytest.fail(f"browser test: missing {gaps}")
        pytest.skip(f"browser test: missing {gaps}")
    from playwright.sync_api import sync_playwright
    from disentangle.cli import make_notebook, run_experiment
    make_notebook([("markdown", "# Offline\n\nThe loss $\\mathcal L = \\beta\\,\\mathrm{KL}(q \\| p)$ and\n$$z_k = W_k \\bar f_k + b_k$$\nnot `$code$`."),
                   ("parameters", "n = 3"),
                   ("code", "import matplotlib.pyplot as plt\nfrom disentangle.core import save_metrics\nplt.plot(range(n)); plt.title('a figure'); plt.show()\n"
                            "save_metrics({'n': n}, 'metrics.json')")], tmp_path / "exp" / "offline.ipynb")
    run = run_experiment("offline", out=tmp_path / "runs", experiments=tmp_path / "exp")
    outside, failed = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(("file:", "data:")) else (outside.append(route.request.url), route.abort()))
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.goto((run / "report.html").as_uri(), wait_until="load")
        page.wait_for_timeout(500)
        text = page.inner_text("body")
        images = page.evaluate("[...document.images].map(i => i.complete && i.naturalWidth > 0)")
        maths = page.evaluate("document.querySelectorAll('math').length")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert not outside and not failed, f"the report asked the network for {outside + failed}"
    assert "$" not in text.replace("$code$", ""), "raw TeX in the report's visible text"
    assert maths == 2 and images and all(images), (maths, images)
