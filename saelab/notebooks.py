"""One lab source -> an exercise notebook (notebooks/) and a solution notebook (solutions/).

A lab source is a percent-format Python file (the format Jupytext, VS Code and Spyder read):

    # %% [markdown]                 a markdown cell: every line is `#` or `# text`
    # # Lab title
    # %%                            a code cell
    import saelab
    # %% [solution-only]            only in the solution notebook (also: [exercise-only])
    # %% [markdown, exercise-only]  tags combine, separated by commas
    # %% [check]                    a check cell: tagged `raises-exception` in the exercise
    #                               notebook, where the exercise it checks is unfinished

In a cell, the lines between `# BEGIN SOLUTION` and `# END SOLUTION` (the nbgrader / otter
convention) appear only in the solution notebook. The exercise notebook gets a stub instead: the
region's `# STUB: <line>` lines (each without its `# STUB: ` prefix, at its own indentation), or
else `raise NotImplementedError()` (markdown: "*Write your answer here.*") at the marker's
indentation. nbval tags (`raises-exception`, `nbval-skip`, `nbval-ignore-output`,
`nbval-check-output`) pass through to the cell's metadata. Lines before the first `# %%` are a
header for the source's readers and go to neither notebook.

Cell ids are a hash of the cell's source text (numbered when two cells are identical), so
rebuilding an unchanged source writes the same bytes and editing one cell changes one id.
Notebooks are written as nbformat 4.5 JSON with sorted keys and a trailing newline.

`build` writes both notebooks (exercise notebooks carry no outputs; a solution notebook whose
sources are unchanged keeps its outputs, otherwise it is written without and `execute` fills
them in). `check` reports drift (a committed notebook differs from what `build` writes; solution
notebooks are compared without outputs and execution counts) and leaks (a solution line in an
exercise notebook). `execute` re-runs the solution notebooks in a Jupyter kernel to regenerate
their outputs.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

LABS_DIR = Path(__file__).resolve().parent / "assets" / "labs"
VARIANTS = ("exercise", "solution")
VARIANT_DIRS = {"exercise": "notebooks", "solution": "solutions"}
NBVAL_TAGS = ("raises-exception", "nbval-skip", "nbval-ignore-output", "nbval-check-output")
STRUCTURE_TAGS = ("markdown", "solution-only", "exercise-only", "check")
BEGIN, END, STUB = "# BEGIN SOLUTION", "# END SOLUTION", "# STUB:"
CODE_STUB = "raise NotImplementedError()"
MARKDOWN_STUB = "*Write your answer here.*"
NOTEBOOK_METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}
_MARKER = re.compile(r"^# %%(?:\s+\[(?P<tags>[^\]]*)\])?\s*$")
_LEAK_MIN_CHARS = 8


class SourceError(ValueError):
    """A lab source that does not parse; the message names the file and line."""


@dataclass(frozen=True)
class SourceCell:
    """One cell of a lab source. `lines` are the raw source lines (markdown still commented)."""
    kind: str                  # "code" | "markdown"
    lines: tuple[str, ...]
    tags: tuple[str, ...]      # pass-through tags and "check"
    only: str | None           # None | "solution" | "exercise"
    line: int                  # 1-based line of the cell's `# %%` marker

    def text(self, variant: str) -> str:
        """The cell's source in a notebook variant ("exercise" or "solution")."""
        lines = _solution_lines(self, variant)
        if self.kind == "markdown":
            lines = [_uncomment(line) for line in lines]
        return "\n".join(lines)


def _uncomment(line: str) -> str:
    return line[2:] if line.startswith("# ") else line[1:]


def _solution_lines(cell: SourceCell, variant: str) -> list[str]:
    """Apply the BEGIN/END SOLUTION markers for one variant (markers validated at parse time)."""
    out: list[str] = []
    region: list[str] | None = None
    stubs: list[str] = []
    indent = ""
    for line in cell.lines:
        stripped = line.strip()
        if stripped == BEGIN:
            region, stubs, indent = [], [], line[: len(line) - len(line.lstrip())]
        elif stripped == END:
            if variant == "solution":
                out.extend(region)
            elif stubs:
                out.extend(stubs)
            elif cell.kind == "code":
                out.append(indent + CODE_STUB)
            else:
                out.append("# " + MARKDOWN_STUB)
            region = None
        elif region is not None and stripped.startswith(STUB):
            prefix = line[: len(line) - len(line.lstrip())]
            stub = stripped[len(STUB):]
            stub = stub[1:] if stub.startswith(" ") else stub
            stubs.append(prefix + ("# " if cell.kind == "markdown" else "") + stub)
        elif region is not None:
            region.append(line)
        else:
            out.append(line)
    return out


def parse_source(text: str, name: str = "<source>") -> list[SourceCell]:
    """Split a percent-format lab source into cells; SourceError names the line of any mistake."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected the source as a str, got {type(text).__name__}")
    cells: list[SourceCell] = []
    header: tuple[int, list[str]] | None = None
    body: list[str] = []

    def close():
        if header is not None:
            cells.append(_make_cell(name, header[0], header[1], body))

    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("# %%"):
            match = _MARKER.match(line.rstrip())
            if not match:
                raise SourceError(f"{name}, line {number}: a cell marker must read `# %%` or `# %% [tag, tag]`, "
                                  f"got {line!r}")
            close()
            tags = [t.strip() for t in (match.group("tags") or "").split(",") if t.strip()]
            header, body = (number, tags), []
        elif header is not None:
            body.append(line.rstrip())
        elif line.strip() and not line.startswith("#"):
            raise SourceError(f"{name}, line {number}: code before the first `# %%` marker; "
                              "only comments may come before the first cell")
    close()
    if not cells:
        raise SourceError(f"{name}: no cells (a cell starts with a `# %%` line)")
    return cells


def _make_cell(name: str, line: int, tags: list[str], body: list[str]) -> SourceCell:
    allowed = STRUCTURE_TAGS + NBVAL_TAGS
    for tag in tags:
        if tag not in allowed:
            raise SourceError(f"{name}, line {line}: unknown cell tag {tag!r}; allowed: {', '.join(allowed)}")
    while body and not body[0].strip():
        body.pop(0)
    while body and not body[-1].strip():
        body.pop()
    kind = "markdown" if "markdown" in tags else "code"
    only = "solution" if "solution-only" in tags else "exercise" if "exercise-only" in tags else None
    if "solution-only" in tags and "exercise-only" in tags:
        raise SourceError(f"{name}, line {line}: a cell cannot be both solution-only and exercise-only")
    if kind == "markdown":
        for offset, text in enumerate(body):
            if text and not text.startswith("#"):
                raise SourceError(f"{name}, line {line + 1 + offset}: every line of a markdown cell must start "
                                  f"with `#`, got {text!r}")
    inside = False
    for offset, text in enumerate(body):
        stripped = text.strip()
        where = f"{name}, line {line + 1 + offset}"
        if stripped == BEGIN:
            if inside:
                raise SourceError(f"{where}: `{BEGIN}` inside another solution region (missing `{END}`?)")
            if only == "exercise":
                raise SourceError(f"{where}: solution markers in an exercise-only cell")
            inside = True
        elif stripped == END:
            if not inside:
                raise SourceError(f"{where}: `{END}` without a `{BEGIN}` before it")
            inside = False
        elif stripped.startswith(STUB) and not inside:
            raise SourceError(f"{where}: `{STUB}` outside a solution region")
    if inside:
        raise SourceError(f"{name}, line {line}: a `{BEGIN}` in this cell has no `{END}`")
    if not body:
        raise SourceError(f"{name}, line {line}: empty cell")
    kept = tuple(t for t in tags if t in NBVAL_TAGS or t == "check")
    return SourceCell(kind=kind, lines=tuple(body), tags=kept, only=only, line=line)


def _cell_ids(cells: list[SourceCell]) -> list[str]:
    """Stable ids: a hash of each cell's raw source, numbered when identical cells repeat."""
    ids, seen = [], {}
    for cell in cells:
        digest = hashlib.sha1(("\n".join(cell.lines) + f"\0{cell.kind}\0{cell.only}").encode()).hexdigest()[:10]
        seen[digest] = seen.get(digest, 0) + 1
        ids.append(digest if seen[digest] == 1 else f"{digest}-{seen[digest]}")
    return ids


def render(cells: list[SourceCell], variant: str):
    """The nbformat notebook for one variant ("exercise" or "solution"), without outputs."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
    nb_cells = []
    for cell, cell_id in zip(cells, _cell_ids(cells)):
        if cell.only is not None and cell.only != variant:
            continue
        tags = list(cell.tags)
        if variant == "exercise" and "check" in tags and "raises-exception" not in tags:
            tags.append("raises-exception")
        metadata = {"tags": tags} if tags else {}
        make = new_markdown_cell if cell.kind == "markdown" else new_code_cell
        nb_cells.append(make(cell.text(variant), id=cell_id, metadata=metadata))
    nb = new_notebook(cells=nb_cells, metadata=json.loads(json.dumps(NOTEBOOK_METADATA)))
    nbformat.validate(nb)
    return nb


def dumps(nb) -> str:
    """Deterministic notebook JSON: nbformat's writer (sorted keys, indent 1) plus a trailing newline."""
    import nbformat
    return nbformat.writes(nb, version=4) + "\n"


def without_outputs(nb):
    """A copy of `nb` with code cells' outputs and execution counts cleared."""
    import copy
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def lab_sources(labs_dir: str | Path | None = None) -> list[Path]:
    """The lab sources (`*.py`) in `labs_dir` (default: the ones saelab ships), sorted by name."""
    folder = LABS_DIR if labs_dir is None else Path(labs_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"labs_dir: {folder} is not a folder")
    sources = sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))
    if not sources:
        raise FileNotFoundError(f"labs_dir: no lab sources (*.py) in {folder}")
    return sources


def _resolve(root, sources) -> tuple[Path, list[Path]]:
    root = Path(".") if root is None else Path(root)
    sources = lab_sources() if sources is None else [Path(s) for s in sources]
    for path in sources:
        if not path.is_file():
            raise FileNotFoundError(f"lab source {path} does not exist")
    return root, sources


def target(root: str | Path, source: str | Path, variant: str) -> Path:
    """Where a variant of a lab source's notebook lives: ROOT/notebooks/<stem>.ipynb or ROOT/solutions/..."""
    return Path(root) / VARIANT_DIRS[variant] / f"{Path(source).stem}.ipynb"


def read_source(path: str | Path) -> list[SourceCell]:
    path = Path(path)
    return parse_source(path.read_text(encoding="utf-8"), name=str(path))


def build(root: str | Path | None = None, sources=None) -> list[Path]:
    """Write every source's exercise and solution notebooks under `root`; returns the files written.

    A file whose content would not change is left alone (for a solution notebook: its sources,
    ids and metadata are unchanged, so its outputs from `execute` stay). When only markdown cells of
    a solution notebook changed, its code cells keep their outputs; when any code cell changed, it is
    written without outputs (run `execute`).
    """
    import nbformat

    root, sources = _resolve(root, sources)
    written = []
    for source in sources:
        cells = read_source(source)
        for variant in VARIANTS:
            nb = render(cells, variant)
            text = dumps(nb)
            path = target(root, source, variant)
            if path.is_file():
                try:
                    current = path.read_bytes().decode("utf-8")
                    old = nbformat.reads(current, as_version=4) if variant == "solution" else None
                except Exception:  # unreadable: rewrite it
                    current = old = None
                if old is not None:
                    if dumps(without_outputs(old)) == text:
                        continue
                    text = dumps(_keep_outputs(nb, old))
                elif current == text:
                    continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text.encode("utf-8"))
            written.append(path)
    return written


def _keep_outputs(new, old):
    """`new` with the outputs of `old`'s code cells when the code cells (ids, in order) are unchanged."""
    new_code = [c for c in new.cells if c.cell_type == "code"]
    old_code = [c for c in old.cells if c.cell_type == "code"]
    if [c.get("id") for c in old_code] != [c.id for c in new_code]:
        return new
    for cell, before in zip(new_code, old_code):
        cell.outputs, cell.execution_count = before.outputs, before.execution_count
    return new


def _solution_only_lines(cells: list[SourceCell]) -> set[str]:
    """Stripped lines that only the solution notebook may hold (long enough to be telling)."""
    solution = {line.strip() for cell in cells if cell.only != "exercise"
                for line in cell.text("solution").splitlines()}
    exercise = {line.strip() for cell in cells if cell.only != "solution"
                for line in cell.text("exercise").splitlines()}
    return {line for line in solution - exercise
            if len(line) >= _LEAK_MIN_CHARS and any(c.isalnum() for c in line)}


def _first_difference(expected: str, actual: str) -> str:
    exp, act = expected.splitlines(), actual.splitlines()
    for number, (a, b) in enumerate(zip(exp, act), start=1):
        if a != b:
            return f"line {number}: expected {a.strip()[:60]!r}, found {b.strip()[:60]!r}"
    return f"expected {len(exp)} lines, found {len(act)}"


def check(root: str | Path | None = None, sources=None) -> list[str]:
    """Problems with the committed notebooks under `root` (empty list: all good).

    Drift: a notebook differs from what `build` writes (solution notebooks compared without
    outputs and execution counts; exercise notebooks byte for byte). Leak: a solution line in an
    exercise notebook's cell sources.
    """
    import nbformat

    root, sources = _resolve(root, sources)
    problems = []
    for source in sources:
        cells = read_source(source)
        for variant in VARIANTS:
            path = target(root, source, variant)
            expected = dumps(render(cells, variant))
            if not path.is_file():
                problems.append(f"{path}: missing; run `saelab notebooks build`")
                continue
            try:
                actual = path.read_bytes().decode("utf-8")
                nb = nbformat.reads(actual, as_version=4)
            except Exception as e:
                problems.append(f"{path}: not a readable notebook ({type(e).__name__}: {str(e)[:80]})")
                continue
            if variant == "exercise":
                lines = {line.strip() for cell in nb.cells for line in cell.source.splitlines()}
                leaked = sorted(_solution_only_lines(cells) & lines)
                if leaked:
                    problems.append(f"{path}: leak: {len(leaked)} solution line(s) in the exercise notebook, "
                                    f"e.g. {leaked[0][:70]!r}")
            else:
                actual = dumps(without_outputs(nb))
            if actual != expected:
                problems.append(f"{path}: drift from {source.name} ({_first_difference(expected, actual)}); "
                                "run `saelab notebooks build`")
    return problems


def execute(root: str | Path | None = None, sources=None, model: str | None = None,
            timeout: int = 900) -> list[Path]:
    """Re-run each source's solution notebook in a fresh kernel and write it with its outputs.

    The kernel runs in `root/solutions` with $SAELAB_MODEL = `model` (default: the environment's,
    else "tiny") and $SAELAB_PROGRESS=0 (no progress bars in committed outputs). A failing cell
    raises RuntimeError naming the notebook and cell; nothing is written for that notebook.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    root, sources = _resolve(root, sources)
    env = {"SAELAB_PROGRESS": "0"}
    if model is not None:
        env["SAELAB_MODEL"] = model
    written = []
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for source in sources:
            path = target(root, source, "solution")
            nb = render(read_source(source), "solution")
            path.parent.mkdir(parents=True, exist_ok=True)
            client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                                    resources={"metadata": {"path": str(path.parent.resolve())}})
            try:
                client.execute()
            except CellExecutionError as e:
                summary = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                raise RuntimeError(f"{path}: a cell failed while executing ({summary})") from None
            nb.metadata = json.loads(json.dumps(NOTEBOOK_METADATA))
            path.write_bytes(dumps(nb).encode("utf-8"))
            written.append(path)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return written
