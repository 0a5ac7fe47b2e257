"""The `saelab` command: help, one-line usage errors with exit status 2, and the notebooks commands."""
import subprocess
import sys

import pytest

from saelab import cli

LAB = """\
# %% [markdown]
# # Lab
# %%
def f():
    # BEGIN SOLUTION
    return 1
    # END SOLUTION
# %% [check]
assert f() == 1
"""


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_help_is_fast_and_names_every_command():
    # a fresh interpreter: `saelab --help` must not import torch or TransformerLens
    code = ("import sys; from saelab import cli\n"
            "try:\n    cli.main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "heavy = [m for m in ('torch', 'transformer_lens', 'nbformat') if m in sys.modules]\n"
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for word in ("run", "notebooks"):
        assert word in result.stdout


@pytest.mark.parametrize("argv, words", [
    (["run", "--help"], ["report.html", "--model", "--out", "--seed", "SAELens"]),
    (["notebooks", "build", "--help"], ["exercise", "--root"]),
    (["notebooks", "check", "--help"], ["drift", "leak"]),
    (["notebooks", "execute", "--help"], ["--model", "outputs"]),
])
def test_subcommand_help_says_what_it_does(argv, words, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in words:
        assert word in out


@pytest.mark.parametrize("argv, words", [
    (["run", "--seed", "-1"], "saelab run: error: argument --seed: expected a non-negative integer, got -1"),
    (["run", "--seed", "abc"], "saelab run: error: argument --seed: expected a non-negative integer, got 'abc'"),
    (["run", "--max-tokens", "0"], "expected a positive integer, got 0"),
    (["frobnicate"], "saelab: error: argument COMMAND: invalid choice: 'frobnicate'"),
    (["notebooks", "build", "--root", "/no/such/folder"], "saelab notebooks build: error: --root: /no/such/folder is not a folder"),
])
def test_bad_arguments_give_one_line_and_exit_2(argv, words, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert words in err
    assert err.count("\n") == 1


def test_missing_subcommand_prints_help_and_exits_2(capsys):
    code, out, err = run([], capsys)
    assert code == 2 and "usage: saelab" in err
    code, out, err = run(["notebooks"], capsys)
    assert code == 2 and "build" in err


def test_run_rejects_an_unwritable_out_dir(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, out, err = run(["run", "--out", str(blocker)], capsys)
    assert (code, err) == (2, f"saelab run: error: --out: {blocker} exists and is not a folder\n")
    code, out, err = run(["run", "--out", str(blocker / "sub")], capsys)
    assert code == 2 and err.startswith(f"saelab run: error: --out: cannot write to {blocker / 'sub'}")
    assert err.count("\n") == 1


def test_run_rejects_an_unknown_model_before_any_work(tmp_path, capsys):
    code, out, err = run(["run", "--model", "no-such-model", "--out", str(tmp_path / "out")], capsys)
    assert code == 2
    assert err.startswith("saelab run: error: --model: unknown model 'no-such-model'")
    assert err.count("\n") == 1
    assert not (tmp_path / "out" / "report.html").exists()


def test_run_rejects_an_unavailable_device(tmp_path, capsys):
    code, out, err = run(["run", "--device", "tpu", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and err.startswith("saelab run: error: --device: expected 'cpu'")


def test_notebooks_build_check_and_drift(tmp_path, capsys):
    source = tmp_path / "lab_y.py"
    source.write_text(LAB)
    argv = ["--root", str(tmp_path), "--source", str(source)]
    code, out, _ = run(["notebooks", "build", *argv], capsys)
    assert code == 0 and "wrote" in out and (tmp_path / "notebooks" / "lab_y.ipynb").is_file()
    code, out, _ = run(["notebooks", "build", *argv], capsys)
    assert code == 0 and "up to date" in out
    code, out, _ = run(["notebooks", "check", *argv], capsys)
    assert code == 0 and "OK" in out
    source.write_text(LAB.replace("# # Lab", "# # Lab, edited"))
    code, _, err = run(["notebooks", "check", *argv], capsys)
    assert code == 1 and "drift" in err and "2 problem(s)" in err


def test_notebooks_build_reports_a_bad_source_in_one_line(tmp_path, capsys):
    source = tmp_path / "lab_z.py"
    source.write_text("# %%\n# BEGIN SOLUTION\nx = 1\n")
    code, _, err = run(["notebooks", "build", "--root", str(tmp_path), "--source", str(source)], capsys)
    assert code == 2 and "has no `# END SOLUTION`" in err and err.count("\n") == 1


def test_notebooks_check_passes_on_the_repository(capsys):
    from pathlib import Path
    code, out, _ = run(["notebooks", "check", "--root", str(Path(__file__).resolve().parents[1])], capsys)
    assert code == 0
