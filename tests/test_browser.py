"""End to end in a real browser: JupyterLab on localhost, headless Chromium driven by Playwright, runs the quickstart
tutorial, moves a slider of its face-part explorer and checks from screenshots that the face image changed.

Needs Debian's chromium (/usr/bin/chromium), JupyterLab and Playwright (dev requirements). Locally it is skipped when
one is missing; `.ci/run` installs them and sets DISENTANGLE_BROWSER_TEST=required, so in CI a missing piece fails."""
from __future__ import annotations
import contextlib, io, os, secrets, socket, subprocess, sys, time, urllib.request
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


def poll_change(page, image, before, tries=60, threshold=1.0):
    "Poll the explorer's picture until it differs from `before` (the kernel redraws): (mean pixel change, the last screenshot)."
    changed, after = 0.0, before
    for _ in range(tries):
        page.wait_for_timeout(500)
        after = image.screenshot()
        a, b = pixels(before), pixels(after)
        changed = float(np.abs(a - b).mean()) if a.shape == b.shape else 255.0
        if changed > threshold: break
    return changed, after


def require_browser(without=()):
    "Skip (locally) or fail (CI: DISENTANGLE_BROWSER_TEST=required) when a piece is missing."
    gaps = [g for g in missing_pieces() if g not in without]
    if gaps:
        if os.environ.get("DISENTANGLE_BROWSER_TEST") == "required": pytest.fail(f"browser test: missing {gaps}")
        pytest.skip(f"browser test: missing {gaps}")


@contextlib.contextmanager
def jupyterlab(root: Path):
    "A JupyterLab server on localhost serving `root` (kernels with IN_TEST=1, one thread): yields (base URL, token)."
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "IN_TEST": "1", "OMP_NUM_THREADS": "1", "JUPYTER_CONFIG_DIR": str(root / "cfg"),
           "JUPYTER_RUNTIME_DIR": str(root / "rt"), "JUPYTERLAB_SETTINGS_DIR": str(root / "settings")}
    news = root / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True, exist_ok=True); news.write_text('{"fetchNews": "false"}')     # no news pop-up over the screenshots
    server = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}", "--ServerApp.ip=127.0.0.1",
                               f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.news_url=", "--ServerApp.disable_check_xsrf=False"],
                              cwd=root, env=env, stdout=open(root / "lab.log", "w"), stderr=subprocess.STDOUT)
    try:
        wait_for(f"http://127.0.0.1:{port}/api/status?token={token}")
        yield f"http://127.0.0.1:{port}", token
    finally:
        server.terminate()
        try: server.wait(20)
        except subprocess.TimeoutExpired: server.kill()


def run_all(page, url: str, ready: str, shot: Path, timeout_ms: int = 300_000):
    "Open the notebook at `url`, run all its cells and wait until the JavaScript condition `ready` holds (a full-page screenshot to `shot` if not)."
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    try: page.locator(".jp-Dialog button", has_text="Select").first.click(timeout=20_000)    # the kernel chooser, when asked
    except Exception: pass
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    try: page.wait_for_function(ready, timeout=timeout_ms)
    except Exception:
        page.screenshot(path=str(shot), full_page=True); raise


CUT_LABELS = """[...document.querySelectorAll('.disentangle-explorer')].flatMap(ex => {
    const panels = ex.querySelector('.disentangle-panels').getBoundingClientRect();
    const edge = ex.closest('.jp-OutputArea-output').getBoundingClientRect().right;
    const hit = r => !(r.right <= panels.left || r.left >= panels.right || r.bottom <= panels.top || r.top >= panels.bottom);
    return [...ex.querySelectorAll('.disentangle-controls :is(.widget-label, .widget-readout, select, button)')]
      .filter(e => e.offsetParent)
      .filter(e => { const r = e.getBoundingClientRect(); return e.scrollWidth > e.clientWidth + 1 || hit(r) || r.right > edge + 1; })
      .map(e => e.textContent || e.value); })"""


def test_quickstart_explorer_in_jupyterlab(tmp_path):
    "The quickstart in JupyterLab: sliders and buttons redraw, a button click presses it, the trained eye swap's metric, labels that fit, a screenshot per explorer."
    artifacts = Path(os.environ.get("DISENTANGLE_TEST_ARTIFACTS") or tmp_path); artifacts.mkdir(parents=True, exist_ok=True)
    require_browser()
    from playwright.sync_api import sync_playwright
    import shutil
    shutil.copy(REPO / "nbs" / "tutorials" / "quickstart.ipynb", tmp_path / "quickstart.ipynb")
    with jupyterlab(tmp_path) as (base, token):
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            # the three explorers (the renderer, the zoo model, one trained here by the last cell) drawn: every cell has run
            run_all(page, f"{base}/lab/tree/quickstart.ipynb?token={token}",
                    "document.querySelectorAll('.disentangle-explorer img.widget-image').length >= 3", tmp_path / "timeout.png")
            image = page.locator("img.widget-image").last
            image.scroll_into_view_if_needed()
            page.wait_for_timeout(1000)
            before = image.screenshot(path=str(tmp_path / "before.png"))
            donor = page.locator(".widget-hslider", has_text="donor").last
            donor.locator(".noUi-handle").click()
            for _ in range(2): page.keyboard.press("ArrowRight")
            changed, after = poll_change(page, image, before)
            (tmp_path / "after.png").write_bytes(after)
            # the zoo model's explorer: the notebook left the eyes swapped; its line reports the locality against the reconstruction
            explorers = page.locator(".disentangle-explorer")       # renderer, zoo model, own model
            box = explorers.nth(1); box.scroll_into_view_if_needed(); image = box.locator("img.widget-image")
            info = box.locator(".widget-html", has_text="change inside the swapped regions").last
            eyes_text = info.inner_text()
            # a click on "swap mouth" presses the button and changes the image
            button = box.locator("button.widget-toggle-button", has_text="swap mouth")
            pressed_before = "mod-active" in (button.get_attribute("class") or "")
            shot = image.screenshot()
            button.click()
            toggled, _ = poll_change(page, image, shot, threshold=0.01)      # a mouth swap moves few pixels (an unchanged picture: exactly 0)
            pressed_after = "mod-active" in (button.get_attribute("class") or "")
            mouth_text = info.inner_text()
            # no control label or button text is cut at this width (1280 px, the screen)
            cut = page.evaluate(CUT_LABELS)
            for k, ex in enumerate(explorers.all()):
                ex.scroll_into_view_if_needed(); ex.screenshot(path=str(artifacts / f"quickstart-explorer-{k}.png"))     # one per explorer
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            browser.close()
        share = lambda t: float(t.split("regions:")[1].split("%")[0])
        assert "eyes 100%" in eyes_text and share(eyes_text) > 50, f"the trained eye swap's line: {eyes_text!r}"
        assert not pressed_before and pressed_after and toggled > 0.01, (pressed_before, pressed_after, toggled)
        assert "mouth 100%" in mouth_text, mouth_text
        assert not cut, f"labels cut at 1280 px: {cut}"
        assert changed > 1.0, f"the explorer's image did not change after moving the donor slider (mean pixel change {changed:.2f}); screenshots in {tmp_path}"


EXPLORERS_NB = [
    ("markdown", "# The other explorers, on zoo models\n\nMethod 3's directions, method 2's identity mixer, method 4's factor explorer and the plotly views."),
    ("code", "import torch\nfrom disentangle import zoo, explore as X, stylegan2 as sg, semantics as se\ntorch.set_num_threads(1)\n"
             "G = sg.pretrained_generator(); sm = zoo.load('semantics-synthfaces-64')\nw = se.sample_w(G, 32, 0)\n"
             "dirs, limits, measured = X.calibrate_directions(G, w, {k: sm.direction(k) for k in ('yaw', 'light_x')})\n"
             "dx = X.DirectionExplorer(G, w[:8], dirs, limit=limits, tooltips={k: v['tooltip'] for k, v in measured.items()})\ndx"),
    ("code", "yaw = next(k for k in dx.sliders if k.startswith('yaw'))\n"
             "dx.sliders[yaw].value = 0.2                  # two moves in one cell: the explorer must show the last\n"
             "dx.set(**{yaw: -0.1})"),
    ("code", "mx = X.IdentityMixer(zoo.load('idmap-synthfaces-64'), se.generate(G, se.sample_w(G, 8, 5)))\nmx"),
    ("code", "y, x = zoo.held_out('zerodim-shapes3d')\nfx = X.FactorExplorer(zoo.load('zerodim-shapes3d'), x[:8].float() / 255)\nfx"),
    ("code", "X.latent_scatter(w, w[:, 0], 'w coordinate 0')"),
    ("code", "dec = se.decompose(sm.photogeo, se.generate(G, w[:1]))\n"
             "X.depth_surface(dec['depth'][0], dec['albedo'][0], 'canonical depth')"),
]

TITLE_VS_TOOLBAR = """[...document.querySelectorAll('.js-plotly-plot')].map(p => {
    const t = p.querySelector('.gtitle'), m = p.querySelector('.modebar');
    if (!t || !m) return 'missing ' + (!t ? 'title' : 'toolbar');
    const a = t.getBoundingClientRect(), b = m.getBoundingClientRect();
    return (a.right <= b.left || b.right <= a.left || a.bottom <= b.top || b.bottom <= a.top) ? 'apart' : 'overlap: ' + t.textContent; })"""


def test_explorers_in_jupyterlab(tmp_path):
    "Direction, identity and factor explorers on zoo models and the plotly views in JupyterLab: the state a cell sets is shown, moves redraw, labels fit, titles clear of the toolbar, a screenshot each."
    artifacts = Path(os.environ.get("DISENTANGLE_TEST_ARTIFACTS") or tmp_path); artifacts.mkdir(parents=True, exist_ok=True)
    require_browser()
    from playwright.sync_api import sync_playwright
    from disentangle.cli import make_notebook
    make_notebook(EXPLORERS_NB, tmp_path / "explorers.ipynb")
    moved = {}
    with jupyterlab(tmp_path) as (base, token):
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            run_all(page, f"{base}/lab/tree/explorers.ipynb?token={token}",
                    "document.querySelectorAll('.disentangle-explorer img.widget-image').length >= 3 && "
                    "document.querySelectorAll('.js-plotly-plot .main-svg').length >= 2", tmp_path / "timeout.png")
            page.wait_for_timeout(3000)                     # time for any late echo from the browser to come back
            explorers = page.locator(".disentangle-explorer")      # direction, identity, factor
            yaw = explorers.nth(0).locator(".widget-hslider", has_text="yaw").first
            yaw_shown = yaw.locator(".widget-readout").inner_text().replace("\u2212", "-")     # d3 writes a minus sign
            for k, (name, label) in enumerate((("direction", "light"), ("identity", "attribute face"), ("factor", "face"))):
                box = explorers.nth(k); box.scroll_into_view_if_needed(); image = box.locator("img.widget-image")
                shot = image.screenshot()
                box.locator(".widget-hslider", has_text=label).first.locator(".noUi-handle").click()
                for _ in range(3): page.keyboard.press("ArrowRight")
                moved[name], _ = poll_change(page, image, shot, threshold=0.01)
                box.screenshot(path=str(artifacts / f"{name}-explorer.png"))
            cut = page.evaluate(CUT_LABELS)
            plots = page.evaluate(TITLE_VS_TOOLBAR)
            for k, plot in enumerate(page.locator(".js-plotly-plot").all()):
                plot.scroll_into_view_if_needed(); plot.screenshot(path=str(artifacts / f"plotly-{k}.png"))
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            browser.close()
    assert yaw_shown == "-0.10", f"the direction explorer shows yaw {yaw_shown!r}; its cell set -0.10"
    assert all(v > 0.01 for v in moved.values()), f"a slider move did not redraw: {moved}"
    assert not cut, f"labels cut at 1280 px: {cut}"
    assert plots == ["apart", "apart"], plots


def test_report_opens_offline(tmp_path):
    "A run's report.html in headless Chromium with every request outside the file refused: nothing fails, the math is rendered, the figure loads."
    require_browser(without=("jupyterlab",))
    artifacts = Path(os.environ.get("DISENTANGLE_TEST_ARTIFACTS") or tmp_path); artifacts.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright
    from disentangle.cli import make_notebook, run_experiment
    make_notebook([("markdown", "# Offline\n\nThe loss $\\mathcal L = \\beta\\,\\mathrm{KL}(q \\| p)$ and\n$$z_k = W_k \\bar f_k + b_k$$\nnot `$code$`."),
                   ("parameters", "n = 3"),
                   ("code", "import matplotlib.pyplot as plt\nfrom disentangle.core import save_metrics\nplt.plot(range(n)); plt.title('a figure'); plt.show()\n"
                            "save_metrics({'n': n}, 'metrics.json')"),
                   ("code", "from IPython.display import Markdown, display\n"
                            "display(Markdown('| model | MIG ↑ | verdict |\\n|---|---:|---|\\n| β-VAE | 0.250 | — (a baseline) |'))")], tmp_path / "exp" / "offline.ipynb")
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
        tables = page.evaluate("[...document.querySelectorAll('table')].map(t => t.innerText)")
        page.screenshot(path=str(artifacts / "report.png"), full_page=True)          # kept as a test artefact
        browser.close()
    assert not outside and not failed, f"the report asked the network for {outside + failed}"
    assert "$" not in text.replace("$code$", ""), "raw TeX in the report's visible text"
    assert maths == 2 and images and all(images), (maths, images)
    assert any("β-VAE" in t and "0.250" in t for t in tables), tables         # a results table renders as a table
