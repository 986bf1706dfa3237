"""`make figures`: run every notebook headlessly through papermill, in dependency order.

    python -m kdlab.figures --profile default [--only 02_comparison] [--runs-root runs]

Each notebook gets the parameters ``profile``, ``runs_root``, ``figures_dir`` and ``device``, and
runs with its kernel in ``notebooks/``, as in JupyterLab; executed copies go to
``<runs_root>/<profile>/notebooks/``. Training is cached by
`kdlab.pipeline`, so a re-run only redoes what changed. A failing notebook stops the
notebooks that depend on it (named with its failing cell); the others still run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kdlab.errors import KdlabError
from kdlab.paths import project_root
from kdlab.pipeline import load_profile, profile_configs, refuse_stale_finished

# notebook -> notebooks it needs (their runs and checkpoints).
DEPENDENCIES: dict[str, list[str]] = {
    "01_train": [],
    "02_comparison": ["01_train"],
    "03_uncertainty": ["01_train"],
    "04_cam": ["01_train"],
    "05_per_class": ["01_train"],
    "06_boundaries": ["01_train"],
    "07_ablations": [],
    "08_explorer": ["01_train"],
    "09_claims": ["01_train", "07_ablations"],
    "10_bench": [],
}
# Extra parameters for headless runs. Widget cells can leave papermill waiting forever after the
# kernel is idle (nteract/papermill#723; seen here on the default profile), so the explorer
# shows its widget only when run interactively and writes its static snapshot either way.
HEADLESS_PARAMETERS: dict[str, dict] = {"08_explorer": {"interactive": False}}


@dataclass
class Outcome:
    notebook: str
    status: str  # "ok", "failed", "skipped"
    seconds: float = 0.0
    detail: str = ""


def _kernel_environment() -> None:
    """Kernels must run this interpreter (the one with kdlab), whatever PATH says."""
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


def notebook_dir() -> Path:
    return project_root() / "notebooks"


def _kernel_config(socket_dir: Path):
    """Kernels talk to papermill over IPC sockets in `socket_dir`: over TCP, ipykernel warns once per
    notebook that the loopback traffic is unencrypted, in lines that are not kdlab's; and the sockets'
    default place, the kernel's working directory, is the user's notebooks/ folder."""
    from traitlets.config import Config

    config = Config()
    config.KernelManager.transport = "ipc"
    config.KernelManager.ip = str(socket_dir / "kernel")
    return config


def execute(notebook: str, parameters: dict, out_dir: Path) -> Outcome:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    source = notebook_dir() / f"{notebook}.ipynb"
    target = out_dir / f"{notebook}.ipynb"
    tic = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="kdlab-kernel-", ignore_cleanup_errors=True) as socket_dir:
            papermill.execute_notebook(str(source), str(target), parameters=parameters, kernel_name="python3",
                                       progress_bar=False, stdout_file=sys.stdout, stderr_file=sys.stderr,
                                       cwd=str(source.parent), config=_kernel_config(Path(socket_dir)))
    except PapermillExecutionError as err:
        detail = f"cell {err.exec_count}: {err.ename}: {str(err.evalue).splitlines()[0] if err.evalue else ''}"
        return Outcome(notebook, "failed", time.perf_counter() - tic, f"{detail} (executed copy: {target})")
    return Outcome(notebook, "ok", time.perf_counter() - tic)


def run_notebooks(profile: str, runs_root: str | None = None, figures_dir: str | None = None, device: str = "auto",
                  only: list[str] | None = None, changes: dict | None = None) -> list[Outcome]:
    """Execute the notebooks (all, or `only`) in dependency order; `changes` are the notebooks'
    dataset / data_root / recipes / seeds / jobs / retrain parameters, replacing the profile's own.
    A finished run whose config changed stops everything before the first notebook, unless retrain."""
    changes = {key: value for key, value in (changes or {}).items() if value is not None and value is not False}
    prof = load_profile(profile, runs_root, figures_dir, **changes)
    refuse_stale_finished(profile_configs(prof), prof.retrain)
    out_dir = prof.runs_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    _kernel_environment()
    parameters = {"profile": profile, "runs_root": str(prof.runs_root), "figures_dir": prof.figures_dir,
                  "device": device, **changes}
    selected = only or list(DEPENDENCIES)
    unknown = set(selected) - set(DEPENDENCIES)
    if unknown:
        raise KdlabError(f"--only: unknown notebook(s) {sorted(unknown)}; notebooks: {list(DEPENDENCIES)}")
    outcomes: dict[str, Outcome] = {}
    for index, notebook in enumerate(selected, 1):
        broken = [d for d in DEPENDENCIES[notebook] if d in outcomes and outcomes[d].status != "ok"]
        if broken:
            outcomes[notebook] = Outcome(notebook, "skipped", detail=f"needs {broken[0]}, which did not finish")
        else:
            print(f"[{index}/{len(selected)}] {notebook} ...", flush=True)
            outcomes[notebook] = execute(notebook, {**parameters, **HEADLESS_PARAMETERS.get(notebook, {})}, out_dir)
        o = outcomes[notebook]
        print(f"[{index}/{len(selected)}] {notebook}: {o.status} ({o.seconds:.0f} s) {o.detail}".rstrip(), flush=True)
    return list(outcomes.values())


def summarise(outcomes: list[Outcome], figures_dir: Path, since: float) -> str:
    produced = sorted(p for p in figures_dir.rglob("*") if p.is_file() and p.stat().st_mtime >= since)
    lines = ["", "Summary:"]
    lines += [f"  {o.notebook:16s} {o.status:8s} {o.seconds:7.0f} s  {o.detail}".rstrip() for o in outcomes]
    lines.append(f"  {len(produced)} files written under {figures_dir}/:")
    lines += [f"    {p.relative_to(figures_dir)}" for p in produced]
    return "\n".join(lines)


def _typed_path(path: str | None) -> str | None:
    """A path typed on the command line is relative to the working directory."""
    return None if path is None else str(Path(path).expanduser().absolute())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdlab.figures", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default", help="quick | default | full | a profile YAML path")
    parser.add_argument("--runs-root", help="parent of the profiles' run directories (default: the project's runs/, "
                                            "or $KDLAB_RUNS_ROOT)")
    parser.add_argument("--figures-dir", help="where figures and tables go (default: the profile's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", nargs="*", help="run only these notebooks (e.g. 02_comparison)")
    parser.add_argument("--dataset", help="replaces the profile's dataset (a kdlab.data.DATASETS name)")
    parser.add_argument("--data-root", help="replaces the profile's dataset directory")
    parser.add_argument("--recipes", nargs="+", help="replace the profile's comparison recipes")
    parser.add_argument("--seeds", nargs="+", type=int, help="replace the seeds of the profile's comparison")
    parser.add_argument("--jobs", type=int, help="runs trained at once (default: the profile's, else 1)")
    parser.add_argument("--retrain", action="store_true",
                        help="retrain finished runs whose config changed (the old run is kept as <name>.stale-<k>)")
    args = parser.parse_args(argv)
    runs_root, figures_dir, data_root = (_typed_path(p) for p in (args.runs_root, args.figures_dir, args.data_root))
    changes = {"dataset": args.dataset, "data_root": data_root, "recipes": args.recipes,
               "seeds": args.seeds, "jobs": args.jobs, "retrain": args.retrain}
    tic, since = time.perf_counter(), time.time()
    try:
        outcomes = run_notebooks(args.profile, runs_root, figures_dir, args.device, args.only, changes)
        figures_dir = Path(load_profile(args.profile, runs_root, figures_dir).figures_dir)
    except KdlabError as err:
        print(f"kdlab.figures: error: {err}", file=sys.stderr)
        return 2
    print(summarise(outcomes, figures_dir, since))
    print(f"  total wall time: {(time.perf_counter() - tic) / 60:.1f} min (profile {args.profile})")
    return 0 if all(o.status == "ok" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
