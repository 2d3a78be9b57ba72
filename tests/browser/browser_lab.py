"""The browser tier's fixtures and helpers: a real JupyterLab server driven by playwright in Debian's chromium
(`make test-browser`). test_lab.py imports the fixtures; there is no conftest.py here, so the `conftest` module the
other tests import stays tests/conftest.py.

Playwright's own browser download is not used (not reachable on CI): `chromium` from apt is launched through
`executable_path` (`$CHROMIUM`, else `chromium` on PATH). The server runs on localhost with a random free port,
a random token, and a temporary root holding copies of the notebooks; its user settings turn off cell windowing
(every cell stays in the DOM, so outputs can be read) and the news poll.

Artefacts go to `$LINKER_NB_BROWSER_ARTIFACTS` (default `runs/browser/`): a screenshot of every plotly figure
(always), and a full-page screenshot plus the server's log when a test fails.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("LINKER_NB_BROWSER_ARTIFACTS", ROOT / "runs" / "browser"))

SETTINGS = {  # JupyterLab user settings for the test server
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none",
                                                                  "autoStartDefaultKernel": True},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("the browser tier needs Debian's chromium: `apt-get install -y chromium` (or set $CHROMIUM to a "
                    "Chromium executable); playwright's own browser download is not used", pytrace=False)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A running JupyterLab: `url(path)` gives a tokened URL; `root` holds the notebook copies."""

    def __init__(self, root: Path, port: int, token: str, proc: subprocess.Popen, log: Path):
        self.root, self.port, self.token, self.proc, self.log = root, port, token, proc, log

    def url(self, path: str = "lab", query: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{path}?{query + '&' if query else ''}token={self.token}"

    def api(self, path: str, method: str = "GET"):
        req = urllib.request.Request(self.url(path), method=method)
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        """End every session, so one notebook's kernel does not hold memory and CPU during the next test."""
        for s in self.api("api/sessions"):
            self.api(f"api/sessions/{s['id']}", method="DELETE")

    def wait_kernel_idle(self, name: str, timeout: float = 180) -> None:
        """Until the notebook `name` has a kernel and the server reports it idle (started, nothing running)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(s.get("path") == name and (s.get("kernel") or {}).get("execution_state") == "idle"
                   for s in self.api("api/sessions")):
                return
            time.sleep(0.5)
        raise AssertionError(f"no idle kernel for {name} after {timeout} s; sessions: {self.api('api/sessions')}")

    def saved(self, name: str, n_run: int = 1, timeout: float = 60) -> dict:
        """The notebook as saved once `n_run` code cells have their number on disk: the save after Run All has
        landed (JupyterLab writes after the save command returns, and an autosave may have caught a partial
        run)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                nb = json.loads((self.root / name).read_text())
            except json.JSONDecodeError:  # caught mid-write
                nb = None
            if nb is not None and sum(1 for c in nb["cells"] if c["cell_type"] == "code"
                                      and c.get("execution_count")) >= n_run:
                return nb
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}: fewer than {n_run} executed cells on disk {timeout} s after saving")
            time.sleep(0.5)


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("lab")
    root, settings, runtime = base / "root", base / "settings", base / "runtime"
    root.mkdir()
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        shutil.copy(nb, root / nb.name)
    for rel, value in SETTINGS.items():
        (settings / rel).parent.mkdir(parents=True, exist_ok=True)
        (settings / rel).write_text(json.dumps(value))
    port, token = free_port(), secrets.token_hex(24)
    log = base / "jupyter.log"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime), "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTERLAB_WORKSPACES_DIR": str(base / "workspaces")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        + (["--allow-root"] if os.geteuid() == 0 else []),  # CI containers run as root
        cwd=root, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    lab = Lab(root, port, token, proc, log)
    deadline = time.monotonic() + 180  # a cold start on a busy 2-core machine takes ~10-30 s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"jupyter lab exited ({proc.returncode}):\n{log.read_text()[-3000:]}", pytrace=False)
        try:
            with urllib.request.urlopen(lab.url("api/status"), timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"jupyter lab did not answer within 180 s:\n{log.read_text()[-3000:]}", pytrace=False)
        time.sleep(0.5)
    yield lab
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright
    exe = chromium_path()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox", "--disable-gpu",
                                                                         "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture
def page(browser, request, lab):
    """A fresh browser context per test; on failure a full-page screenshot and the server log are kept."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    failed_before = request.session.testsfailed
    yield pg
    if request.session.testsfailed > failed_before:  # this test's call failed (reported before teardown)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        stem = request.node.name.replace("/", "_").replace("[", "-").rstrip("]")
        try:
            pg.screenshot(path=str(ARTIFACTS / f"FAILED-{stem}.png"), full_page=True)
        except Exception as e:  # the page may be gone; the log still helps
            print(f"no failure screenshot: {e}")
        shutil.copy(lab.log, ARTIFACTS / f"FAILED-{stem}-jupyter.log")
    ctx.close()
    lab.shutdown_kernels()
