"""The nbgrader version of a lab: cell roles and metadata, then nbgrader itself grades a reference
submission at full marks and a mistaken one below, on the mistaken exercise's check only."""
import os
import sys
from pathlib import Path

import nbformat
import pytest

from saelab.course import grading, notebooks

LAB = '''\
# A tiny lab for the grading tests.

# %% [markdown]
# # Lab G
# BEGIN SOLUTION
# **Solutions.**
# STUB: **Exercises.**
# END SOLUTION

# %%
INSTALL_SOURCE = None

# %%
def square(x):
    # BEGIN SOLUTION
    return x * x
    # END SOLUTION

# %% tags=["check"]
assert square(3) == 9, "square(3) should be 9"

# %%
def cube(x):
    # BEGIN SOLUTION
    return x ** 3
    # END SOLUTION

# %% tags=["check"]
assert cube(2) == 8, "cube(2) should be 8"

# %% [markdown]
# Why?
# BEGIN SOLUTION
# Because.
# END SOLUTION

# %% tags=["solution-only"]
print("only for instructors")
'''


@pytest.fixture
def course(tmp_path):
    source = tmp_path / "lab_g.py"
    source.write_text(LAB, encoding="utf-8")
    folder = tmp_path / "course"
    assert grading.build_nbgrader(folder, [source], install_source="saelab-0.1.0-py3-none-any.whl") == [
        folder / "source" / "lab_g" / "lab_g.ipynb"]
    return source, folder


def test_cells_get_nbgrader_roles(course):
    source, folder = course
    nb = nbformat.read(folder / "source" / "lab_g" / "lab_g.ipynb", as_version=4)
    meta = [c.metadata["nbgrader"] for c in nb.cells]
    roles = [(m["grade"], m["solution"], m["locked"], m.get("points")) for m in meta]
    assert roles == [(False, False, True, None),   # the title: read-only, the exercise notebook's text
                     (False, False, True, None),   # the install cell
                     (False, True, False, None),   # square: an autograded answer
                     (True, False, True, 1),       # its check: a test cell worth 1 point
                     (False, True, False, None),
                     (True, False, True, 1),
                     (True, True, False, 1)]       # the written answer: graded by hand
    assert nb.cells[0].source == "# Lab G\n**Exercises.**"
    assert nb.cells[1].source == "INSTALL_SOURCE = 'saelab-0.1.0-py3-none-any.whl'"
    assert nb.cells[2].source == "def square(x):\n    # BEGIN SOLUTION\n    return x * x\n    # END SOLUTION"
    assert not any("only for instructors" in c.source for c in nb.cells)
    ids = notebooks.cell_ids(notebooks.read_source(source))
    assert meta[3]["grade_id"] == f"check-{ids[3]}" and meta[2]["grade_id"] == f"answer-{ids[2]}"
    assert grading.build_nbgrader(folder, [source], install_source="saelab-0.1.0-py3-none-any.whl") == []


def test_points_are_checked(course):
    source, _ = course
    with pytest.raises(ValueError, match=r"^points: expected a finite number > 0.0, got int 0"):
        grading.render_nbgrader(notebooks.read_source(source), points=0)
    with pytest.raises(ValueError, match=r"^written_points: expected a finite number > 0.0, got bool True"):
        grading.render_nbgrader(notebooks.read_source(source), written_points=True)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Object of type")  # nbgrader's own SQLAlchemy warnings
def test_nbgrader_grades_a_reference_and_a_mistaken_submission(course, monkeypatch):
    from nbgrader.api import Gradebook
    from nbgrader.apps import NbGraderAPI
    from traitlets.config import Config

    _, folder = course
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])  # for alembic
    config = Config()
    config.CourseDirectory.root = str(folder)
    config.ExecutePreprocessor.timeout = 1800
    api = NbGraderAPI(config=config)
    assert api.generate_assignment("lab_g")["success"]
    released = nbformat.read(folder / "release" / "lab_g" / "lab_g.ipynb", as_version=4)
    assert "raise NotImplementedError()" in released.cells[2].source and "x * x" not in released.cells[2].source
    answers = nbformat.read(folder / "source" / "lab_g" / "lab_g.ipynb", as_version=4)
    for student, mistake in (("reference", None), ("mistaken", ("return x ** 3", "return x * 3"))):
        nb = nbformat.from_dict(answers)
        if mistake:
            nb.cells[4].source = nb.cells[4].source.replace(*mistake)
        (folder / "submitted" / student / "lab_g").mkdir(parents=True)
        nbformat.write(nb, folder / "submitted" / student / "lab_g" / "lab_g.ipynb")
        result = api.autograde("lab_g", student)
        assert result["success"], result.get("error")
    with Gradebook(f"sqlite:///{folder / 'gradebook.db'}") as gradebook:
        scores = {s: {g.name.split("-")[0] + str(i): g.auto_score
                      for i, g in enumerate(gradebook.find_submission_notebook("lab_g", "lab_g", s).grades)}
                  for s in ("reference", "mistaken")}
    assert scores["reference"] == {"check0": 1.0, "check1": 1.0, "answer2": None}  # written answer: by hand
    assert scores["mistaken"] == {"check0": 1.0, "check1": 0.0, "answer2": None}
