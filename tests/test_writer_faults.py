"""What the course writers and `FeatureCard.save` leave after a full disk, an unwritable folder or an
interrupt between (or inside) their file writes: issue 19's fault table, the cells that
test_run_faults, test_course_faults and test_sae_format do not cover. Real tmpfs mounts, real folder
modes (root without CAP_DAC_OVERRIDE, so the modes bind); † marks an interrupt faked in-process.
Each test compares every file before and after and looks for leftover temps."""
import os
import subprocess
import sys

import pytest
import torch

import saelab.files as files
from saelab.course import grading, notebooks
from saelab.features.cards import feature_card
from saelab.sae.tied import TiedSAE
from subprocess_run import CLI, NO_DAC_OVERRIDE, ROOT, run_cli

HANG_GUARD_S = 600
OLD = "an old notebook\n"
URL = "https://example.org/course/saelab-0.1.0-py3-none-any.whl"
LAB = """\
# %% [markdown]
# # Lab
# %%
INSTALL_SOURCE = None

# %%
def f():
    # BEGIN SOLUTION
    return 1
    # END SOLUTION
# %% tags=["check"]
assert f() == 1
"""


def _snapshot(folder):
    """Every entry under `folder`: {relative path: bytes, or None for a folder}."""
    return {p.relative_to(folder).as_posix(): (None if p.is_dir() else p.read_bytes()) for p in folder.rglob("*")}


def _old_course(root, lab="lab_c4"):
    """A course folder holding an old version of each notebook `notebooks build` writes."""
    for folder in ("notebooks", "solutions"):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / f"{lab}.ipynb").write_text(OLD)
    return root


def _unprivileged(argv, **env):
    """`saelab ARGV` as root without CAP_DAC_OVERRIDE."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "SAELAB_PROGRESS": "0", **env}
    return subprocess.run([*NO_DAC_OVERRIDE, *CLI, *argv], capture_output=True, text=True, timeout=HANG_GUARD_S,
                          cwd=ROOT, env=environ)


def _one_line(done, expected: str):
    assert done.returncode == 1 and done.stderr.strip() == expected and "Traceback" not in done.stderr, done.stderr


@pytest.fixture
def lab(tmp_path):
    source = tmp_path / "lab_s.py"
    source.write_text(LAB)
    return source


@pytest.mark.parametrize("writer", ["build", "nbgrader"])
def test_a_full_disk_is_one_line_and_keeps_the_old_notebooks(tmp_path, small_disk, fill_disk, writer):
    disk = small_disk(1)
    if writer == "build":
        root, argv, folder = _old_course(disk), ["notebooks", "build", "--root", str(disk)], disk / "notebooks"
    else:
        folder = disk / "course" / "source" / "lab_c4"
        folder.mkdir(parents=True)
        (folder / "lab_c4.ipynb").write_text(OLD)
        argv = ["notebooks", "build", "--root", str(_old_course(tmp_path / "r")), "--nbgrader", str(disk / "course")]
    fill_disk(disk)
    before = _snapshot(disk)
    done = run_cli(argv, timeout=HANG_GUARD_S)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().startswith(f"saelab notebooks build: not enough free space in {folder} for "
                                          f"lab_c4.ipynb: ") and done.stderr.strip().endswith(" bytes free")
    assert _snapshot(disk) == before


def test_a_full_disk_stops_a_release_before_it_builds(lab, small_disk, fill_disk):
    disk = small_disk(1)
    fill_disk(disk)
    done = run_cli(["release", str(disk / "out"), "--no-wheel", "--install-source", URL, "--source", str(lab)],
                   timeout=HANG_GUARD_S)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().startswith(f"saelab release: not enough free space in {disk} for out: ")
    assert sorted(os.listdir(disk)) == ["filler"]   # no DIR, no lock, no temp


@pytest.mark.slow   # starts a Jupyter kernel
def test_a_full_disk_after_execution_keeps_the_old_solution(lab, small_disk, fill_disk):
    disk = small_disk(1)
    _old_course(disk, "lab_s")
    fill_disk(disk)
    before = _snapshot(disk)
    done = run_cli(["notebooks", "execute", "--root", str(disk), "--source", str(lab)], timeout=HANG_GUARD_S)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().startswith(f"saelab notebooks execute: not enough free space in {disk / 'solutions'} "
                                          f"for lab_s.ipynb: ")
    assert _snapshot(disk) == before


def test_an_unwritable_notebooks_folder_is_one_line_naming_the_file(tmp_path):
    root = _old_course(tmp_path / "course")
    (root / "notebooks").chmod(0o555)
    before = _snapshot(root)
    done = _unprivileged(["notebooks", "build", "--root", str(root)])
    _one_line(done, f"saelab notebooks build: cannot write {root / 'notebooks' / 'lab_c4.ipynb'}: Permission denied")
    assert _snapshot(root) == before


def test_a_release_into_an_unwritable_folder_is_refused_before_building(tmp_path, lab):
    parent = tmp_path / "published"
    parent.mkdir()
    parent.chmod(0o555)
    done = _unprivileged(["release", str(parent / "out"), "--no-wheel", "--install-source", URL, "--source", str(lab)])
    _one_line(done, f"saelab release: cannot write {parent / 'out'}: Permission denied")
    assert os.listdir(parent) == []


@pytest.mark.slow   # starts a Jupyter kernel
def test_an_unwritable_solutions_folder_is_one_line_and_keeps_the_old_solution(tmp_path, lab):
    root = _old_course(tmp_path / "course", "lab_s")
    (root / "solutions").chmod(0o555)
    before = _snapshot(root)
    done = _unprivileged(["notebooks", "execute", "--root", str(root), "--source", str(lab)], TMPDIR=str(tmp_path))
    _one_line(done, f"saelab notebooks execute: cannot write {root / 'solutions' / 'lab_s.ipynb'}: Permission denied")
    assert _snapshot(root) == before


@pytest.fixture(scope="module")
def card(model, test_texts):
    from saelab.activations import collect_activations
    acts = collect_activations(model, test_texts[:3], 1, progress=False)
    return feature_card(model, TiedSAE(model.cfg.d_model, 16, seed=0), acts, 0, k=3)


def test_feature_card_save_on_a_full_disk_or_an_unwritable_folder_keeps_the_old_page(card, tmp_path, small_disk,
                                                                                     fill_disk):
    disk = small_disk(1)
    (disk / "card.html").write_text("old page")
    fill_disk(disk)
    with pytest.raises(files.NoSpaceError, match=rf"^not enough free space in {disk} for card.html: [\d,]+ bytes free$"):
        card.save(disk / "card.html")
    assert sorted(os.listdir(disk)) == ["card.html", "filler"] and (disk / "card.html").read_text() == "old page"

    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "card.html").write_text("old page")
    locked.chmod(0o555)
    code = ("import sys, saelab\n"
            "model = saelab.load_model('tiny', device='cpu')\n"
            "acts = saelab.collect_activations(model, saelab.load_texts('test')[:3], 1, progress=False)\n"
            "card = saelab.feature_card(model, saelab.TiedSAE(model.cfg.d_model, 16, seed=0), acts, 0, k=3)\n"
            "try:\n"
            f"    card.save({str(locked / 'card.html')!r})\n"
            "except saelab.files.WriteError as e:\n"
            "    print(e)\n")
    done = subprocess.run([*NO_DAC_OVERRIDE, sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=HANG_GUARD_S, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.strip() == f"cannot write {locked / 'card.html'}: Permission denied", done.stderr
    assert os.listdir(locked) == ["card.html"] and (locked / "card.html").read_text() == "old page"


@pytest.mark.parametrize("writer", ["build", "nbgrader"])
def test_an_interrupt_inside_a_write_leaves_each_file_old_or_new(tmp_path, monkeypatch, writer):
    """† KeyboardInterrupt (Ctrl-C, or SIGTERM through the CLI's handler) raised inside the n-th file's
    write, after its temp is written and before the rename: earlier files are new, that file and the
    later ones old, and no temp is left."""
    root = _old_course(tmp_path / "course")
    target = tmp_path / "nbgrader"
    if writer == "nbgrader":
        (target / "source" / "lab_c4").mkdir(parents=True)
        (target / "source" / "lab_c4" / "lab_c4.ipynb").write_text(OLD)
    calls = []
    real_fsync = files._fsync

    def interrupted(path, directory=False):
        calls.append(path)
        if len(calls) == 3:   # the second file's temp, written and about to be renamed
            raise KeyboardInterrupt
        real_fsync(path, directory=directory)

    monkeypatch.setattr(files, "_fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        if writer == "build":
            notebooks.build(root)
        else:   # one file per lab: interrupted inside the first
            calls.append("a first file, already written")
            calls.append("its folder")
            grading.build_nbgrader(target)
    if writer == "build":
        assert (root / "notebooks" / "lab_c4.ipynb").read_text() != OLD      # written before the interrupt
        assert (root / "solutions" / "lab_c4.ipynb").read_text() == OLD      # interrupted: the old file
        assert sorted(p.name for p in (root / "solutions").iterdir()) == ["lab_c4.ipynb"]
    else:
        assert _snapshot(target) == {"source": None, "source/lab_c4": None, "source/lab_c4/lab_c4.ipynb": OLD.encode()}
    assert not [p for p in tmp_path.rglob("*") if files.TEMP_TAG in p.name]
