"""The nbgrader version of a lab: `saelab notebooks build --nbgrader DIR`.

`build_nbgrader(DIR)` writes DIR/source/<lab>/<lab>.ipynb, an nbgrader *source* notebook, so that
DIR is an nbgrader course folder: `cd DIR && nbgrader generate_assignment <lab>` writes the
students' version (release/), and `nbgrader autograde <lab>` grades submissions (submitted/).

Cells, from the lab source (the cells students see: solution-only cells are left out):
- a code cell with a `# BEGIN SOLUTION` region: an nbgrader solution cell ("autograded answer"),
  markers kept; nbgrader replaces each region with its own stub (`# YOUR CODE HERE` /
  `raise NotImplementedError()`), so a region's `# STUB:` lines are not used here;
- a markdown cell with a region and no `STUB:` lines (a written answer): a manually graded
  answer worth `written_points`; a markdown region with `STUB:` lines is text that differs
  between the notebooks (such as the title's note), shown as in the exercise notebook;
- a check cell: an autograded test cell worth `points` (a check raises when the answer is wrong);
- every other cell: read-only.
grade ids are the cells' stable ids (`check-<id>`, `answer-<id>`, `cell-<id>`).
"""
from __future__ import annotations

import copy
from pathlib import Path

from saelab.course import notebooks
from saelab.files import atomic_write_text
from saelab.validate import check_float

SCHEMA_VERSION = 3


GRADE_ID_PREFIX = {"check": "check", "answer": "answer", "written": "answer", "locked": "cell"}


def _nbgrader(cell_id: str, role: str, points: float) -> dict:
    """nbgrader cell metadata for a role: "check" (test), "answer", "written" or "locked"."""
    grade = role in ("check", "written")
    meta = {"grade": grade, "solution": role in ("answer", "written"), "locked": role in ("check", "locked"),
            "grade_id": f"{GRADE_ID_PREFIX[role]}-{cell_id}", "schema_version": SCHEMA_VERSION, "task": False}
    if grade:
        meta["points"] = points
    return meta


def _role(cell: notebooks.SourceCell) -> str:
    if "check" in cell.tags:
        return "check"
    if not cell.has_solution:
        return "locked"
    if cell.kind == "code":
        return "answer"
    has_stub = any(line.strip().startswith(notebooks.STUB) for line in cell.source.splitlines())
    return "locked" if has_stub else "written"


def render_nbgrader(cells: list[notebooks.SourceCell], install_source: str | None = None,
                    points: float = 1, written_points: float = 1):
    """The nbgrader source notebook of a lab's cells (see the module docstring)."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    check_float("points", points, minimum=0.0, strict=True)
    check_float("written_points", written_points, minimum=0.0, strict=True)
    kept = [(c, i) for c, i in zip(cells, notebooks.cell_ids(cells)) if c.only != "solution"]
    roles = [_role(c) for c, _ in kept]
    texts = [c.text("marked" if r in ("answer", "written") else "exercise") for (c, _), r in zip(kept, roles)]
    texts = notebooks.fill_install_source(texts, install_source)
    nb_cells = []
    for (cell, cell_id), role, text in zip(kept, roles, texts):
        meta = {"nbgrader": _nbgrader(cell_id, role, written_points if role == "written" else points)}
        make = new_markdown_cell if cell.kind == "markdown" else new_code_cell
        nb_cells.append(make(text, id=cell_id, metadata=meta))
    nb = new_notebook(cells=nb_cells, metadata=copy.deepcopy(notebooks.NOTEBOOK_METADATA))
    nbformat.validate(nb)
    return nb


def nbgrader_target(folder: str | Path, source: str | Path) -> Path:
    """FOLDER/source/<lab>/<lab>.ipynb: where nbgrader looks for the assignment <lab>'s source."""
    stem = Path(source).stem
    return Path(folder) / "source" / stem / f"{stem}.ipynb"


def build_nbgrader(folder: str | Path, sources=None, install_source: str | None = None,
                   points: float = 1) -> list[Path]:
    """Write each lab's nbgrader source notebook into the course folder `folder`; returns the files."""
    folder, sources = notebooks.resolve(folder, sources)
    written = []
    for source in sources:
        nb = render_nbgrader(notebooks.read_source(source), install_source, points)
        path = nbgrader_target(folder, source)
        text = notebooks.dumps(nb)
        if not (path.is_file() and path.read_bytes() == text.encode("utf-8")):
            written.append(atomic_write_text(path, text))
    return written
