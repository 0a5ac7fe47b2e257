"""The published notebook run as a student runs it on Colab: from its first cell, in a Python that has
only what Colab preinstalls (torch, Jupyter, numpy, pandas, matplotlib, transformers) and no saelab.

`.ci/run`'s Colab lane sets SAELAB_COLAB_PYTHON (that Python, a fresh venv) and SAELAB_COLAB_WHEEL (the
wheel CI built); elsewhere this test skips. It releases the lab with `saelab release --install-source
WHEEL`, fills the exercise notebook's stubs with the released solutions' cells, and executes it with
nbclient in a kernel of that Python, started in a folder that also holds a `saelab/` folder (what
`git clone` of saelab's repository leaves in Colab's /content; it imports as a namespace package). The
install cell must install the wheel into the kernel's own environment without changing Colab's
packages; the next cells must import saelab without a restart, and every check must pass. Both the
release and the run use the lab's reduced sizes (SAELAB_LAB_SIZE=small): this test is about installing
and running; the lane checks the full-size numbers with nbval.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from saelab.checks.core import EXERCISES

N_EXERCISES = len(EXERCISES)   # one stub cell and one check cell each

PYTHON = os.environ.get("SAELAB_COLAB_PYTHON", "").strip()
WHEEL = os.environ.get("SAELAB_COLAB_WHEEL", "").strip()
#: What Colab preinstalls and installing saelab must not change.
COLAB_PACKAGES = ("torch", "numpy", "pandas", "matplotlib", "transformers")
LAB = "lab_c4.ipynb"
SMALL = {"SAELAB_MODEL": "tiny", "SAELAB_PROGRESS": "0", "SAELAB_LAB_SIZE": "small"}
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (PYTHON and WHEEL), reason="runs in .ci/run's Colab lane, which sets SAELAB_COLAB_PYTHON "
                       "(a fresh Python with Colab's preinstalled packages, without saelab) and SAELAB_COLAB_WHEEL"),
]


def _versions(python: str) -> dict:
    """{distribution: version or None} in `python`'s environment, for COLAB_PACKAGES and saelab."""
    code = ("import importlib.metadata as m, json, sys\n"
            "def v(n):\n"
            "    try:\n        return m.version(n)\n"
            "    except m.PackageNotFoundError:\n        return None\n"
            "print(json.dumps({n: v(n) for n in sys.argv[1:]}))")
    done = subprocess.run([python, "-c", code, *COLAB_PACKAGES, "saelab"], capture_output=True, text=True,
                          check=True, env=_kernel_env(python), cwd=Path(python).parent)
    return json.loads(done.stdout)


def _kernel_env(python: str) -> dict:
    """This environment without the driver's venv or PYTHONPATH, with `python`'s bin/ first on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join([str(Path(python).parent), env.get("PATH", "")])
    env.update(SMALL)
    return env


def _saelab_cli() -> str:
    """The `saelab` command of the environment running this test."""
    found = shutil.which("saelab", path=str(Path(sys.executable).parent)) or shutil.which("saelab")
    assert found, "the `saelab` command is not installed beside this test's Python"
    return found


def _filled(exercise, solution):
    """The exercise notebook with each stub cell replaced by the solution cell of the same id."""
    answers = {c.id: c.source for c in solution.cells if c.cell_type == "code"}
    stubs = [c for c in exercise.cells if c.cell_type == "code" and "raise NotImplementedError()" in c.source]
    assert len(stubs) == N_EXERCISES, f"expected the lab's {N_EXERCISES} exercises, found {len(stubs)} stub cells"
    for cell in stubs:
        assert cell.id in answers, f"stub cell {cell.id} has no solution cell with its id"
        cell.source = answers[cell.id]
    return exercise


def _shown(cell) -> str:
    return ANSI.sub("", "".join(o.get("text", "") if o.output_type == "stream" else "\n".join(o.get("traceback", []))
                                for o in cell.get("outputs", [])))


def test_the_released_notebook_runs_from_its_first_cell_in_colabs_python(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    before = _versions(PYTHON)
    if before["saelab"] is not None:
        pytest.fail(f"SAELAB_COLAB_PYTHON ({PYTHON}) already has saelab {before['saelab']}: the test needs "
                    "Colab's packages without saelab (the Colab lane runs it before installing saelab)")
    assert all(before[name] for name in COLAB_PACKAGES), f"not Colab's packages: {before}"

    release = tmp_path / "course"
    done = subprocess.run([_saelab_cli(), "release", str(release), "--install-source", WHEEL, "--no-wheel",
                           "--model", "tiny"], capture_output=True, text=True, env={**os.environ, **SMALL})
    assert done.returncode == 0, f"saelab release failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    exercise = nbformat.read(release / "notebooks" / LAB, as_version=4)
    solution = nbformat.read(release / "solutions" / LAB, as_version=4)
    first = next(c for c in exercise.cells if c.cell_type == "code")
    assert f"INSTALL_SOURCE = {WHEEL!r}" in first.source
    nb = _filled(exercise, solution)

    content = tmp_path / "content"  # Colab's working folder, with a clone of saelab's repository in it
    (content / "saelab").mkdir(parents=True)
    (content / "saelab" / "README.md").write_text("saelab's repository, as `git clone` leaves it\n", encoding="utf-8")
    spec = tmp_path / "jupyter" / "kernels" / "colab"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [PYTHON, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Colab's Python", "language": "python"}), encoding="utf-8")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    client = NotebookClient(nb, timeout=900, kernel_name="colab", allow_errors=True,
                            resources={"metadata": {"path": str(content)}})
    client.execute(env=_kernel_env(PYTHON))

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), "some cells did not run"
    for n, cell in enumerate(code):
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"code cell {n} ({cell.id}) failed:\n{_shown(cell)[-3000:]}"
    checks = [c for c in code if "check" in c.metadata.get("tags", [])]
    assert len(checks) == N_EXERCISES and all("✅" in _shown(c) for c in checks), [_shown(c)[:200] for c in checks]

    after = _versions(PYTHON)
    assert after["saelab"], "the install cell did not install saelab into the kernel's environment"
    changed = {n: (before[n], after[n]) for n in COLAB_PACKAGES if before[n] != after[n]}
    assert not changed, f"installing saelab changed Colab's packages (before, after): {changed}"
