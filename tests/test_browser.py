"""The notebooks as a person uses them: JupyterLab in headless Chromium, Run All, then the explorer's controls.

Trains the quick profile's runs into a temporary runs root (`KDLAB_RUNS_ROOT`, so the project's
`runs/` is untouched), starts JupyterLab on a loopback port at the repository root, opens
`notebooks/08_explorer.ipynb` and `notebooks/02_comparison.ipynb` (their kernels start in
`notebooks/`, as they do for a person), runs all cells and checks what the page shows. Only the
parameters cell's `figures_dir` is changed in the page, so figures go to the temporary directory;
nothing is saved. A successful explorer run leaves its screenshot in `figures/explorer_screenshot.png`.
Skipped where Chromium or its driver is missing, except in CI (`.ci/run` installs them).
"""

import json
import os
import time
from pathlib import Path

import pytest

import browser_helpers as bh

# Skipped without Chromium, except in CI (CI=true), where .ci/run installs it: there it fails.
pytestmark = pytest.mark.skipif(bh.missing_browser() is not None and os.environ.get("CI") != "true",
                                reason=bh.missing_browser() or "")

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "figures" / "explorer_screenshot.png"
EXPLORER = ".jp-NotebookPanel .kdlab-explorer"
EXPLORER_IMAGE = f"{EXPLORER} img.kdlab-explorer-image, {EXPLORER} .kdlab-explorer-image img"
TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("browser")


@pytest.fixture(scope="module")
def trained(quick_runs):
    """The quick profile's runs (conftest's `quick_runs`, shared with the notebook test)."""
    runs, seconds = quick_runs
    TIMES["train quick runs"] = seconds
    return runs


@pytest.fixture(scope="module")
def lab(workdir, trained):
    tic = time.perf_counter()
    server = bh.LabServer.start(ROOT, workdir / "jupyter", env={"KDLAB_RUNS_ROOT": str(trained)})
    TIMES["start JupyterLab"] = time.perf_counter() - tic
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(workdir):
    tic = time.perf_counter()
    driver = bh.start_chromium(workdir / "chromium-profile")
    TIMES["start Chromium"] = time.perf_counter() - tic
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(lab, browser, request, tmp_path, capsys):
    """The browser on the lab; on failure a screenshot; afterwards the kernels shut down and no new
    files in notebooks/."""
    before = sorted(p.name for p in (ROOT / "notebooks").iterdir())
    failed_before, tic = request.session.testsfailed, time.perf_counter()
    yield browser
    TIMES[request.node.name] = time.perf_counter() - tic
    with capsys.disabled():  # shown whether or not the test passes
        print(f"\n  browser test wall time: {sum(TIMES.values()):.0f} s ("
              + ", ".join(f"{k} {v:.0f} s" for k, v in TIMES.items()) + ")")
        if request.session.testsfailed > failed_before:  # this test's call failed
            shot = tmp_path / "failure.png"
            try:
                bh.show_trouble(browser)
                browser.save_screenshot(str(shot))
                print(f"  screenshot of the failure: {shot}")
            except Exception as err:  # the browser itself may be gone
                print(f"  no screenshot of the failure: {err}")
            print(f"  JupyterLab log: {lab.log}")
    lab.shutdown_kernels()
    after = sorted(p.name for p in (ROOT / "notebooks").iterdir())
    assert after == before, f"the run left new files in notebooks/: {sorted(set(after) - set(before))}"


def _run_notebook(driver, lab, workdir, path: str) -> dict:
    bh.open_notebook(driver, lab, path)
    bh.set_parameter(driver, "figures_dir", str(workdir / "figures"))
    state = bh.run_all(driver)
    if state["errors"]:
        pytest.fail(f"{path}: a cell failed in JupyterLab:\n{bh.describe_errors(state)}")
    assert all(count is not None for count in state["counts"]), f"{path}: cells not run: {state['counts']}"
    _assert_committed_clean(ROOT / path)
    return state


def _assert_committed_clean(path: Path) -> None:
    """Nothing wrote the run's outputs back into the notebook (e.g. autosave)."""
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in cells), f"{path} was saved with outputs"


def test_explorer_shows_its_figure_and_redraws_it(lab, page, workdir, capsys):
    _run_notebook(page, lab, workdir, "notebooks/08_explorer.ipynb")
    assert page.execute_script("return document.querySelector(arguments[0]) !== null;", EXPLORER), (
        f"no explorer widget (.kdlab-explorer) in the page; images shown: {bh.visible_images(page)}; "
        f"dropdowns: {bh.dropdowns(page, '.jp-NotebookPanel')}")
    images = bh.visible_images(page, EXPLORER, "img")
    assert any(img["complete"] and img["width"] > 0 for img in images), f"the explorer shows no figure: {images}"
    controls = bh.dropdowns(page, EXPLORER)
    assert "overlay" in controls and "image" in controls, f"explorer controls: {controls}"

    for label in ("overlay", "image", "model"):  # the overlay first: the README's screenshot shows it changed
        before = bh.image_digest(page, EXPLORER_IMAGE)
        assert before and not before.startswith("error"), f"cannot read the explorer's image: {before}"
        option = next(o for o in controls[label] if o != bh.selected(page, EXPLORER, label))
        bh.choose(page, EXPLORER, label, option)
        bh.wait_for(lambda: bh.image_digest(page, EXPLORER_IMAGE) not in (before, None), 120,
                    f"the explorer's image to change after {label} -> {option}")
        assert len(bh.visible_images(page, EXPLORER, "img")) == len(images), "figures pile up in the explorer"
        if label == "overlay":
            page.execute_script("document.querySelector(arguments[0]).closest('.jp-Cell')"
                                ".scrollIntoView({block: 'start'});", EXPLORER)  # its cell: code and widget
            time.sleep(0.5)
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.save_screenshot(str(SCREENSHOT))
            with capsys.disabled():
                print(f"\n  explorer screenshot (overlay -> {option}): {SCREENSHOT}")


def test_comparison_runs_and_shows_its_figures(lab, page, workdir):
    _run_notebook(page, lab, workdir, "notebooks/02_comparison.ipynb")
    images = bh.visible_images(page)
    as_text = page.execute_script("return Array.from(document.querySelectorAll('.jp-OutputArea-output'))"
                                  ".map(n => n.textContent).filter(t => t.includes('<Figure size'));")
    assert any(img["complete"] and img["width"] > 0 for img in images), (
        f"no figure displayed (images: {images}); figures shown as text: {as_text}")
    assert (workdir / "figures" / "comparison.png").exists(), sorted(p.name for p in (workdir / "figures").iterdir())
