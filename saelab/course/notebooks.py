"""One lab source -> an exercise notebook (notebooks/) and a solution notebook (solutions/).

A lab source is a percent-format Python file, read with Jupytext (so Jupytext, VS Code and Spyder
read it too). Cell tags use Jupytext's cell metadata syntax:

    # %% [markdown]                           a markdown cell (every line `#` or `# text`)
    # %%                                      a code cell
    # %% tags=["solution-only"]               only in the solution notebook (also "exercise-only")
    # %% [markdown] tags=["exercise-only"]    a markdown cell with a tag
    # %% tags=["check"]                       a check cell: tagged `raises-exception` in the exercise
    #                                         notebook, where the exercise it checks is unfinished

saelab's own part is small. In a cell, the lines between `# BEGIN SOLUTION` and `# END SOLUTION`
(the nbgrader / otter convention) appear only in the solution notebook. The exercise notebook gets
a stub instead: the region's `# STUB: <line>` lines (each without its `# STUB: ` prefix, at its
own indentation), or else `raise NotImplementedError()` (markdown: "*Write your answer here.*")
at the marker's indentation. nbval tags (`raises-exception`, `nbval-skip`, `nbval-ignore-output`,
`nbval-check-output`) pass through to the cell's metadata. Lines before the first `# %%` are a
header for the source's readers and go to neither notebook.

One code line may read `INSTALL_SOURCE = None` (at column 0): `install_source=` (the CLI's
`--install-source`) writes the course's wheel or URL there, as a Python string.

Cell ids hash the cell's source lines (numbered when two cells are identical): rebuilding an
unchanged source writes the same bytes (nbformat 4.5 JSON, sorted keys, trailing newline).
`build` writes, `check` finds drift and leaks; `saelab.course.regenerate` executes the solutions.
"""
from __future__ import annotations

import copy
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from saelab.files import atomic_write_text
from saelab.utils import ASSETS_DIR
from saelab.validate import check_file_name, check_install_source

LABS_DIR = ASSETS_DIR / "labs"
VARIANTS = ("exercise", "solution")
VARIANT_DIRS = {"exercise": "notebooks", "solution": "solutions"}
NBVAL_TAGS = ("raises-exception", "nbval-skip", "nbval-ignore-output", "nbval-check-output")
STRUCTURE_TAGS = ("solution-only", "exercise-only", "check")
BEGIN, END, STUB = "BEGIN SOLUTION", "END SOLUTION", "STUB:"
CODE_STUB = "raise NotImplementedError()"
MARKDOWN_STUB = "*Write your answer here.*"
INSTALL_LINE = "INSTALL_SOURCE = None"
NOTEBOOK_METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}
# Jupytext's percent format; magics stay comments (the sources hold none, and `# %` lines stay text)
JUPYTEXT_FORMAT = {"extension": ".py", "format_name": "percent", "comment_magics": False}
JUPYTEXT_LAYOUT_KEYS = ("lines_to_next_cell", "region_name")  # Jupytext's own round-trip keys
_MARKER = re.compile(r"^# %%( .*)?$")
_LEAK_MIN_CHARS = 8


class SourceError(ValueError):
    """A lab source that does not parse; the message names the file and line."""


@dataclass(frozen=True)
class SourceCell:
    """One cell of a lab source: `source` as Jupytext reads it, `raw` the lines of the file."""
    kind: str                  # "code" | "markdown"
    source: str                # the cell's text (markdown uncommented), markers still in
    raw: tuple[str, ...]       # the file's lines of the cell (for ids and messages)
    tags: tuple[str, ...]      # pass-through tags and "check"
    only: str | None           # None | "solution" | "exercise"
    line: int                  # 1-based line of the cell's `# %%` marker

    @property
    def has_solution(self) -> bool:
        return any(_marker(self, line) == BEGIN for line in self.source.splitlines())

    def text(self, variant: str) -> str:
        """The cell's text in a variant: "exercise", "solution", or "marked" (the solution with its
        BEGIN/END markers kept and STUB lines dropped: nbgrader's source convention)."""
        return "\n".join(_solution_lines(self, variant))


def _marker(cell: SourceCell, line: str) -> str | None:
    """BEGIN, END or STUB when `line` is that marker in `cell` (code: `# ` before it), else None."""
    text = line.strip()
    if cell.kind == "code":
        if not text.startswith("# "):
            return None
        text = text[2:]
    for marker in (BEGIN, END):
        if text == marker:
            return marker
    return STUB if text.startswith(STUB) else None


def _solution_lines(cell: SourceCell, variant: str) -> list[str]:
    """Apply the BEGIN/END SOLUTION markers for one variant (markers validated at parse time)."""
    out: list[str] = []
    region: list[str] | None = None
    stubs: list[str] = []
    indent = ""
    for line in cell.source.splitlines():
        marker = _marker(cell, line)
        if marker == BEGIN:
            region, stubs, indent = [], [], line[: len(line) - len(line.lstrip())]
            if variant == "marked":
                out.append(line)
        elif marker == END:
            if variant != "exercise":
                out.extend(region + ([line] if variant == "marked" else []))
            else:
                out.extend(stubs or [indent + (CODE_STUB if cell.kind == "code" else MARKDOWN_STUB)])
            region = None
        elif marker == STUB and region is not None:
            prefix = line[: len(line) - len(line.lstrip())]
            stub = line.strip()[len(STUB) + (2 if cell.kind == "code" else 0):]
            stubs.append(prefix + (stub[1:] if stub.startswith(" ") else stub))
        elif region is not None:
            region.append(line)
        else:
            out.append(line)
    return out


def parse_source(text: str, name: str = "<source>") -> list[SourceCell]:
    """Read a percent-format lab source with Jupytext; SourceError names the line of any mistake."""
    import jupytext

    if not isinstance(text, str):
        raise TypeError(f"text: expected the source as a str, got {type(text).__name__}")
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("# %%")]
    if not starts:
        raise SourceError(f"{name}: no cells (a cell starts with a `# %%` line)")
    for number, line in enumerate(lines[: starts[0]], start=1):
        if line.strip() and not line.startswith("#"):
            raise SourceError(f"{name}, line {number}: code before the first `# %%` marker; "
                              "only comments may come before the first cell")
    for i in starts:
        if not _MARKER.match(lines[i].rstrip()):
            raise SourceError(f"{name}, line {i + 1}: a cell marker must read `# %%`, `# %% [markdown]` "
                              f"or `# %% tags=[\"check\"]`, got {lines[i]!r}")
    nb = jupytext.reads("\n".join(lines[starts[0]:]) + "\n", fmt=JUPYTEXT_FORMAT)
    if len(nb.cells) != len(starts):
        raise SourceError(f"{name}: Jupytext read {len(nb.cells)} cells from {len(starts)} `# %%` markers")
    ends = starts[1:] + [len(lines)]
    return [_make_cell(name, start + 1, cell, _trim(lines[start + 1:end]))
            for cell, start, end in zip(nb.cells, starts, ends)]


def _trim(lines: list[str]) -> tuple[str, ...]:
    lines = [line.rstrip() for line in lines]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return tuple(lines)


def _cell_tags(name: str, line: int, cell) -> list[str]:
    """The tags of a Jupytext cell; any other metadata (e.g. an old `[check]` title) is an error."""
    where = f"{name}, line {line}"
    extra = sorted(k for k in cell.metadata if k not in ("tags",) + JUPYTEXT_LAYOUT_KEYS)
    if extra == ["title"] and cell.metadata["title"].startswith("["):
        raise SourceError(f"{where}: write cell tags in Jupytext's syntax, e.g. `# %% tags=[\"check\"]` "
                          f"or `# %% [markdown] tags=[\"exercise-only\"]`, not {cell.metadata['title']!r}")
    if extra:
        raise SourceError(f"{where}: unsupported cell metadata {', '.join(extra)} (only tags=[...])")
    tags = list(cell.metadata.get("tags", []))
    allowed = STRUCTURE_TAGS + NBVAL_TAGS
    for tag in tags:
        if tag not in allowed:
            raise SourceError(f"{where}: unknown cell tag {tag!r}; allowed: {', '.join(allowed)}")
    if "solution-only" in tags and "exercise-only" in tags:
        raise SourceError(f"{where}: a cell cannot be both solution-only and exercise-only")
    return tags


def _make_cell(name: str, line: int, cell, raw: tuple[str, ...]) -> SourceCell:
    tags = _cell_tags(name, line, cell)
    only = "solution" if "solution-only" in tags else "exercise" if "exercise-only" in tags else None
    source = "\n".join(text.rstrip() for text in cell.source.splitlines())
    made = SourceCell(kind=cell.cell_type, source=source.strip("\n"), raw=raw,
                      tags=tuple(t for t in tags if t in NBVAL_TAGS or t == "check"), only=only, line=line)
    if made.kind == "markdown":
        for offset, text in enumerate(raw):
            if text and not text.startswith("#"):
                raise SourceError(f"{name}, line {line + 1 + offset}: every line of a markdown cell must start "
                                  f"with `#`, got {text!r}")
    _check_markers(name, made)
    if not raw:
        raise SourceError(f"{name}, line {line}: empty cell")
    return made


def _check_markers(name: str, cell: SourceCell) -> None:
    """BEGIN/END pair up, STUB lines sit inside a region, no region in an exercise-only cell."""
    inside = False
    for offset, text in enumerate(cell.raw):
        marker = _marker(cell, text[2:] if cell.kind == "markdown" and text.startswith("# ") else text)
        where = f"{name}, line {cell.line + 1 + offset}"
        if marker == BEGIN:
            if inside:
                raise SourceError(f"{where}: `# {BEGIN}` inside another solution region (missing `# {END}`?)")
            if cell.only == "exercise":
                raise SourceError(f"{where}: solution markers in an exercise-only cell")
            inside = True
        elif marker == END:
            if not inside:
                raise SourceError(f"{where}: `# {END}` without a `# {BEGIN}` before it")
            inside = False
        elif marker == STUB and not inside:
            raise SourceError(f"{where}: `# {STUB}` outside a solution region")
    if inside:
        raise SourceError(f"{name}, line {cell.line}: a `# {BEGIN}` in this cell has no `# {END}`")


def cell_ids(cells: list[SourceCell]) -> list[str]:
    """Stable ids: a hash of each cell's lines in the source, numbered when identical cells repeat."""
    ids, seen = [], {}
    for cell in cells:
        digest = hashlib.sha1(("\n".join(cell.raw) + f"\0{cell.kind}\0{cell.only}").encode()).hexdigest()[:10]
        seen[digest] = seen.get(digest, 0) + 1
        ids.append(digest if seen[digest] == 1 else f"{digest}-{seen[digest]}")
    return ids


def fill_install_source(texts: list[str], install_source: str | None) -> list[str]:
    """`texts` (cell sources) with the one `INSTALL_SOURCE = None` line set to `install_source`."""
    if install_source is None:
        return texts
    check_install_source("install_source", install_source)
    hits = [(i, n) for i, text in enumerate(texts) for n, line in enumerate(text.split("\n")) if line == INSTALL_LINE]
    if len(hits) != 1:
        raise SourceError(f"install_source: the lab source needs exactly one line `{INSTALL_LINE}` "
                          f"(at column 0) to fill in, found {len(hits)}")
    (i, n), texts = hits[0], list(texts)
    lines = texts[i].split("\n")
    lines[n] = f"INSTALL_SOURCE = {install_source.strip()!r}"
    texts[i] = "\n".join(lines)
    return texts


def render(cells: list[SourceCell], variant: str, install_source: str | None = None):
    """The nbformat notebook for one variant ("exercise" or "solution"), without outputs."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
    kept = [(cell, cell_id) for cell, cell_id in zip(cells, cell_ids(cells)) if cell.only in (None, variant)]
    texts = fill_install_source([cell.text(variant) for cell, _ in kept], install_source)
    nb_cells = []
    for (cell, cell_id), text in zip(kept, texts):
        tags = list(cell.tags)
        if variant == "exercise" and "check" in tags and "raises-exception" not in tags:
            tags.append("raises-exception")
        make = new_markdown_cell if cell.kind == "markdown" else new_code_cell
        nb_cells.append(make(text, id=cell_id, metadata={"tags": tags} if tags else {}))
    nb = new_notebook(cells=nb_cells, metadata=copy.deepcopy(NOTEBOOK_METADATA))
    nbformat.validate(nb)
    return nb


def dumps(nb) -> str:
    """Deterministic notebook JSON: nbformat's writer (sorted keys, indent 1) plus a trailing newline."""
    import nbformat
    return nbformat.writes(nb, version=4) + "\n"


def without_outputs(nb):
    """A copy of `nb` with code cells' outputs and execution counts cleared."""
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


def resolve(root, sources) -> tuple[Path, list[Path]]:
    """(root folder, lab source paths): defaults `.` and the shipped labs; missing sources refused."""
    root = Path(".") if root is None else Path(root)
    sources = lab_sources() if sources is None else [Path(s) for s in sources]
    for path in sources:
        if not path.is_file():
            raise FileNotFoundError(f"lab source {path} does not exist")
        check_file_name(f"lab source {path}", path.stem)   # notebooks are named after it
    return root, sources


def target(root: str | Path, source: str | Path, variant: str) -> Path:
    """Where a variant of a lab source's notebook lives: ROOT/notebooks/<stem>.ipynb or ROOT/solutions/..."""
    return Path(root) / VARIANT_DIRS[variant] / f"{Path(source).stem}.ipynb"


def read_source(path: str | Path) -> list[SourceCell]:
    path = Path(path)
    return parse_source(path.read_text(encoding="utf-8"), name=str(path))


def read_notebook(path: Path):
    """The notebook at `path`, or None when it is missing or unreadable."""
    import nbformat
    try:
        return nbformat.reads(path.read_bytes().decode("utf-8"), as_version=4)
    except Exception:  # missing, not UTF-8 or not a notebook: callers rewrite or report it
        return None


def _rendered(root, sources, install_source):
    """(source, its cells, variant, the notebook `build` writes, its path under root) for every source
    and variant, the one walk `build` and `check` share."""
    root, sources = resolve(root, sources)
    for source in sources:
        cells = read_source(source)
        for variant in VARIANTS:
            yield source, cells, variant, render(cells, variant, install_source), target(root, source, variant)


def build(root: str | Path | None = None, sources=None, install_source: str | None = None) -> list[Path]:
    """Write every source's exercise and solution notebooks under `root`; returns the files written.

    A file whose content would not change is left alone (for a solution notebook: its sources,
    ids and metadata are unchanged, so its outputs from `execute` stay). When only markdown cells of
    a solution notebook changed, its code cells keep their outputs; when any code cell changed, it is
    written without outputs (run `execute`).
    """
    written = []
    for _, _, variant, nb, path in _rendered(root, sources, install_source):
        text = dumps(nb)
        old = read_notebook(path) if path.is_file() else None
        if old is not None and variant == "solution":
            if dumps(without_outputs(old)) == text:
                continue
            text = dumps(_keep_outputs(nb, old))
        elif old is not None and path.read_bytes() == text.encode("utf-8"):
            continue
        written.append(atomic_write_text(path, text))
    return written


def _keep_outputs(new, old):
    """`new` with the outputs of `old`'s code cells when the code cells (ids, in order) are unchanged."""
    new_code = [c for c in new.cells if c.cell_type == "code"]
    old_code = [c for c in old.cells if c.cell_type == "code"]
    if [(c.get("id"), c.source) for c in old_code] != [(c.id, c.source) for c in new_code]:
        return new
    for cell, before in zip(new_code, old_code):
        cell.outputs, cell.execution_count = before.outputs, before.execution_count
    return new


def solution_only_lines(cells: list[SourceCell]) -> set[str]:
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


def check(root: str | Path | None = None, sources=None, install_source: str | None = None) -> list[str]:
    """Problems with the committed notebooks under `root` (empty list: all good).

    Drift: a notebook differs from what `build` writes (solution notebooks compared without
    outputs and execution counts; exercise notebooks byte for byte). Leak: a solution line in an
    exercise notebook's cell sources.
    """
    problems = []
    for source, cells, variant, rendered, path in _rendered(root, sources, install_source):
        expected = dumps(rendered)
        nb = read_notebook(path)
        if nb is None:
            state = "not a readable notebook" if path.is_file() else "missing"
            problems.append(f"{path}: {state}; run `saelab notebooks build`")
            continue
        actual = path.read_bytes().decode("utf-8")
        if variant == "exercise":
            lines = {line.strip() for cell in nb.cells for line in cell.source.splitlines()}
            leaked = sorted(solution_only_lines(cells) & lines)
            if leaked:
                problems.append(f"{path}: leak: {len(leaked)} solution line(s) in the exercise notebook, "
                                f"e.g. {leaked[0][:70]!r}")
        else:
            actual = dumps(without_outputs(nb))
        if actual != expected:
            problems.append(f"{path}: drift from {source.name} ({_first_difference(expected, actual)}); "
                            "run `saelab notebooks build`")
    return problems
