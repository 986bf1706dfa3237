"""Every notebook executes headlessly on the quick profile and writes its figures; failures stop a branch."""

import json
from pathlib import Path

import nbformat
import pytest

from kdlab import figures

NOTEBOOKS = sorted(Path("notebooks").glob("*.ipynb"))
# Figures (PNG + PDF) each notebook must produce on the quick profile.
EXPECTED_FIGURES = {
    "02_comparison": ["comparison", "trimap_curves", "training_curves"],
    "03_uncertainty": ["entropy_maps", "entropy_vs_edge_accuracy"],
    "04_cam": ["cam_hirescam", "cam_gradcam"],
    "05_per_class": ["per_class_trimap_iou", "per_class_iou_gain"],
    "06_boundaries": ["edge_masks_0", "decoupled_logits", "bcd_boundaries", "prediction_overlays", "qualitative",
                      "skd_discriminator_scores"],
    "07_ablations": ["ablation_bpkd_edge_width", "ablation_bpkd_loss_weights"],
    "08_explorer": ["explorer_snapshot"],
    "10_bench": ["bench/bench"],  # beside the bench tables
}
EXPECTED_TABLES = {
    "01_train": ["training_summary"],
    "02_comparison": ["comparison"],
    "03_uncertainty": ["entropy"],
    "05_per_class": ["per_class_trimap_iou", "per_class_iou_gain"],
    "07_ablations": ["ablation_bpkd_table4", "ablation_bpkd_table3", "ablation_bcd_table1", "ablation_skd_table1",
                     "ablation_ppd_table3"],
    "09_claims": ["claims"],
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_committed_clean_with_a_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert "parameters" in code[0].metadata.get("tags", [])
    assert all(len(c.source.splitlines()) <= 15 for c in code), "a long cell is a function missing from kdlab"


def test_every_notebook_runs_on_the_quick_profile(quick_runs, tmp_path):
    """Also with two runs trained at a time (the ablations): worker processes spawned from the notebook
    kernels. The comparison's runs come trained (`quick_runs`), so 01_train reuses them."""
    runs, _seconds = quick_runs
    out = tmp_path / "figures"
    assert figures.main(["--profile", "quick", "--runs-root", str(runs), "--figures-dir", str(out),
                         "--jobs", "2"]) == 0
    assert set(figures.DEPENDENCIES) == {p.stem for p in NOTEBOOKS}
    for notebook in figures.DEPENDENCIES:
        executed = nbformat.read(runs / "quick" / "notebooks" / f"{notebook}.ipynb", as_version=4)
        injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert "jobs = 2" in injected[0].source
    for stem in (s for stems in EXPECTED_FIGURES.values() for s in stems):
        assert (out / f"{stem}.png").stat().st_size > 0 and (out / f"{stem}.pdf").exists(), stem
    for stem in (s for stems in EXPECTED_TABLES.values() for s in stems):
        assert (out / f"{stem}.csv").exists() and (out / f"{stem}.md").exists(), stem


def _notebook(path: Path, source: str) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("profile = 'quick'\nruns_root = 'runs'\nfigures_dir = 'x'\ndevice = 'cpu'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(source)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_a_failing_notebook_stops_its_branch_only(tmp_path, monkeypatch, capsys):
    _notebook(tmp_path / "a.ipynb", "raise ValueError('boom')")
    _notebook(tmp_path / "b.ipynb", "print('never runs')")
    _notebook(tmp_path / "c.ipynb", "import json\nprint(json.dumps({'independent': True}))")
    monkeypatch.setattr(figures, "notebook_dir", lambda: tmp_path)
    monkeypatch.setattr(figures, "DEPENDENCIES", {"a": [], "b": ["a"], "c": []})
    code = figures.main(["--profile", "quick", "--runs-root", str(tmp_path / "runs"),
                         "--figures-dir", str(tmp_path / "figs")])
    printed = capsys.readouterr().out
    assert code == 1
    assert "a: failed" in printed and "ValueError: boom" in printed
    assert "b: skipped" in printed and "needs a" in printed
    assert "c: ok" in printed
    executed = nbformat.read(tmp_path / "runs" / "quick" / "notebooks" / "a.ipynb", as_version=4)
    assert any(o.get("ename") == "ValueError" for c in executed.cells for o in c.get("outputs", []))
    assert json.loads(nbformat.read(tmp_path / "runs" / "quick" / "notebooks" / "c.ipynb", as_version=4)
                      .cells[-1].outputs[0]["text"]) == {"independent": True}


def test_a_running_kernel_leaves_no_files_in_the_notebook_folder(tmp_path, monkeypatch, capsys):
    """The kernel lists its working directory (the notebook's folder) while it runs: its sockets are
    elsewhere, so a concurrent `git status` or JupyterLab file browser sees only the notebooks."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _notebook(notebooks / "a.ipynb", "import json, os\nprint(json.dumps(sorted(os.listdir('.'))))")
    monkeypatch.setattr(figures, "notebook_dir", lambda: notebooks)
    monkeypatch.setattr(figures, "DEPENDENCIES", {"a": []})
    code = figures.main(["--profile", "quick", "--runs-root", str(tmp_path / "runs"),
                         "--figures-dir", str(tmp_path / "figs")])
    assert code == 0, capsys.readouterr().out
    executed = nbformat.read(tmp_path / "runs" / "quick" / "notebooks" / "a.ipynb", as_version=4)
    assert json.loads(executed.cells[-1].outputs[0]["text"]) == ["a.ipynb"]
