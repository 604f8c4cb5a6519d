"""A real browser: JupyterLab on loopback, headless Chromium, the position-patching
notebook run top to bottom, the layer slider moved, the figure redrawn.

Needs Debian's ``chromium`` and the ``playwright`` Python package (its driver
only; the browser is the system's).  Without them the test skips locally; under
CI (``CI=true``) a missing browser is a failure, not a skip.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "03_position_patching.ipynb"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = REPO / "outputs" / "browser"

pytestmark = [pytest.mark.browser, pytest.mark.notebooks]


def _need(condition: bool, reason: str) -> None:
    if not condition:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser test, but {reason}")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """JupyterLab serving a temporary copy of the notebook, on 127.0.0.1 only."""
    work = tmp_path / "lab"
    work.mkdir()
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    # render every cell (JupyterLab 4 virtualises long notebooks) and ask nothing on start
    settings = tmp_path / "settings" / "@jupyterlab"
    (settings / "notebook-extension").mkdir(parents=True)
    (settings / "notebook-extension" / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    (settings / "apputils-extension").mkdir(parents=True)
    (settings / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}')
    port, token = _free_port(), "patchlab-browser-test"
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_DATA_DIR": str(tmp_path / "data"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"), "PATCHLAB_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={work}", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly", "--ServerApp.open_browser=False"]
    if os.geteuid() == 0:  # CI machines run as root
        cmd.append("--allow-root")
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.5)
        else:
            raise RuntimeError("JupyterLab did not start:\n" + (tmp_path / "lab.log").read_text()[-3000:])
        yield url, token, work
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_position_notebook_runs_and_its_layer_slider_redraws_the_figure(lab, tmp_path):
    _need(Path(CHROMIUM).exists(), "Debian's chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need(False, "the playwright package is not installed (pip install playwright)")
    url, token, work = lab
    console_errors: list[str] = []
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-quic", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})  # fresh profile
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        # This machine has no internet: answer the only outside requests (the badge images in
        # the first cell) with a blank SVG instead of letting them fail, and record them.
        outside: list[str] = []

        def offline(route):
            outside.append(route.request.url)
            route.fulfill(status=200, content_type="image/svg+xml",
                          body='<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>')

        page.route(lambda u: not u.startswith(url), offline)
        page.on("pageerror", lambda e: console_errors.append(str(e)))
        page.goto(f"{url}/lab/tree/{NOTEBOOK.name}?token={token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        try:  # JupyterLab may ask which kernel to start: take the notebook's (python3)
            page.click(".jp-Dialog button.jp-mod-accept", timeout=15_000)
        except Exception:  # no dialog: the kernel started by itself
            pass
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
        page.click("li.lm-MenuBar-item:has-text('Run')")
        page.click("li.lm-Menu-item:has-text('Run All Cells')")
        # Run All first marks cells queued ("[*]:"); wait for that, then for none left
        prompts = "[...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent)"
        page.wait_for_function(f"{prompts}.some(t => t.includes('*'))", timeout=60_000)
        page.wait_for_function(f"!{prompts}.some(t => t.includes('*'))", timeout=300_000)
        counts = page.evaluate(prompts)
        assert counts == [f"[{i}]:" for i in range(1, len(counts) + 1)], counts  # one clean run
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        texts = [errors.nth(i).inner_text() for i in range(errors.count())]
        assert not [t for t in texts if "Error" in t or "Traceback" in t], texts
        page.screenshot(path=str(SHOTS / "notebook_after_run_all.png"), full_page=False)
        slider = page.locator(".widget-slider:has(.widget-label:text-is('layer row'))").first
        slider.scroll_into_view_if_needed()
        explorer = slider.locator("xpath=ancestor::div[contains(@class,'widget-vbox')][1]")
        image = explorer.locator(".widget-output img").first
        image.wait_for(timeout=60_000)
        before = image.get_attribute("src")
        page.screenshot(path=str(SHOTS / "position_explorer_before.png"), full_page=False)
        handle = slider.locator(".noUi-handle, .ui-slider-handle").first
        handle.focus()
        page.keyboard.press("ArrowRight")
        page.wait_for_function(
            """([el, old]) => { const img = el.querySelector('.widget-output img');
                                 return img && img.getAttribute('src') !== old; }""",
            arg=[explorer.element_handle(), before], timeout=60_000)
        after = explorer.locator(".widget-output img").first.get_attribute("src")
        assert after and after != before
        page.wait_for_timeout(1000)
        explorer.screenshot(path=str(SHOTS / "position_explorer_after.png"))
        browser.close()
    assert not console_errors, console_errors
    assert all("badge" in u for u in outside), outside  # nothing but the badges looks outside
