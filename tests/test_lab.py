"""JupyterLab as scientists work: notebook 1 run in JupyterLab, driven in Debian's Chromium.

JupyterLab (the ``lab`` extra: JupyterLab 4.6, dask-labextension 7.0, ipywidgets) runs
in a subprocess on a free port of 127.0.0.1 with a token, its news and update checks
off and the extension manager read-only, with fresh Jupyter config, data, settings,
workspace and runtime folders. Its folder holds a copy of ``notebooks/1_open_cube.ipynb``
(JupyterLab autosaves outputs; the repository's notebook stays without them), reading the
real Earth cube (``ESDC_CUBE``, the session's ``earth_cube``).

Playwright drives ``/usr/bin/chromium`` as for the search page
(``tests/search/test_page_browser.py``); every request to a host other than 127.0.0.1
is blocked and recorded, and there must be none. The test opens the notebook, runs it
with **Run > Run All Cells**, waits for every cell, then finds the map outputs
(images), the Dask dashboard link (an ipywidgets HTML widget) and the progress widget
of the Hovmöller reduction, and opens the dashboard's task stream from the Dask panel
of dask-labextension's sidebar.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from esdc.testing import stop_process

pytest.importorskip("jupyterlab", reason="the lab extra is not installed")
pytest.importorskip("dask_labextension", reason="the lab extra is not installed")
pytest.importorskip("ipywidgets", reason="the lab extra is not installed")

pytestmark = [pytest.mark.lab, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "1_open_cube.ipynb"
#: Debian's Chromium; ESDC_CHROMIUM names another Chromium build.
CHROMIUM = Path(os.environ.get("ESDC_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
INSTALL = ("the JupyterLab test needs Debian's Chromium at /usr/bin/chromium and the Python "
           "package playwright (test extra): `make install-test` installs both.")
#: User settings: no news or update check (no toast asking), the notebook's kernel started
#: without asking.
SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false",
                                                    "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {"autoStartDefaultKernel": True},
}
#: Seconds for JupyterLab to answer, and for the whole notebook to run.
START_S, RUN_S = 60, 240


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, earth_cube: Path) -> Iterator[str]:
    """JupyterLab serving a copy of notebook 1; yields its base URL (with the token)."""
    home = tmp_path_factory.mktemp("jupyter")
    root = home / "notebooks"
    root.mkdir()
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, root / NOTEBOOK)
    env = {**os.environ, "ESDC_CUBE": str(earth_cube), "PYDEVD_DISABLE_FILE_VALIDATION": "1",
           **{var: str(home / sub) for var, sub in [
               ("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
               ("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTERLAB_SETTINGS_DIR", "settings"),
               ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"), ("IPYTHONDIR", "ipython"),
               ("MPLCONFIGDIR", "matplotlib")]}}
    for name, values in SETTINGS.items():
        path = home / "settings" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values), encoding="utf-8")
    port, token = _free_port(), secrets.token_hex(16)
    log = (home / "lab.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_S
        while True:
            assert proc.poll() is None, (home / "lab.log").read_text(errors="replace")
            try:
                with urllib.request.urlopen(f"{base}api/status?token={token}", timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "JupyterLab did not answer in time"
                time.sleep(0.5)
        yield f"{base}lab/tree/{NOTEBOOK}?token={token}"
    finally:
        stop_process(proc, timeout=30)
        log.close()
    text = (home / "lab.log").read_text(errors="replace")
    assert "Traceback" not in text, text[-4000:]


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, list[str]]]:
    """A Chromium page that may reach 127.0.0.1 only; the blocked URLs are recorded."""
    if shutil.which(str(CHROMIUM)) is None:
        pytest.fail(f"{CHROMIUM} is missing: {INSTALL}", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"playwright is not installed: {INSTALL}", pytrace=False)
    blocked: list[str] = []

    def local_only(route) -> None:
        if urllib.parse.urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=ARGS,
            viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(30_000)
        context.route("**/*", local_only)
        yield context.new_page(), blocked
        context.close()


def _all_cells_ran(page) -> None:
    """Wait until every code cell has an execution count and the kernel is idle."""
    page.wait_for_function(
        """() => {
            const prompts = [...document.querySelectorAll(
                '.jp-Notebook .jp-CodeCell .jp-InputArea-prompt')];
            return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
        }""", timeout=RUN_S * 1000, polling=500)


def test_notebook_1_runs_in_jupyterlab_with_the_dask_panel(lab: str, page) -> None:
    page, blocked = page
    start = time.monotonic()
    page.goto(lab)
    # the notebook loaded and its kernel started: the status bar says "... | Idle"
    page.wait_for_function(
        """() => document.querySelectorAll('.jp-Notebook .jp-CodeCell').length > 10
            && [...document.querySelectorAll('.jp-StatusBar-TextItem')]
                .some(e => /\\| Idle$/.test(e.textContent.trim()))""",
        timeout=START_S * 1000, polling=250)
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    _all_cells_ran(page)
    took = time.monotonic() - start
    print(f"notebook 1 in JupyterLab: {took:.1f} s")
    outputs = page.locator(".jp-Notebook .jp-OutputArea-output")
    text = outputs.all_inner_texts()
    assert not [t for t in text if "Traceback" in t or "Error" in t.split("\n")[0]], text

    # the maps: PNG images drawn by ds.esdc.quicklook, decoded by the browser
    images = page.locator(".jp-Notebook .jp-OutputArea-output img")
    assert images.count() >= 4  # rgb, koppen_class, sst and the two time-series figures
    sizes = images.evaluate_all("imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight])")
    assert all(w > 300 and h > 200 for w, h in sizes), sizes

    # the Dask dashboard link (ipywidgets HTML) and the progress widget of the reduction
    link = page.locator(".jp-OutputArea-output .widget-html a", has_text="Dask dashboard")
    href = link.get_attribute("href")
    assert href and re.fullmatch(r"http://127\.0\.0\.1:\d+/status", href), href
    bar = page.locator(".jp-OutputArea-output .widget-hbox").filter(
        has=page.locator(".widget-hprogress .progress-bar"))
    assert bar.count() == 1
    assert bar.locator(".progress-bar").evaluate("b => b.style.width") == "100%"
    assert re.search(r"equatorial\W+SST.*\b(\d+)/\1\b", bar.inner_text(), re.S), \
        bar.inner_text()  # tqdm: "9/9" pieces

    # dask-labextension: its sidebar panel takes the dashboard's address and lists the plots
    page.locator(".jp-SideBar .lm-TabBar-tab[data-id='dask-dashboard-launcher']").click()
    url = page.locator(".dask-URLInput input")
    url.fill(href.removesuffix("/status"))
    url.press("Enter")
    stream = page.locator(".dask-DashboardListing-item button", has_text="Task Stream")
    page.wait_for_function(  # enabled once the server extension found the dashboard
        """() => [...document.querySelectorAll('.dask-DashboardListing-item button')]
            .some(b => b.textContent === 'Task Stream' && !b.disabled)""", timeout=30_000)
    assert page.locator(".dask-DashboardListing-item button").count() >= 10
    stream.click()
    frame = page.locator(".dask-DaskDashboard-widget iframe")
    frame.wait_for(state="attached")
    src = frame.get_attribute("src")
    assert src and "individual-task-stream" in src, src
    assert blocked == [], blocked
    assert took < RUN_S
