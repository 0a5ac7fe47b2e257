"""The `saelab` command: help, one-line usage errors with exit status 2, and the notebooks commands."""
import subprocess
import sys
from pathlib import Path

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
# %% tags=["check"]
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
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)  # a hang guard
    assert result.returncode == 0, result.stderr
    for word in ("run", "notebooks"):
        assert word in result.stdout


@pytest.mark.parametrize("argv, words", [
    (["run", "--help"], ["report.html", "--model", "--out", "--seed", "SAELens"]),
    (["notebooks", "build", "--help"], ["exercise", "--root"]),
    (["notebooks", "check", "--help"], ["drift", "leak"]),
    (["notebooks", "execute", "--help"], ["--model", "outputs", "3 significant digits", "--install-source"]),
    (["notebooks", "check", "--help"], ["--outputs"]),
    (["notebooks", "build", "--help"], ["--install-source", "--nbgrader"]),
    (["release", "--help"], ["manifest.json", "--install-source", "--nbgrader", "wheel"]),
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
    (["release", "somewhere"], "saelab release: error: --install-source: required"),
    (["release"], "saelab release: error: the following arguments are required: DIR"),
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
    assert code == 2 and err.startswith("usage: saelab") and err.endswith(
        "saelab: error: expected a command: one of run, notebooks, release (see 'saelab --help')\n")
    code, out, err = run(["notebooks"], capsys)
    assert code == 2 and err.startswith("usage: saelab notebooks") and err.endswith(
        "saelab notebooks: error: expected an action: one of build, check, execute (see 'saelab notebooks --help')\n")


@pytest.mark.parametrize("argv, prog", [(["run", "--bogus"], "saelab run"),
                                        (["notebooks", "build", "--bogus"], "saelab notebooks build"),
                                        (["release", "DIR", "--bogus"], "saelab release")])
def test_an_unknown_option_is_named_by_its_command(argv, prog, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert capsys.readouterr().err == f"{prog}: error: unrecognized arguments: --bogus (see '{prog} --help')\n"


def test_max_tokens_help_states_the_lab_defaults(capsys):
    from saelab.training.lab_settings import SIZES, TINY_TRAIN_ROWS
    assert cli.OTHER_MAX_TOKENS == SIZES[("other", "full")]["max_tokens"]
    assert SIZES[("tiny", "full")]["max_tokens"] is None          # tiny: every row the texts give
    assert cli.TINY_ROWS_SHOWN == f"{round(TINY_TRAIN_ROWS, -3):,}"
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"every row the shipped training texts give for tiny, about {cli.TINY_ROWS_SHOWN}" in help_text


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


INSTALL_LAB = LAB.replace("# %%\ndef f", "# %%\nINSTALL_SOURCE = None\n\n# %%\ndef f")


def test_notebooks_build_fills_the_install_source_and_writes_the_nbgrader_version(tmp_path, capsys):
    source = tmp_path / "lab_y.py"
    source.write_text(INSTALL_LAB)
    wheel = "dist/saelab-0.1.0-py3-none-any.whl"
    argv = ["--root", str(tmp_path), "--source", str(source), "--install-source", wheel]
    code, out, _ = run(["notebooks", "build", *argv, "--nbgrader", str(tmp_path / "course")], capsys)
    assert code == 0 and "course/source/lab_y/lab_y.ipynb" in out
    for folder in ("notebooks", "solutions", "course/source/lab_y"):
        assert f"INSTALL_SOURCE = {wheel!r}" in (tmp_path / folder / "lab_y.ipynb").read_text()
    code, out, _ = run(["notebooks", "check", *argv], capsys)
    assert code == 0 and "OK" in out


def test_an_install_source_without_its_line_is_one_line_error(tmp_path, capsys):
    source = tmp_path / "lab_y.py"
    source.write_text(LAB)
    code, out, err = run(["notebooks", "build", "--root", str(tmp_path), "--source", str(source),
                          "--install-source", "saelab-0.1.0-py3-none-any.whl"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("saelab notebooks build: error: --install-source: the lab source needs exactly one line")
    assert not (tmp_path / "notebooks").exists()


def test_release_refuses_a_folder_in_use(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    code, _, err = run(["release", str(tmp_path / "out"), "--install-source", "saelab-0.1.0-py3-none-any.whl"], capsys)
    assert code == 2 and err.count("\n") == 1 and "error: DIR: " in err and "is not empty" in err


def test_check_outputs_says_whether_a_regeneration_changes_anything(tmp_path, capsys, monkeypatch):
    from nbformat.v4 import new_output
    from saelab.course import notebooks, regenerate
    source = tmp_path / "lab_y.py"
    source.write_text(LAB)
    argv = ["--root", str(tmp_path), "--source", str(source)]
    printed = {"text": "loss 0.12345\n"}

    def fake_run(root, source, **_):
        nb = notebooks.render(notebooks.read_source(source), "solution")
        nb.cells[-1].outputs = [new_output("stream", name="stdout", text=printed["text"])]
        return nb
    monkeypatch.setattr(regenerate, "run_solution", fake_run)
    run(["notebooks", "build", *argv], capsys)
    code, out, _ = run(["notebooks", "execute", *argv], capsys)
    assert code == 0 and out.endswith("lab_y.ipynb: written\n")
    printed["text"] = "loss 0.12346\n"
    code, out, _ = run(["notebooks", "check", "--outputs", *argv], capsys)
    assert code == 0 and "outputs unchanged at 3 significant digits" in out
    code, out, _ = run(["notebooks", "execute", *argv], capsys)
    assert code == 0 and "kept (outputs unchanged at 3 significant digits)" in out
    printed["text"] = "loss 0.2\n"
    code, _, err = run(["notebooks", "check", "--outputs", *argv], capsys)
    assert code == 1 and "outputs changed beyond 3 significant digits" in err


def test_release_passes_its_options_on(tmp_path, capsys, monkeypatch):
    from saelab.course import release
    seen = {}

    def fake_release(folder, install_source, sources, **kwargs):
        seen.update(folder=folder, install_source=install_source, sources=sources, **kwargs)
        return Path(folder)
    monkeypatch.setattr(release, "release", fake_release)
    source = tmp_path / "lab_y.py"
    source.write_text(LAB)
    code, out, _ = run(["release", str(tmp_path / "out"), "--install-source", "saelab-0.1.0-py3-none-any.whl", "--source", str(source),
                        "--nbgrader", "--no-wheel", "--model", "tiny"], capsys)
    assert code == 0 and out.startswith(f"saelab release: wrote {tmp_path / 'out'}")
    assert seen == {"folder": str(tmp_path / "out"), "install_source": "saelab-0.1.0-py3-none-any.whl", "sources": [source],
                    "nbgrader": True, "wheel": False, "model": "tiny", "timeout": 900}


def test_run_refuses_too_few_tokens_unless_forced(tmp_path, capsys):
    code, _, err = run(["run", "--max-tokens", "10", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "--max-tokens: expected at least 2000, got 10" in err and "--force" in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, words", [
    (["--model", "no-such-model"], "--model: unknown model"),
    (["--device", "quantum"], "--device: expected 'cpu', 'cuda', 'cuda:N', 'mps' (or leave --device out), got 'quantum'"),
])
def test_a_failed_run_leaves_no_output_folder(tmp_path, capsys, argv, words):
    code, _, err = run(["run", *argv, "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and words in err and "None" not in err
    assert list(tmp_path.iterdir()) == []  # no folder, no temp


def test_offline_model_fails_fast_in_cli_terms(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.get_session", lambda: pytest.fail("a network request was attempted"))
    code, _, err = run(["run", "--model", "gpt2-small", "--out", str(tmp_path / "out")], capsys)
    assert code == 1 and "--model tiny" in err and "load_model" not in err
    assert not (tmp_path / "out").exists()


def test_run_refuses_a_folder_holding_other_files(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    code, _, err = run(["run", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "--out: " in err and "notes.txt" in err and "use another --out" in err
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_a_slow_run_announces_its_estimate(capsys, monkeypatch):
    import torch
    monkeypatch.setattr(cli, "estimate_run_seconds", lambda name, max_tokens, cfg, device: 1800.0)
    model = type("M", (), {"cfg": object()})()
    cli._announcer("gpt2-small", None)(model, torch.device("cpu"))
    assert "expect about 30 min" in capsys.readouterr().err
    cli._announcer("tiny", None)(model, torch.device("cpu"))
    cli._announcer("gpt2-small", None)(model, torch.device("meta"))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("command", [["release", "OUT"], ["notebooks", "build", "--root", "ROOT"],
                                     ["notebooks", "execute", "--root", "ROOT"]])
@pytest.mark.parametrize("install_source", ["https://example.org/my course/saelab 0.1.whl",
                                            "/nonexistent/dir/saelab-0.1.0-py3-none-any.whl",
                                            "--index-url=https://evil.example/simple saelab"])
def test_odd_install_sources_are_refused_at_once(tmp_path, capsys, monkeypatch, command, install_source):
    """Issue 19 row 6: one line, exit 2, before any wheel is built or kernel started; nothing written."""
    from saelab.course import regenerate, release
    monkeypatch.setattr(release, "build_wheel", lambda *a: pytest.fail("built a wheel"))
    monkeypatch.setattr(regenerate, "run_solution", lambda *a, **k: pytest.fail("started a kernel"))
    argv = [a.replace("OUT", str(tmp_path / "out")).replace("ROOT", str(tmp_path)) for a in command]
    code, out, err = run([*argv, f"--install-source={install_source}"], capsys)
    assert code == 2 and err.count("\n") == 1 and "error: --install-source: " in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_lab_source_that_is_not_a_plain_name_is_refused(tmp_path, capsys):
    """Issue 19 row 13: `...py` would name its notebook `..` and write outside source/<lab>/."""
    (tmp_path / "labs").mkdir()
    source = tmp_path / "labs" / "...py"
    source.write_text(LAB)
    code, _, err = run(["notebooks", "build", "--root", str(tmp_path), "--source", str(source),
                        "--nbgrader", str(tmp_path / "course")], capsys)
    assert code == 2 and err.count("\n") == 1 and "expected a plain file name" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labs"]
