"""`saelab run` against faults (issue 19 rows 1-3): Ctrl-C and SIGTERM sent to a real `saelab run`
subprocess during training, a rerun over a folder holding files its manifest does not list, two runs
into one folder at once. Each test checks the folder is exactly as before and nothing is left beside it."""
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from saelab import cli
from saelab.files import atomic_folder, writer_lock
from subprocess_run import CLI, ROOT

HANG_GUARD_S = 600   # a signalled run stops within seconds


def _fake_run(folder):
    """A previous run's folder: a few files and the manifest.json listing them."""
    files = {"report.html": "<html>old</html>", "figures/a.png": "png", "tables/t.csv": "a,b\n",
             "saes/sweep/cfg.json": "{}", "cards/feature_1.html": "card"}
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    manifest = {"seed": 0, "files": {name: len(text) for name, text in files.items()}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _snapshot(folder):
    """Every entry under folder: {relative path: bytes, or None for a folder}."""
    return {p.relative_to(folder).as_posix(): (None if p.is_dir() else p.read_bytes()) for p in folder.rglob("*")}


def _saelab_temps():
    return sorted(p for p in os.listdir(tempfile.gettempdir()) if p.startswith("saelab-"))


@pytest.mark.parametrize("extra, first", [("saes/my_own_sae/cfg.json", "saes/my_own_sae"),
                                          ("figures/notes.txt", "figures/notes.txt"),
                                          ("cards/my_answers.md", "cards/my_answers.md"),
                                          ("saes/empty_folder/", "saes/empty_folder"), (".hidden", ".hidden")])
def test_a_rerun_refuses_files_its_manifest_does_not_list(tmp_path, capsys, extra, first):
    out = _fake_run(tmp_path / "run")
    (out / extra).parent.mkdir(parents=True, exist_ok=True)
    if extra.endswith("/"):
        (out / extra).mkdir()
    else:
        (out / extra).write_text("mine")
    before = _snapshot(out)
    code = cli.main(["run", "--max-tokens", "2000", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"holds ['{first}'" in err and "which a rerun would delete" in err, err
    assert _snapshot(out) == before and sorted(os.listdir(tmp_path)) == ["run"]


def test_a_folder_without_a_manifest_is_not_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "figures").mkdir(parents=True)
    (out / "report.html").write_text("someone's report")
    assert cli.main(["run", "--out", str(out)]) == 2
    assert "holds ['figures', 'figures" not in capsys.readouterr().err
    assert (out / "report.html").read_text() == "someone's report"


def test_a_dead_writers_lock_is_reclaimed_and_a_live_ones_refuses(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / ".out.saelab-lock"
    lock.write_text(f"{dead.pid}\n")
    with atomic_folder(tmp_path / "out", lock=True) as folder:
        assert lock.read_text().strip() == str(os.getpid())
        (folder / "x").write_text("x")
        with pytest.raises(RuntimeError, match=rf"out is being written by process {os.getpid()}"):
            with writer_lock(tmp_path / "out"):
                pass
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_the_lock_works_where_the_file_system_has_no_hard_links(tmp_path, monkeypatch):
    """On a mount without hard links (os.link fails with EPERM, as on some network and FUSE mounts) the
    lock is created exclusively instead: it still holds the pid, still refuses a second writer."""
    import errno

    def no_links(src, dst):
        raise PermissionError(errno.EPERM, "Operation not permitted", str(dst))

    monkeypatch.setattr(os, "link", no_links)
    with atomic_folder(tmp_path / "out", lock=True) as folder:
        assert (tmp_path / ".out.saelab-lock").read_text().strip() == str(os.getpid())
        (folder / "x").write_text("x")
        with pytest.raises(RuntimeError, match=rf"out is being written by process {os.getpid()}"):
            with writer_lock(tmp_path / "out"):
                pass
    assert sorted(os.listdir(tmp_path)) == ["out"]


def _start_run(out):
    env = {**os.environ, "SAELAB_PROGRESS": "0", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([*CLI, "run", "--max-tokens", "2000", "--out", str(out)], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def _wait_for(child, prefix: str) -> list[str]:
    seen = []
    for line in child.stderr:
        seen.append(line)
        if line.startswith(prefix):
            return seen
    raise AssertionError(f"the run ended before {prefix!r}: {''.join(seen)}")


@pytest.mark.slow
@pytest.mark.parametrize("signum, stage, delay, code, word", [
    (signal.SIGINT, "[3/", 0.3, 130, "interrupted"),     # training the sweep's SAEs
    (signal.SIGTERM, "[5/", 2.0, 143, "terminated"),     # training the layer SAEs
    (signal.SIGINT, "[5/", 2.0, 130, "interrupted")])
def test_a_signal_during_training_stops_the_run_and_keeps_the_old_one(tmp_path, signum, stage, delay, code, word):
    out = _fake_run(tmp_path / "run")
    before, temps = _snapshot(out), _saelab_temps()
    child = _start_run(out)
    try:
        _wait_for(child, stage)
        time.sleep(delay)
        child.send_signal(signum)
        rest = child.stderr.read()
        assert child.wait(timeout=HANG_GUARD_S) == code, rest
    finally:
        child.kill()
    assert rest.strip().endswith(f"saelab: {word}") and "Traceback" not in rest, rest
    assert "finished" not in child.stdout.read()
    assert _snapshot(out) == before
    assert sorted(os.listdir(tmp_path)) == ["run"]     # no temp folder, no lock
    assert _saelab_temps() == temps


@pytest.mark.slow
def test_a_second_run_into_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    out = _fake_run(tmp_path / "run")
    before = _snapshot(out)
    first = _start_run(out)
    try:
        _wait_for(first, "[2/")
        second = subprocess.run([*CLI, "run", "--max-tokens", "2000", "--out", str(out)], capture_output=True,
                                text=True, timeout=HANG_GUARD_S, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert second.returncode == 1 and second.stderr.count("\n") == 1, second.stderr
        assert f"is being written by process {first.pid}" in second.stderr and "report:" not in second.stdout
        first.send_signal(signal.SIGTERM)
        first.stderr.read()
        assert first.wait(timeout=HANG_GUARD_S) == 143
    finally:
        first.kill()
    assert _snapshot(out) == before and sorted(os.listdir(tmp_path)) == ["run"]


@pytest.mark.slow
@pytest.mark.parametrize("mib, previous", [(5, False), (5, True)])
def test_a_full_disk_is_one_line_before_the_long_work(small_disk, mib, previous):
    disk = small_disk(mib)
    out = _fake_run(disk / "run") if previous else disk / "run"
    if previous:
        out.mkdir(exist_ok=True)
    before = _snapshot(out) if previous else None
    done = subprocess.run([*CLI, "run", "--max-tokens", "2000", "--out", str(out)], capture_output=True, text=True,
                          timeout=HANG_GUARD_S, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "SAELAB_PROGRESS": "0"})
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert last.startswith(f"saelab run: not enough free space in {disk} for the run {out}: need ") and "bytes free" in last
    assert "[2/" not in done.stderr                       # refused before collecting anything
    assert (_snapshot(out) == before and sorted(os.listdir(disk)) == ["run"]) if previous else os.listdir(disk) == []


@pytest.mark.slow
def test_a_disk_that_fills_while_writing_is_one_error_and_leaves_nothing(small_disk, monkeypatch):
    """The estimate passed (forced to 0 here) but the disk fills while the run writes its files."""
    import dataclasses

    from saelab import report
    from saelab.files import NoSpaceError
    settings_module = importlib.import_module("saelab.training.lab_settings")
    from saelab.training.config import TrainConfig

    disk = small_disk(3)
    monkeypatch.setattr(settings_module, "estimate_bytes", lambda *a: 0)
    settings = dataclasses.replace(settings_module.lab_settings("tiny", max_tokens=800), eval_tokens=600, ce_texts=2,
                                   train=TrainConfig.lab(epochs=1, progress=False))
    with pytest.raises(NoSpaceError, match=rf"not enough free space in {disk} for the run {disk / 'run'}: [\d,]+ bytes free"):
        report.run_lab("tiny", disk / "run", device="cpu", settings=settings, progress=False)
    assert os.listdir(disk) == []
