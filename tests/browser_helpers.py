"""Drive JupyterLab 4 in headless Chromium for `test_browser.py`: start a server, open a notebook,
run all its cells, read what the page shows.

The server runs with `--LabApp.expose_app_in_browser=True`, so the page's `window.jupyterapp` (the
JupyterLab application) runs commands and reads the notebook's model; what the tests assert about
images is read from the page's DOM.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

# User settings for the test's JupyterLab: never write the notebooks back (no autosave), keep every
# cell in the DOM (no windowing) and no news / update pop-ups.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "checkForUpdates": False, "fetchNews": "false", "doNotDisturbMode": True},
}


def missing_browser() -> str | None:
    """Why the browser test cannot run here, or None."""
    absent = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if absent:
        return f"{' and '.join(absent)} not found (apt-get install chromium chromium-driver)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout: float, what: str, interval: float = 0.5):
    """Poll `condition()` until it returns something truthy; that value, or TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class LabServer:
    """A JupyterLab server on a loopback port, its files and settings under `home`."""

    process: subprocess.Popen
    port: int
    token: str
    root: Path
    log: Path

    @classmethod
    def start(cls, root: Path, home: Path, env: dict[str, str], timeout: float = 120) -> LabServer:
        home.mkdir(parents=True, exist_ok=True)
        settings = home / "lab-settings"
        for name, values in LAB_SETTINGS.items():
            (settings / name).parent.mkdir(parents=True, exist_ok=True)
            (settings / name).write_text(json.dumps(values))
        bin_dir = str(Path(sys.executable).parent)  # kernels run this venv's python
        env = {**os.environ, **env, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
               "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
               "JUPYTER_DATA_DIR": str(home / "data"),  # kernels and lab extensions still come from the venv
               "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
               "IPYTHONDIR": str(home / "ipython")}
        port, token = free_port(), secrets.token_hex(16)
        log = home / "jupyterlab.log"
        command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.open_browser=False",
                   "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
                   f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                   f"--FileCheckpoints.checkpoint_dir={home / 'checkpoints'}",  # no .ipynb_checkpoints/ in the tree
                   "--LabApp.expose_app_in_browser=True", *(["--allow-root"] if os.geteuid() == 0 else [])]
        with log.open("w") as out:
            process = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        server = cls(process, port, token, root, log)
        try:
            wait_for(server.ready, timeout, f"JupyterLab to answer on port {port} (log: {log})")
        except BaseException:
            server.stop()
            raise
        return server

    def url(self, path: str, query: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{path}?{query + '&' if query else ''}token={self.token}"

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {self.process.returncode}; log:\n{self.log_tail()}")
        try:
            self.api("status")
            return True
        except OSError:
            return False

    def shutdown_kernels(self) -> None:
        for kernel in self.api("kernels"):
            self.api(f"kernels/{kernel['id']}", method="DELETE")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Shut the kernels and the server down; kill its process group if it does not exit."""
        if self.process.poll() is None:
            try:
                self.shutdown_kernels()
                self.api("shutdown", method="POST")
                self.process.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.process.poll() is not None:
                break
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass


def start_chromium(profile_dir: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={profile_dir}", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("unhandledPromptBehavior", "accept")  # "leave the page?" after a run
    env = {**os.environ, "XDG_CONFIG_HOME": str(profile_dir / "config"), "XDG_CACHE_HOME": str(profile_dir / "cache")}
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER), env=env), options=options)
    driver.set_script_timeout(60)
    return driver


# --- the notebook in the page, through window.jupyterapp -------------------------------------------

_PANEL = """
const app = window.jupyterapp;
const panel = app && app.shell.currentWidget;
if (!panel || !panel.content || !panel.sessionContext || !panel.context) return null;
"""

_STATE = _PANEL + """
const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
const cells = panel.content.widgets.filter(c => c.model.type === 'code');
const errors = [];
cells.forEach((cell, index) => {
  const outputs = cell.model.outputs;
  for (let i = 0; i < outputs.length; i++) {
    const o = outputs.get(i).toJSON();
    if (o.output_type === 'error') errors.push({cell: index + 1, ename: o.ename, evalue: o.evalue,
                                                traceback: (o.traceback || []).join('\\n')});
    const text = [].concat(o.text || []).join('');
    if (o.output_type === 'stream' && o.name === 'stderr' && /Traceback/.test(text))
      errors.push({cell: index + 1, ename: 'stderr', evalue: text.slice(-2000)});
  }
});
// tracebacks inside widgets (an Output widget's area is not part of the cell's outputs)
panel.node.querySelectorAll('.jupyter-widgets .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
  .forEach(node => { if (/Traceback/.test(node.textContent))
                       errors.push({cell: 'widget', ename: 'stderr', evalue: node.textContent.slice(-2000)}); });
return {path: panel.context.path, kernel: kernel ? kernel.status : null,
        ready: panel.sessionContext.isReady, counts: cells.map(c => c.model.executionCount),
        prompts: cells.map(c => { const p = c.node.querySelector('.jp-InputPrompt');
                                  return p ? p.textContent.trim() : ''; }),
        dialog: !!document.querySelector('.jp-Dialog'), errors: errors};
"""


def notebook_state(driver) -> dict | None:
    return driver.execute_script(_STATE)


def dismiss_dialogs(driver) -> None:
    """Accept any dialog (e.g. a kernel choice: the notebook's own kernel is preselected)."""
    driver.execute_script("document.querySelectorAll('.jp-Dialog .jp-mod-accept').forEach(b => b.click());")


def open_notebook(driver, server: LabServer, path: str, timeout: float = 180) -> dict:
    """Open `path` (relative to the server's root) and wait until its kernel is idle."""
    driver.execute_script("""
      const app = window.jupyterapp;
      if (app) for (const w of app.shell.widgets('main')) if (w.context) w.context.model.dirty = false;""")
    driver.get(server.url(f"lab/tree/{path}", "reset"))  # reset: this notebook only, no restored layout

    def idle():
        state = notebook_state(driver)
        if state and state["dialog"]:
            dismiss_dialogs(driver)
        return state if state and state["path"] == path and state["ready"] and state["kernel"] == "idle" else None

    state = wait_for(idle, timeout, f"{path} to open with an idle kernel")
    driver.execute_script("window.jupyterapp.shell.collapseLeft();")
    return state


def show_trouble(driver) -> None:
    """Scroll to the first error output, else to the last code cell (before a failure's screenshot)."""
    driver.execute_script("""
      const nodes = document.querySelectorAll('.jp-NotebookPanel .jp-OutputArea-output[data-mime-type*="stderr"]');
      const cells = document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell');
      const node = nodes.length ? nodes[0] : cells[cells.length - 1];
      if (node) node.scrollIntoView({block: 'start'});""")


def set_parameter(driver, name: str, value) -> None:
    """Append `name = value` to the notebook's parameters cell (in the page only; nothing is saved)."""
    line = f"{name} = {value!r}  # set by tests/test_browser.py"
    found = driver.execute_script(_PANEL + """
      const cell = panel.content.widgets.find(c => c.model.type === 'code' &&
                                              (c.model.getMetadata('tags') || []).includes('parameters'));
      if (!cell) return false;
      cell.model.sharedModel.setSource(cell.model.sharedModel.getSource() + '\\n' + arguments[0]);
      return true;""", line)
    assert found, "the notebook has no cell tagged 'parameters'"


def run_all(driver, timeout: float = 600) -> dict:
    """Run all cells; wait until the kernel is idle and every code cell ran, or one failed."""
    driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")

    def finished():
        state = notebook_state(driver)
        if not state or state["kernel"] != "idle" or any("*" in p for p in state["prompts"]):
            return None
        return state if state["errors"] or all(c is not None for c in state["counts"]) else None

    wait_for(finished, timeout, "the notebook's cells to run", interval=1)
    time.sleep(1)  # the last outputs and widgets render
    return wait_for(finished, 30, "the notebook to settle", interval=1)


def describe_errors(state: dict) -> str:
    """The failed cells: name, value and the end of each traceback."""
    return "\n\n".join(f"code cell {e['cell']}: {e['ename']}: {e['evalue']}\n"
                       + re.sub(r"\x1b\[[0-9;]*m", "", e.get("traceback", ""))[-1500:] for e in state["errors"])


# --- images and controls in the outputs ------------------------------------------------------------

_IMAGES = _PANEL + """
const scope = arguments[0] ? panel.node.querySelector(arguments[0]) : panel.node;
if (!scope) return [];
return Array.from(scope.querySelectorAll(arguments[1])).filter(img => img.offsetParent !== null)
  .map(img => ({src: img.src.slice(0, 64), complete: img.complete, width: img.naturalWidth}));
"""


def visible_images(driver, scope: str | None = None, selector: str = ".jp-OutputArea-output img") -> list[dict]:
    """The displayed `<img>` elements matching `selector` inside `scope` (a CSS selector) of the notebook."""
    return driver.execute_script(_IMAGES, scope, selector)


_DIGEST = """
const done = arguments[arguments.length - 1];
const img = document.querySelector(arguments[0]);
if (!img || !img.src) { done(null); return; }
fetch(img.src).then(r => r.arrayBuffer()).then(buffer => {
  const bytes = new Uint8Array(buffer);
  let h = 2166136261;
  for (let i = 0; i < bytes.length; i++) { h ^= bytes[i]; h = Math.imul(h, 16777619) >>> 0; }
  done(bytes.length + ':' + h.toString(16));
}).catch(err => done('error: ' + err));
"""


def image_digest(driver, selector: str) -> str | None:
    """A digest of the bytes the first `<img>` matching `selector` shows (its src may be a blob: URL)."""
    return driver.execute_async_script(_DIGEST, selector)


_DROPDOWNS = """
const scope = document.querySelector(arguments[0]);
if (!scope) return {};
const found = {};
scope.querySelectorAll('.widget-dropdown').forEach(box => {
  const label = box.querySelector('label'), select = box.querySelector('select');
  if (label && select) found[label.textContent.trim()] = Array.from(select.options).map(o => o.text);
});
return found;
"""


def dropdowns(driver, scope: str) -> dict[str, list[str]]:
    """Each ipywidgets Dropdown inside `scope`: its label -> its options."""
    return driver.execute_script(_DROPDOWNS, scope)


def selected(driver, scope: str, label: str) -> str | None:
    """The option shown by the Dropdown labelled `label` inside `scope`."""
    return driver.execute_script("""
      for (const box of document.querySelectorAll(arguments[0] + ' .widget-dropdown'))
        if (box.querySelector('label').textContent.trim() === arguments[1]) {
          const select = box.querySelector('select');
          return select.options[select.selectedIndex].text; }
      return null;""", scope, label)


def choose(driver, scope: str, label: str, option: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    for box in driver.find_elements(By.CSS_SELECTOR, f"{scope} .widget-dropdown"):
        if box.find_element(By.TAG_NAME, "label").text.strip() == label:
            select = box.find_element(By.TAG_NAME, "select")
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", select)
            Select(select).select_by_visible_text(option)
            return
    raise AssertionError(f"no dropdown labelled {label!r} in {scope}")
