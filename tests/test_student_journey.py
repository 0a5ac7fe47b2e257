"""The exercise notebook as a student meets it: every check run in a real Jupyter kernel (nbclient).

The notebook is built from the lab source; each exercise is filled with (a) the reference answer
(the solution notebook's cell), (b) the untouched stub (the exercise notebook's cell) and (c) typical
mistakes (the solution cell with one edit). All variants run in one kernel, each followed by its
exercise's check cell. What the check cell shows (its stream and error outputs, as a frontend renders
them) must be the pass line for (a) and the check's message for (b) and (c), never empty and never a
stack trace, and the cell must fail (reply status "error") for (b) and (c), so "Run all" stops there.
Also here: the install cell's contract (it installs only INSTALL_SOURCE).
"""
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import saelab

LAB = Path(saelab.__file__).resolve().parent / "assets" / "labs" / "lab_c4.py"
ROOT = Path(__file__).resolve().parent.parent
STUB = "not implemented yet"
VERSION = importlib.metadata.version
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# check -> [(label, edits to the solution cell [(old, new)], words the check must show)]
MISTAKES = {
    "check_sae": [
        ("no decoder bias", [("F.linear(features, self.encoder.weight.T, self.decoder_bias)",
                              "features @ self.encoder.weight")], "without the decoder bias"),
        ("weight not transposed", [("self.encoder.weight.T, self.decoder_bias", "self.encoder.weight, self.decoder_bias")],
         "not transposed"),
        ("no ReLU", [("return F.relu(self.encoder(x))", "return self.encoder(x)")], "negative values"),
        ("sparsity as a sum", [("sparsity = features.abs().mean()", "sparsity = features.abs().sum(dim=-1).mean()")],
         "summed over features"),
        ("loss as a float", [("return recon + sparsity_coef * sparsity,", "return (recon + sparsity_coef * sparsity).item(),")],
         "0-dimensional tensor"),
        ("coefficient ignored", [("recon + sparsity_coef * sparsity,", "recon + 1e-3 * sparsity,")], "sparsity_coef"),
    ],
    "check_activations": [
        ("BOS kept", [('cache["resid_post", layer][0, 1:]', 'cache["resid_post", layer][0]')],
         "BOS rows are still in"),
        ("resid_pre", [('cache["resid_post", layer]', 'cache["resid_pre", layer]')], "hook resid_pre at layer 1"),
        ("last token dropped", [("[0, 1:]", "[0, :-1]")], "LAST position"),
        ("wrong layer", [('cache["resid_post", layer]', 'cache["resid_post", layer + 1]')], "rows of layer 2, not layer 1"),
        ("not concatenated", [("return torch.cat(rows, dim=0)", "return rows")], "torch.cat"),
    ],
    "check_training_loop": [
        ("no zero_grad", [("optimizer.zero_grad()", "pass")], "without optimizer.zero_grad()"),
        ("coefficient ignored", [("sparsity_coef=sparsity_coef)", "sparsity_coef=1e-3)")], "pass the sparsity_coef"),
        ("no optimizer step", [("optimizer.step()", "pass")], "did not change"),
        ("loss kept as a tensor", [("losses.append(loss.item())", "losses.append(loss)")], "tensors"),
        ("all rows every step", [("compute_loss(rows[batch]", "compute_loss(rows")], "on all rows"),
        ("no loss recorded", [("losses.append(loss.item())", "pass")], "one loss per step"),
    ],
    "check_top_pairs": [
        ("self-pairs kept", [("offset=1", "offset=0")], "self-pairs"),
        ("no density filter", [("active = torch.nonzero((features > 0).float().mean(0) > min_density).flatten()",
                                "active = torch.arange(features.shape[1])")], "NaN"),
        ("density from mean values", [("(features > 0).float().mean(0)", "features.mean(0)")], "below min_density"),
        ("ascending order", [("descending=True", "descending=False")], "LEAST correlated"),
        ("no top-k", [("[:k]", "")], "expected k = 6"),
        ("positions, not ids", [("(int(active[i[o]]), int(active[j[o]]),", "(int(i[o]), int(j[o]),")],
         "positions among"),
    ],
    "check_fvu": [
        ("uncentred", [("(x - x.mean(dim=0)).pow(2).sum()", "x.pow(2).sum()")], "not the variance"),
        ("one overall mean", [("x.mean(dim=0)", "x.mean()")], "one overall mean"),
        ("explained variance", [("return ((x - x_hat)", "return 1 - ((x - x_hat)")], "explained variance"),
        ("MSE", [("((x - x_hat).pow(2).sum() / (x - x.mean(dim=0)).pow(2).sum()).item()",
                  "(x - x_hat).pow(2).mean().item()")], "this is the MSE"),
        ("mean of per-dimension FVUs", [("((x - x_hat).pow(2).sum() / (x - x.mean(dim=0)).pow(2).sum()).item()",
                                         "((x - x_hat).pow(2).sum(0) / (x - x.mean(dim=0)).pow(2).sum(0)).mean().item()")],
         "mean of each dimension's own FVU"),
    ],
    "check_steering": [
        ("BOS steered", [("added[:, 1:] = alpha * direction", "added[:, :] = alpha * direction")], "BOS token"),
        ("input_scale forgotten", [("sae.W_dec[feature].detach()", "sae.encoder.weight[feature].detach()")],
         "forgets sae.input_scale"),
        ("last position only", [("added[:, 1:] = alpha * direction", "added[:, -1:] = alpha * direction")],
         "only the last position"),
        ("alpha * f_i", [("added[:, 1:] = alpha * direction",
                          "added[:, 1:] = alpha * sae.encode(activation)[:, 1:, feature, None]")], "adds alpha * f_i"),
        ("hook left after an error", [("    with model.hooks(fwd_hooks=[(sae.hook_name, hook)]):", "    if True:"),
                                      ("        yield", "        model.add_hook(sae.hook_name, hook)\n        yield\n"
                                                      "        model.reset_hooks()")], "stayed registered"),
    ],
    "check_ablation": [
        ("reconstruction", [("return x - sae.encode(x)[:, feature, None] * sae.W_dec[feature]",
                             "return sae.decode(sae.encode(x))")], "this is the SAE's reconstruction"),
        ("input_scale forgotten", [("* sae.W_dec[feature]", "* sae.encoder.weight[feature]")],
         "forgets sae.input_scale"),
        ("decoder bias", [("* sae.W_dec[feature]", "* sae.W_dec[feature] - sae.b_dec")], "decoder bias"),
        ("every feature", [("return x - sae.encode(x)[:, feature, None] * sae.W_dec[feature]",
                            "return x - sae.encode(x) @ sae.W_dec")], "every feature is removed"),
    ],
}


def built_notebooks(root):
    """(exercise, solution) notebooks built from the lab source under `root`: the one use of saelab.course.notebooks."""
    from saelab.course import notebooks
    notebooks.build(root, [LAB])
    return tuple(nbformat.read(root / folder / "lab_c4.ipynb", as_version=4) for folder in ("notebooks", "solutions"))


def _code(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _exercises(exercise, solution):
    """check name -> (stub source, solution source, check cell source), in notebook order."""
    ex, sol = _code(exercise), _code(solution)
    assert len(ex) == len(sol)
    found = {}
    for n, cell in enumerate(ex):
        if "check" in cell.metadata.get("tags", []):
            name = re.match(r"checks\.(check_\w+)\(", cell.source).group(1)
            assert "raise NotImplementedError()" in ex[n - 1].source
            found[name] = (ex[n - 1].source, sol[n - 1].source, cell.source)
    return found


def _variants(exercises):
    """[(check, label, exercise cell source, words the check cell must show)] for every variant."""
    out = []
    for check, (stub, solution, _) in exercises.items():
        out.append((check, "reference", solution, "✅"))
        out.append((check, "stub", stub, STUB))
        for label, edits, words in MISTAKES[check]:
            source = solution
            for old, new in edits:
                assert old in source, f"{check} / {label}: {old!r} is not in the solution cell any more"
                source = source.replace(old, new)
            out.append((check, label, source, words))
    return out


def _shown(cell) -> str:
    """What a frontend shows for a cell's outputs: stream text, error tracebacks, plain-text displays."""
    parts = []
    for out in cell.outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type == "error":
            parts.append("\n".join(out.traceback))
        elif "text/plain" in out.get("data", {}):
            parts.append(out.data["text/plain"])
    return ANSI.sub("", "".join(parts)).strip()


@pytest.fixture(scope="module")
def journey(tmp_path_factory):
    """Run every variant in one kernel: [(check, label, words, shown text, reply status, outputs)]."""
    from nbclient import NotebookClient

    exercise, solution = built_notebooks(tmp_path_factory.mktemp("lab"))
    exercises = _exercises(exercise, solution)
    assert list(exercises) == list(MISTAKES)
    setup = _code(exercise)[:2]  # the install cell and the imports / model cell
    variants = _variants(exercises)
    cells = [nbformat.v4.new_code_cell(c.source) for c in setup]
    for check, _, source, _ in variants:
        cells += [nbformat.v4.new_code_cell(source), nbformat.v4.new_code_cell(exercises[check][2])]
    nb = nbformat.v4.new_notebook(cells=cells, metadata=exercise.metadata)
    status = {}
    env = {"SAELAB_MODEL": "tiny", "SAELAB_PROGRESS": "0",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = NotebookClient(nb, timeout=1800, kernel_name="python3", allow_errors=True,
                                resources={"metadata": {"path": str(ROOT)}},
                                on_cell_executed=lambda cell, cell_index, execute_reply:
                                status.__setitem__(cell_index, execute_reply["content"]["status"]))
        client.execute()
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    for n in range(len(setup)):
        assert status[n] == "ok", f"setup cell {n} failed: {_shown(nb.cells[n])}"
    results = []
    for v, (check, label, _, words) in enumerate(variants):
        filled, checked = len(setup) + 2 * v, len(setup) + 2 * v + 1
        assert status[filled] == "ok", f"{check} / {label}: the exercise cell itself failed: {_shown(nb.cells[filled])}"
        cell = nb.cells[checked]
        results.append((check, label, words, _shown(cell), status[checked], cell.outputs))
    return results


@pytest.mark.slow  # a live Jupyter kernel
def test_every_variant_ran(journey):
    assert len(journey) == sum(2 + len(m) for m in MISTAKES.values())
    assert all(len(MISTAKES[c]) >= 3 for c in MISTAKES)


@pytest.mark.slow  # a live Jupyter kernel
def test_the_reference_answers_pass(journey):
    for check, label, _, shown, status, _ in journey:
        if label == "reference":
            assert status == "ok", f"{check}: the reference answer fails: {shown}"
            assert shown.startswith(f"✅ {check} (exercise "), shown


@pytest.mark.slow  # a live Jupyter kernel
def test_stubs_and_mistakes_fail_with_their_message_and_no_stack_trace(journey):
    for check, label, words, shown, status, outputs in journey:
        if label == "reference":
            continue
        where = f"{check} / {label}"
        assert shown, f"{where}: the failing check cell shows nothing"
        assert status == "error", f"{where}: the check cell did not fail, so 'Run all' would go on: {shown}"
        assert shown.startswith(f"❌ {check} (exercise "), f"{where}: {shown}"
        assert words in " ".join(shown.split()), f"{where}: expected {words!r} in {shown!r}"
        assert "Traceback" not in shown and "File " not in shown and "----> " not in shown, f"{where}: {shown}"
        errors = [o for o in outputs if o.output_type == "error"]
        assert len(errors) <= 1 and all(o.ename == "CheckFailed" for o in errors), f"{where}: {outputs}"


@pytest.mark.slow  # a live Jupyter kernel
def test_the_bos_message_states_no_misleading_ratio_on_tiny(journey):
    (shown,) = [s for c, label, _, s, _, _ in journey if label == "BOS kept"]
    text = " ".join(shown.split())
    assert "the same vector in every text" in text and "On GPT-2" in text
    assert not re.search(r"\b1x\b", text)


# --------------------------------------------------------------------------- the install cell

@pytest.fixture(scope="module")
def notebooks_built(tmp_path_factory):
    return built_notebooks(tmp_path_factory.mktemp("install"))


def test_one_install_source_line_and_no_other_cell_installs(notebooks_built):
    lines = LAB.read_text(encoding="utf-8").splitlines()
    assert lines.count("INSTALL_SOURCE = None") == 1
    assert sum("INSTALL_SOURCE =" in line for line in lines) == 1
    for nb in notebooks_built:
        installing = [c.source for c in _code(nb) if re.search(r"pip|subprocess|INSTALL_SOURCE", c.source)]
        assert len(installing) == 1 and installing[0] == _code(nb)[0].source


def _run_install_cell(source, monkeypatch, missing=True):
    """Run the install cell's source here, with saelab `missing` or not and pip calls recorded, not run."""
    calls = []
    def version(name):
        if name == "saelab" and missing:
            raise importlib.metadata.PackageNotFoundError(name)
        return VERSION(name)
    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setattr(subprocess, "check_call", lambda cmd, *a, **k: calls.append(cmd) or 0)
    exec(compile(source, "<install cell>", "exec"), {})
    return calls


def test_install_cell_without_a_source_stops_with_readme_command(notebooks_built, monkeypatch):
    source = _code(notebooks_built[0])[0].source
    with pytest.raises(ModuleNotFoundError) as info:
        _run_install_cell(source, monkeypatch)
    message = str(info.value)
    assert 'pip install torch==2.13.0 && pip install -e ".[notebooks]"' in message
    assert "INSTALL_SOURCE" in message
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert 'pip install torch==2.13.0 && pip install -e ".[notebooks]"' in readme
    assert _run_install_cell(source, monkeypatch, missing=False) == []  # installed: nothing happens


def test_install_cell_installs_exactly_the_source_it_was_given(notebooks_built, monkeypatch):
    source = _code(notebooks_built[0])[0].source
    wheel = "https://example.org/course/saelab-0.1.0-py3-none-any.whl"
    filled = source.replace("INSTALL_SOURCE = None", f"INSTALL_SOURCE = {wheel!r}")
    assert filled != source
    (cmd,) = _run_install_cell(filled, monkeypatch)
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"] and cmd[-1] == f"saelab[saelens,browser] @ {wheel}"
    assert all(arg.startswith("-") for arg in cmd[4:-1])  # options only: nothing else is installed
