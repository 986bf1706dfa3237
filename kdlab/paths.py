"""Where kdlab's files are: the project root, and paths named in profiles, configs and recipes.

A relative path inside a config, profile or recipe (``data.root: data/embedded``,
``teacher: {config: configs/teacher.yaml}``, ``out_dir: runs``) means a path under the project
root, whatever the working directory is: a notebook's kernel starts in ``notebooks/``, papermill
and the command line wherever they are called. Paths typed on the command line are the command
line's business (`kdlab.cli` makes them absolute against the working directory first).

The project root is the directory holding ``configs/`` and ``notebooks/`` beside the ``kdlab``
package (a source checkout or an editable install), or ``$KDLAB_ROOT``.
"""

from __future__ import annotations

import os
from pathlib import Path

from kdlab.errors import ConfigError

ROOT_ENV = "KDLAB_ROOT"  # the project root, where kdlab is installed without its source tree
RUNS_ENV = "KDLAB_RUNS_ROOT"  # the default runs root (else the project's runs/)
_MARKERS = ("configs/profiles", "notebooks")


def _is_project_root(path: Path) -> bool:
    return all((path / marker).is_dir() for marker in _MARKERS)


def project_root() -> Path:
    """The project root: ``$KDLAB_ROOT`` when set, else the directory above the kdlab package."""
    if os.environ.get(ROOT_ENV):
        root = Path(os.environ[ROOT_ENV]).expanduser().resolve()
        if not _is_project_root(root):
            raise ConfigError(f"{ROOT_ENV}={root}: not a kdlab project root (expected {' and '.join(_MARKERS)}/ in it)")
        return root
    root = Path(__file__).resolve().parent.parent
    if not _is_project_root(root):
        raise ConfigError(f"kdlab project root not found (no {' and '.join(_MARKERS)}/ beside the kdlab package "
                          f"in {root}); set {ROOT_ENV}=/path/to/the/kdlab/checkout")
    return root


def project_path(path: str | os.PathLike) -> Path:
    """``path`` itself when absolute, else the same path under the project root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else project_root() / path


def default_runs_root() -> str:
    """``$KDLAB_RUNS_ROOT`` when set, else ``runs`` (the project's runs/)."""
    return os.environ.get(RUNS_ENV) or "runs"
