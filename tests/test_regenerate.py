"""Regenerating the solutions: clean outputs (no stderr, widgets or machine paths), numbers compared at
3 significant digits, and a regeneration that changes nothing beyond that keeps the file byte for byte."""
import base64
import copy
import io
import site
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from saelab.course import notebooks, regenerate

LAB = '''\
# A tiny lab: trains two small SAEs and prints a table, after making every kind of noise.

# %% [markdown]
# # Tiny lab

# %%
import os, sys, warnings
import pandas as pd
import torch
from tqdm.auto import tqdm
import saelab
INSTALL_SOURCE = None

# %%
warnings.warn("a warning that names " + saelab.__file__)
print("a line on stderr", file=sys.stderr)
for _ in tqdm(range(3)):
    pass
print("folder:", os.getcwd(), "package:", saelab.__file__, "home:", os.path.expanduser("~"))

# %%
torch.manual_seed(0)
x = torch.randn(1024, 16)
rows = []
for coef in (1e-3, 1e-1):
    sae = saelab.TiedSAE(16, 64, seed=0)
    saelab.train_sae(sae, x, sparsity_coef=coef, epochs=3, batch_size=64)
    f = sae.encode(x)
    mse = ((sae.decode(f) - x) ** 2).mean().item()
    rows.append({"coef": coef, "mse": mse, "l0": (f > 0).float().sum(-1).mean().item()})
pd.DataFrame(rows)
'''


def nb_with(*outputs, source="x = 1"):
    return new_notebook(cells=[new_code_cell(source, id="c1", outputs=list(outputs))])


def stream(text, name="stdout"):
    return new_output("stream", name=name, text=text)


def table(text):
    return new_output("execute_result", data={"text/plain": text}, execution_count=1)


@pytest.mark.parametrize("a, b, same", [
    ("L0 8.319 FVU 14.627", "L0 8.318 FVU 14.625", True),      # CPU noise in the 4th-6th digit
    ("mse 0.0012345", "mse 0.0012349", True),
    ("1.5e-05", "1.5e-05", True),
    ("L0 8.319", "L0 8.338", False),                            # a change at the 3rd digit
    ("L0 8.319", "L0 8.32", False),                             # written with other digits: a change
    ("feature 1234", "feature 1235", False),                    # integers (ids, counts) compare exactly
    ("<td>0.12345</td>", "<td>0.12346</td>", True),
    ("coef=0.001 x", "coef=0.001 y", False),
    ("5 SAEs (300 steps, 11.0s)", "5 SAEs (300 steps, 16.4s)", True),   # wall-clock time is never the same
    ("5 SAEs (300 steps, 11.0s)", "5 SAEs (301 steps, 11.0s)", False),
])
def test_numbers_compare_at_three_significant_digits(a, b, same):
    assert (regenerate.normalise(a) == regenerate.normalise(b)) is same


def test_compare_outputs_names_the_cell_that_changed():
    old = nb_with(stream("loss 4.6386\n"), table("   coef    mse\n0  0.001  0.1234"))
    noisy = nb_with(stream("loss 4.6391\n"), table("   coef    mse\n0  0.001  0.1235"))
    changed = nb_with(stream("loss 4.7386\n"), table("   coef    mse\n0  0.001  0.1234"))
    assert regenerate.compare_outputs(old, noisy) == []
    assert regenerate.compare_outputs(old, changed) == ["cell 1 [id c1]: outputs changed beyond 3 significant digits "
                                                        "('loss 4.6386' -> 'loss 4.7386')"]
    assert regenerate.compare_outputs(old, nb_with(source="x = 2")) == ["the code cells differ (sources or ids)"]
    assert regenerate.compare_outputs(old, nb_with(stream("loss 4.6386\n"))) != []


def test_a_changed_cell_is_named_by_its_number_and_the_heading_above_it():
    from nbformat.v4 import new_markdown_cell
    cells = [new_code_cell("import x", id="a"), new_markdown_cell("# Lab\n\n## Part 4: pairs\ntext", id="m1"),
             new_code_cell("print(1)", id="b"), new_markdown_cell("No heading here", id="m2"),
             new_code_cell("print(2)", id="c", outputs=[stream("r 0.695\n")])]
    old = new_notebook(cells=cells)
    new = copy.deepcopy(old)
    new.cells[4].outputs = [stream("r 0.688\n")]
    assert regenerate.cell_names(old) == {0: "cell 1 [id a]", 2: "cell 3 (Part 4: pairs) [id b]",
                                          4: "cell 5 (Part 4: pairs) [id c]"}
    assert regenerate.compare_outputs(old, new) == ["cell 5 (Part 4: pairs) [id c]: outputs changed beyond "
                                                    "3 significant digits ('r 0.695' -> 'r 0.688')"]


def png(changed_pixels: int) -> str:
    import numpy as np
    from PIL import Image
    pixels = np.zeros((40, 50, 3), dtype=np.uint8)
    pixels.reshape(-1, 3)[:changed_pixels] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_images_compare_by_their_pixels():
    figure = lambda n: nb_with(new_output("display_data", data={"image/png": png(n), "text/plain": "<Figure>"}))
    assert regenerate.compare_outputs(figure(0), figure(5)) == []          # 5 of 2000 pixels: antialiasing
    assert regenerate.compare_outputs(figure(0), figure(400)) == [              # a different picture
        "cell 1 [id c1]: outputs changed beyond 3 significant digits (a figure's pixels or an output's kind)"]


def test_clean_outputs_drops_stderr_and_widgets_and_hides_paths(tmp_path):
    site_packages = site.getsitepackages()[0]
    widget = new_output("display_data", data={regenerate.WIDGET_MIME: {"model_id": "x"}, "text/plain": "0%|"})
    browser = new_output("display_data", data={regenerate.WIDGET_MIME: {"model_id": "y"}, "text/plain": "Feature browser",
                                               "text/html": f"<p>card from {tmp_path}</p>"})
    nb = nb_with(stream(f"{site_packages}/tqdm/auto.py:21: TqdmWarning: IProgress not found\n", "stderr"), widget,
                 stream(f"wrote {tmp_path}/report.html from {Path.home()}/data, not {tmp_path}x\n"),
                 table(f"PosixPath('{sys.prefix}/lib')"), browser)
    cleaned = regenerate.clean_outputs(nb, regenerate.machine_paths(tmp_path))
    outputs = cleaned.cells[0].outputs
    assert [o.output_type for o in outputs] == ["stream", "execute_result", "display_data"]
    # a widget with a static page (saelab.browse) keeps the page, without the widget
    assert outputs[2].data == {"text/plain": "Feature browser", "text/html": "<p>card from <notebook></p>"}
    assert outputs[0].text.startswith("wrote <notebook>/report.html from ~/data, not ")
    assert outputs[0].text.endswith(f"/{tmp_path.name}x\n") and "<notebook>x" not in outputs[0].text
    assert outputs[1].data["text/plain"] == "PosixPath('<python>/lib')"


@pytest.fixture
def fake_kernel(monkeypatch):
    """run_solution replaced by a function returning the solution notebook with given outputs."""
    def use(*outputs):
        def run(root, source, **_):
            nb = notebooks.render(notebooks.read_source(source), "solution")
            nb.cells[-1].outputs = [nbformat.from_dict(o) for o in outputs]
            return nb
        monkeypatch.setattr(regenerate, "run_solution", run)
    return use


def test_execute_keeps_the_file_when_only_noise_changed(tmp_path, fake_kernel):
    source = tmp_path / "lab_t.py"
    source.write_text("# %%\nx = 1\n# %%\nprint(x)\n", encoding="utf-8")
    path = tmp_path / "solutions" / "lab_t.ipynb"
    fake_kernel(stream("mse 0.12345\n"))
    assert regenerate.execute(tmp_path, [source]) == [(path, "written")]
    before = path.read_bytes()
    fake_kernel(stream("mse 0.12347\n"))
    ((_, what),) = regenerate.execute(tmp_path, [source])
    assert what.startswith("kept") and path.read_bytes() == before
    assert regenerate.check_outputs(tmp_path, [source]) == []
    fake_kernel(stream("mse 0.12545\n"))
    assert regenerate.check_outputs(tmp_path, [source]) == [f"{path}: cell 2 [id {notebooks.cell_ids(notebooks.read_source(source))[1]}]: "
                                                            "outputs changed beyond 3 significant digits "
                                                            "('mse 0.12345' -> 'mse 0.12545')"]
    assert regenerate.execute(tmp_path, [source]) == [(path, "written")]
    assert b"0.12545" in path.read_bytes()
    fake_kernel(stream("mse 0.12546\n"))       # noise, but a deliberate rewrite (e.g. a redrawn figure) writes it
    assert regenerate.execute(tmp_path, [source], rewrite=True) == [(path, "written")]
    assert b"0.12546" in path.read_bytes()
    with pytest.raises(ValueError, match="^rewrite: expected True or False"):
        regenerate.execute(tmp_path, [source], rewrite="yes")
    fake_kernel(stream("mse 0.12547\n"))
    from saelab.cli import main
    for flags, want in (([], b"0.12546"), (["--rewrite"], b"0.12547")):   # the command line's --rewrite
        assert main(["notebooks", "execute", "--root", str(tmp_path), "--source", str(source), *flags]) == 0
        assert want in path.read_bytes()


def machine_path_forms(*folders):
    forms = {str(Path(f)) for f in folders} | {str(Path(f).resolve()) for f in folders}
    return sorted(f for f in forms if len(f) > 1)


@pytest.mark.slow
def test_a_regeneration_draws_inline_whatever_the_callers_mplbackend(tmp_path, monkeypatch):
    """CI exports MPLBACKEND=Agg: a kernel that inherited it showed nothing at `plt.show()` and drew every
    other figure at another size, so the Colab lane's check --outputs failed on 9 figures."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    source = tmp_path / "lab_p.py"
    source.write_text("# %%\nimport matplotlib\nimport matplotlib.pyplot as plt\nINSTALL_SOURCE = None\n\n"
                      "# %%\nprint(matplotlib.get_backend())\nplt.plot([1, 2])\nplt.show()\n", encoding="utf-8")
    notebooks.build(tmp_path, [source])
    assert regenerate.execute(tmp_path, [source]) == [(tmp_path / "solutions" / "lab_p.ipynb", "written")]
    cell = notebooks.read_notebook(tmp_path / "solutions" / "lab_p.ipynb").cells[-1]
    assert "inline" in cell.outputs[0].text
    assert [o.output_type for o in cell.outputs] == ["stream", "display_data"] and "image/png" in cell.outputs[1].data


@pytest.mark.slow
def test_a_real_regeneration_is_clean_and_stable_across_thread_counts(tmp_path):
    """Two executions in real kernels (OMP_NUM_THREADS=2, then 1): clean outputs, no committed byte changed."""
    source = tmp_path / "lab_t.py"
    source.write_text(LAB, encoding="utf-8")
    root = tmp_path / "root"
    notebooks.build(root, [source])
    path = root / "solutions" / "lab_t.ipynb"
    assert regenerate.execute(root, [source], env={"OMP_NUM_THREADS": "2"}) == [(path, "written")]
    text = path.read_text(encoding="utf-8")
    nb = nbformat.reads(text, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.get("name") == "stderr"]
    assert not [o for o in outputs if regenerate.WIDGET_MIME in o.get("data", {})]
    repo = Path(__file__).resolve().parents[1]
    paths = machine_path_forms(Path.home(), repo, tmp_path, sys.prefix, *site.getsitepackages())
    assert not [p for p in paths if p in text], "a path of this machine in the outputs"
    assert "folder: <notebook> package: <saelab>/__init__.py home: ~" in text
    assert "coef" in text and "mse" in text and "text/html" in text  # the table is there
    before = path.read_bytes()
    ((_, what),) = regenerate.execute(root, [source], env={"OMP_NUM_THREADS": "1"})
    assert what.startswith("kept") and path.read_bytes() == before
    assert notebooks.check(root, [source]) == []
