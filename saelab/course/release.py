"""`saelab release DIR --install-source URL_OR_WHEEL`: a folder a course can publish as is.

DIR gets: dist/ (saelab's sdist and wheel, built with `python -m build --no-isolation` from the
project that holds saelab: the wheel is built from the sdist, so no stale build/ files get in),
notebooks/<lab>.ipynb (exercises) and solutions/<lab>.ipynb (executed, outputs cleaned) with the
course's install source filled in, nbgrader/ (with `nbgrader=True`: an nbgrader course folder, see
`saelab.course.grading`) and manifest.json (saelab's version, the install source, and each file's
sha256). The solutions are checked (no drift, no leak) before anything is published. DIR is written
like every saelab folder (`files.atomic_folder`): into a pid-tagged folder beside it, swapped in at
the end; a failed release leaves no DIR behind, and a killed one's folder is removed by the next. A
release holds DIR's writer lock (`files.writer_lock`) throughout: a second release into DIR is refused.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from saelab.course import grading, notebooks, regenerate
from saelab.files import atomic_folder, atomic_write_text
from saelab.utils import ASSETS_DIR
from saelab.validate import check_install_source

MANIFEST = "manifest.json"


def project_root() -> Path:
    """The folder with saelab's pyproject.toml (a source checkout), else FileNotFoundError."""
    root = ASSETS_DIR.parents[1]
    if not (root / "pyproject.toml").is_file():
        raise FileNotFoundError(f"project: no pyproject.toml in {root}; release from a source checkout of saelab")
    return root


def build_wheel(project: str | Path, out: str | Path) -> Path:
    """Build saelab's sdist and, from it, its wheel into `out` (needs `build`); returns the wheel's path."""
    out = Path(out)
    command = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(project)]
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(out.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"building the wheel failed ({tail[0][:200]}); is the `build` package installed? "
                           "(pip install 'saelab[release]')")
    return wheels[0]


def manifest(folder: Path, install_source: str) -> dict:
    """saelab's version, the install source, and {relative path: sha256} of every file under `folder`."""
    from saelab import __version__
    files = {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    return {"saelab_version": __version__, "install_source": install_source, "files": files}


def _check_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"folder: {folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        raise FileExistsError(f"folder: {folder} exists and is not empty; remove it or name a new one")


def release(folder: str | Path, install_source: str, sources=None, nbgrader: bool = False,
            model: str | None = None, timeout: int = 900, project: str | Path | None = None,
            wheel: bool = True) -> Path:
    """Write the course's release folder (see the module docstring); returns its path.

    `project` is the source checkout to build the wheel from (default: saelab's own); `wheel=False`
    skips the wheel (e.g. when the install source is a git URL).
    """
    folder = Path(folder)
    check_install_source("install_source", install_source)   # before the slow wheel build
    _check_folder(folder)
    with atomic_folder(folder, lock=True) as work:   # built beside `folder`, swapped in whole; a killed
        if wheel:      # release's temp folder is reclaimed by the next one; a second release of `folder` is refused
            build_wheel(project_root() if project is None else project, work / "dist")
        notebooks.build(work, sources, install_source)
        regenerate.execute(work, sources, model=model, timeout=timeout, install_source=install_source)
        problems = notebooks.check(work, sources, install_source)
        if problems:
            raise RuntimeError(f"the release's notebooks do not check: {problems[0]}")
        if nbgrader:
            grading.build_nbgrader(work / "nbgrader", sources, install_source)
        text = json.dumps(manifest(work, install_source), indent=1, sort_keys=True) + "\n"
        atomic_write_text(work / MANIFEST, text)
    return folder
