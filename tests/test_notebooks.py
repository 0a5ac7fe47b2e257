"""One lab source (Jupytext percent format) -> exercise and solution notebooks: markers, stubs, cell kinds,
ids, drift, leaks, the install source."""
import json

import nbformat
import pytest

from saelab.course import notebooks
from saelab.course.notebooks import SourceError

SOURCE = '''\
# A header for the source's readers: goes to neither notebook.

# %% [markdown]
# # Lab X
# BEGIN SOLUTION
# **Solutions**
# STUB: **Exercises**
# END SOLUTION

# %%
import math

# %%
def square(x):
    """x squared."""
    # BEGIN SOLUTION
    return x * x
    # END SOLUTION


def cube(x):
    # BEGIN SOLUTION
    # STUB: result = ...  # your code here
    # STUB: return result
    return math.pow(x, 3)
    # END SOLUTION

# %% tags=["check"]
assert square(3) == 9

# %% [markdown] tags=["exercise-only"]
# Over to you.

# %% tags=["solution-only", "nbval-ignore-output"]
print("the answer is forty-two, printed at length")

# %% [markdown]
# Why does it work?
# BEGIN SOLUTION
# Because multiplication commutes with itself.
# END SOLUTION
'''


@pytest.fixture
def lab(tmp_path):
    source = tmp_path / "lab_x.py"
    source.write_text(SOURCE, encoding="utf-8")
    root = tmp_path / "root"
    notebooks.build(root, [source])
    return source, root


def read(root, variant):
    return nbformat.read(root / notebooks.VARIANT_DIRS[variant] / "lab_x.ipynb", as_version=4)


def test_build_writes_both_notebooks_with_markers_applied(lab):
    _, root = lab
    ex, sol = read(root, "exercise"), read(root, "solution")
    ex_src = [c.source for c in ex.cells]
    sol_src = [c.source for c in sol.cells]
    assert ex_src[0] == "# Lab X\n**Exercises**" and sol_src[0] == "# Lab X\n**Solutions**"
    assert ex_src[2] == ('def square(x):\n    """x squared."""\n    raise NotImplementedError()\n\n\n'
                         'def cube(x):\n    result = ...  # your code here\n    return result')
    assert sol_src[2] == ('def square(x):\n    """x squared."""\n    return x * x\n\n\n'
                          'def cube(x):\n    return math.pow(x, 3)')
    assert "Over to you." in ex_src and "Over to you." not in sol_src
    assert not any("forty-two" in s for s in ex_src)
    assert any("forty-two" in s for s in sol_src)
    assert ex_src[-1] == "Why does it work?\n*Write your answer here.*"
    assert sol_src[-1] == "Why does it work?\nBecause multiplication commutes with itself."
    assert [c.cell_type for c in ex.cells] == ["markdown", "code", "code", "code", "markdown", "markdown"]
    nbformat.validate(ex)
    nbformat.validate(sol)


def test_check_cells_may_raise_only_in_the_exercise_notebook(lab):
    _, root = lab
    tags = {v: [c.metadata.get("tags", []) for c in read(root, v).cells] for v in notebooks.VARIANTS}
    assert ["check", "raises-exception"] in tags["exercise"]
    assert ["check"] in tags["solution"]
    assert ["nbval-ignore-output"] in tags["solution"]


def test_ids_are_stable_shared_and_unique(lab, tmp_path):
    source, root = lab
    ex, sol = read(root, "exercise"), read(root, "solution")
    assert len({c.id for c in sol.cells}) == len(sol.cells)
    assert ex.cells[2].id == sol.cells[2].id  # the same source cell keeps its id in both notebooks
    # editing one cell changes that cell's id only
    source.write_text(SOURCE.replace("import math", "import math  # edited"), encoding="utf-8")
    other = tmp_path / "other"
    notebooks.build(other, [source])
    new = nbformat.read(other / "solutions" / "lab_x.ipynb", as_version=4)
    changed = [a.id != b.id for a, b in zip(sol.cells, new.cells)]
    assert changed == [False, True, False, False, False, False]


def test_identical_cells_get_distinct_ids(tmp_path):
    cells = notebooks.parse_source("# %%\nx = 1\n# %%\nx = 1\n")
    nb = notebooks.render(cells, "solution")
    assert nb.cells[0].id != nb.cells[1].id


def test_rebuilding_an_unchanged_source_changes_no_byte(lab):
    source, root = lab
    before = {p: p.read_bytes() for p in root.rglob("*.ipynb")}
    assert notebooks.build(root, [source]) == []
    assert {p: p.read_bytes() for p in root.rglob("*.ipynb")} == before
    text = (root / "notebooks" / "lab_x.ipynb").read_text(encoding="utf-8")
    assert text.endswith("}\n") and json.loads(text)["nbformat_minor"] == 5
    assert notebooks.check(root, [source]) == []


def test_build_keeps_solution_outputs_while_sources_are_unchanged(lab):
    source, root = lab
    path = root / "solutions" / "lab_x.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="hi\n")]
    nb.cells[1].execution_count = 1
    path.write_text(notebooks.dumps(nb), encoding="utf-8")
    assert notebooks.build(root, [source]) == []
    assert nbformat.read(path, as_version=4).cells[1].outputs[0].text == "hi\n"
    assert notebooks.check(root, [source]) == []  # outputs and execution counts are not drift


def test_check_reports_drift(lab):
    source, root = lab
    path = root / "solutions" / "lab_x.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].source = "import math, os"
    path.write_text(notebooks.dumps(nb), encoding="utf-8")
    (problem,) = notebooks.check(root, [source])
    assert "solutions/lab_x.ipynb: drift" in problem and "import math, os" in problem
    # a whitespace-only change to an exercise notebook is drift too (compared byte for byte)
    notebooks.build(root, [source])
    ex = root / "notebooks" / "lab_x.ipynb"
    ex.write_text(ex.read_text(encoding="utf-8").replace("\n", "\r\n"), encoding="utf-8")
    assert any("notebooks/lab_x.ipynb: drift" in p for p in notebooks.check(root, [source]))


def test_check_reports_leaks_and_missing_notebooks(lab):
    source, root = lab
    path = root / "notebooks" / "lab_x.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells[2].source = nb.cells[2].source.replace("raise NotImplementedError()", "return math.pow(x, 3)")
    path.write_text(notebooks.dumps(nb), encoding="utf-8")
    problems = notebooks.check(root, [source])
    assert any("leak" in p and "return math.pow(x, 3)" in p for p in problems)
    assert any("drift" in p for p in problems)
    (root / "solutions" / "lab_x.ipynb").unlink()
    assert any("solutions/lab_x.ipynb: missing" in p for p in notebooks.check(root, [source]))


def test_build_rewrites_a_stale_solution_notebook_without_outputs(lab):
    source, root = lab
    path = root / "solutions" / "lab_x.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="stale\n")]
    path.write_text(notebooks.dumps(nb), encoding="utf-8")
    source.write_text(SOURCE.replace("square(3) == 9", "square(4) == 16"), encoding="utf-8")
    assert path in notebooks.build(root, [source])
    assert nbformat.read(path, as_version=4).cells[1].outputs == []


@pytest.mark.parametrize("text, words", [
    ("x = 1\n# %%\ny = 2\n", "code before the first"),
    ('# %% [markdown] tags=["solution_only"]\n# hi\n', "unknown cell tag 'solution_only'"),
    ("# %%[markdown]\n# hi\n", "cell marker must read"),
    ("# %% [markdown]\nnot a comment\n", "must start with `#`"),
    ("# %%\n# BEGIN SOLUTION\nx = 1\n", "has no `# END SOLUTION`"),
    ("# %%\nx = 1\n# END SOLUTION\n", "without a `# BEGIN SOLUTION`"),
    ("# %% [markdown]\n# END SOLUTION\n", "without a `# BEGIN SOLUTION`"),
    ("# %%\n# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION\n", "inside another solution region"),
    ("# %%\n# STUB: x = ...\n", "outside a solution region"),
    ('# %% tags=["exercise-only"]\n# BEGIN SOLUTION\nx = 1\n# END SOLUTION\n', "exercise-only cell"),
    ('# %% tags=["solution-only", "exercise-only"]\nx = 1\n', "both solution-only and exercise-only"),
    ("# %% [check]\nx = 1\n", 'write cell tags in Jupytext\'s syntax, e.g. `# %% tags=\\["check"\\]`'),
    ('# %% points=3\nx = 1\n', "unsupported cell metadata points"),
    ("# %%\n\n# %%\nx = 1\n", "empty cell"),
    ("# just a header\n", "no cells"),
])
def test_parse_errors_name_the_line(text, words):
    with pytest.raises(SourceError, match=words) as info:
        notebooks.parse_source(text, name="lab.py")
    assert str(info.value).startswith("lab.py")


def test_shipped_lab_sources_parse_and_do_not_leak():
    sources = notebooks.lab_sources()
    assert [p.name for p in sources] == ["lab_c4.py"]
    cells = notebooks.read_source(sources[0])
    exercise = notebooks.render(cells, "exercise")
    text = "\n".join(c.source for c in exercise.cells)
    assert not notebooks.solution_only_lines(cells) & {line.strip() for line in text.splitlines()}
    assert "raise NotImplementedError()" in text
    checks = [c for c in exercise.cells if "check" in c.metadata.get("tags", [])]
    assert len(checks) == 7 and all("raises-exception" in c.metadata["tags"] for c in checks)
    assert all(c.source.startswith("checks.check_") for c in checks)


def test_committed_notebooks_match_the_shipped_source():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    assert notebooks.check(root) == []


def test_a_markdown_edit_keeps_the_solution_outputs(lab):
    source, root = lab
    path = root / "solutions" / "lab_x.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="kept\n")]
    nb.cells[1].execution_count = 1
    path.write_text(notebooks.dumps(nb), encoding="utf-8")
    source.write_text(SOURCE.replace("Why does it work?", "Why does it work at all?"), encoding="utf-8")
    assert path in notebooks.build(root, [source])
    rebuilt = nbformat.read(path, as_version=4)
    assert rebuilt.cells[1].outputs[0].text == "kept\n" and "at all" in rebuilt.cells[-1].source
    assert notebooks.check(root, [source]) == []


INSTALL = SOURCE.replace("import math", "import math\nINSTALL_SOURCE = None")


def test_install_source_is_written_into_both_notebooks(tmp_path):
    source = tmp_path / "lab_x.py"
    source.write_text(INSTALL, encoding="utf-8")
    notebooks.build(tmp_path / "plain", [source])
    wheel = "https://example.org/saelab-0.1.0-py3-none-any.whl"
    notebooks.build(tmp_path / "course", [source], install_source=wheel)
    for variant in notebooks.VARIANTS:
        plain = read(tmp_path / "plain", variant).cells[1]
        filled = read(tmp_path / "course", variant).cells[1]
        assert plain.source == "import math\nINSTALL_SOURCE = None"
        assert filled.source == f"import math\nINSTALL_SOURCE = {wheel!r}"
        assert plain.id == filled.id
    assert notebooks.check(tmp_path / "course", [source], install_source=wheel) == []
    assert any("drift" in p for p in notebooks.check(tmp_path / "course", [source]))


def test_install_source_needs_exactly_one_line(tmp_path):
    source = tmp_path / "lab_x.py"
    source.write_text(SOURCE, encoding="utf-8")
    with pytest.raises(SourceError, match=r"exactly one line `INSTALL_SOURCE = None`.*found 0"):
        notebooks.build(tmp_path, [source], install_source="saelab-0.1.0-py3-none-any.whl")
    source.write_text(INSTALL.replace("import math\n", "import math\nINSTALL_SOURCE = None\n"))
    with pytest.raises(SourceError, match="found 2"):
        notebooks.build(tmp_path, [source], install_source="saelab-0.1.0-py3-none-any.whl")
    with pytest.raises(ValueError, match="install_source: expected a wheel"):
        notebooks.build(tmp_path, [source], install_source="two\nlines")
    assert not (tmp_path / "notebooks").exists()


def test_a_source_jupytext_writes_back_builds_the_same_notebooks(lab, tmp_path):
    """The lab source is plain Jupytext: its own round trip (read, write) builds the same notebooks."""
    import jupytext
    source, root = lab
    text = jupytext.writes(jupytext.reads(source.read_text(encoding="utf-8").split("\n", 2)[2],
                                          fmt="py:percent"), fmt=notebooks.JUPYTEXT_FORMAT)
    again = tmp_path / "again" / "lab_x.py"
    again.parent.mkdir()
    again.write_text(text, encoding="utf-8")
    notebooks.build(tmp_path / "again", [again])
    for variant in notebooks.VARIANTS:
        a, b = read(root, variant), read(tmp_path / "again", variant)
        assert [(c.cell_type, c.source, c.metadata) for c in a.cells] == [(c.cell_type, c.source, c.metadata) for c in b.cells]
