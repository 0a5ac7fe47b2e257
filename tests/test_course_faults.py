"""`saelab release` and `saelab notebooks execute` against signals (issue 19 rows 4, 5): Ctrl-C and SIGTERM
while a notebook runs in its kernel, and kill -9 of a release. Real subprocesses, real kernels; each test
lists the folders and the temp dir before and after."""
import os
import signal
import subprocess
import time

import psutil
import pytest

from subprocess_run import CLI, ROOT

pytestmark = pytest.mark.slow   # each starts Jupyter kernels
HANG_GUARD_S = 600
URL = "https://example.org/course/saelab-0.1.0-py3-none-any.whl"
LAB = """\
# %% [markdown]
# # Lab
# %%
INSTALL_SOURCE = None

# %%
import os, time
time.sleep(float(os.environ.get("LAB_SLEEP", "0")))

# %%
def f():
    # BEGIN SOLUTION
    return 1
    # END SOLUTION
# %% tags=["check"]
assert f() == 1
"""


@pytest.fixture
def course(tmp_path):
    """(lab source, a private temp dir for the subprocesses, env)."""
    source = tmp_path / "lab_s.py"
    source.write_text(LAB)
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SAELAB_PROGRESS": "0", "TMPDIR": str(temp), "LAB_SLEEP": "120"}
    return source, temp, env


def _start(argv, env):
    return subprocess.Popen([*CLI, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=ROOT, start_new_session=True)   # its own process group, as a shell job has


def _kernel_of(child) -> psutil.Process:
    """The Jupyter kernel `child` started, once its notebook runs (hang-guarded)."""
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        for process in psutil.Process(child.pid).children(recursive=True):
            if any("ipykernel" in part for part in process.cmdline()):
                time.sleep(3)   # into the sleeping cell
                return process
        assert child.poll() is None, child.stderr.read()
        time.sleep(0.2)
    raise AssertionError("no kernel started")


def _gone(process: psutil.Process) -> bool:
    try:
        process.wait(timeout=60)   # the kernel polls its parent every second
    except psutil.TimeoutExpired:
        return False
    return True


@pytest.mark.parametrize("command", ["release", "execute"])
@pytest.mark.parametrize("signum, code, said", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
                         ids=["ctrl-c", "sigterm"])
def test_a_signal_while_a_kernel_runs_is_one_line_and_leaves_nothing(tmp_path, course, command, signum, code, said):
    """Ctrl-C (SIGINT to the whole foreground group, as a terminal sends it) and SIGTERM (to the saelab
    process alone, as `kill` or a job scheduler sends it) while a notebook runs in its kernel."""
    source, temp, env = course
    argv = (["release", str(tmp_path / "out"), "--no-wheel", "--install-source", URL, "--source", str(source)]
            if command == "release" else ["notebooks", "execute", "--root", str(tmp_path), "--source", str(source)])
    (tmp_path / "solutions").mkdir()   # a course folder has one: execute writes the solution there
    before = sorted(os.listdir(tmp_path))
    child = _start(argv, env)
    try:
        kernel = _kernel_of(child)
        if signum == signal.SIGINT:
            os.killpg(child.pid, signal.SIGINT)   # what Ctrl-C in a terminal does: the whole foreground group
        else:
            child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=HANG_GUARD_S)
    finally:
        child.kill()
    assert child.returncode == code and err.strip() == f"saelab: {said}", err
    assert _gone(kernel)
    assert sorted(os.listdir(tmp_path)) == before and os.listdir(temp) == []   # no release, no connection file
    assert os.listdir(tmp_path / "solutions") == []


def test_a_killed_release_is_cleaned_up_by_the_next(tmp_path, course):
    source, temp, env = course
    argv = ["release", str(tmp_path / "out"), "--no-wheel", "--install-source", URL, "--source", str(source)]
    child = _start(argv, env)
    try:
        kernel = _kernel_of(child)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=HANG_GUARD_S)
    finally:
        child.kill()
    assert _gone(kernel)   # the kernel notices its parent is gone and exits
    left = sorted(os.listdir(tmp_path))
    assert any(name.startswith(f".out.saelab-tmp-{child.pid}-") for name in left), left
    assert [name for name in os.listdir(temp) if name.startswith(f"saelab-kernel-{child.pid}-")]
    done = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=HANG_GUARD_S, cwd=ROOT,
                          env={**env, "LAB_SLEEP": "0"})
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path)) == ["lab_s.py", "out", "tmp"] and os.listdir(temp) == []


def test_sigterm_during_the_real_lab_is_one_line(tmp_path, course):
    """The shipped lab, stopped while its cells train: nbclient's own tasks, cut short by the shutdown,
    must not print their errors after `saelab: terminated` (they did, on the real lab only)."""
    _, temp, env = course
    (tmp_path / "solutions").mkdir()
    child = _start(["notebooks", "execute", "--root", str(tmp_path)], env)
    try:
        kernel = _kernel_of(child)
        time.sleep(20)   # into the lab's training cells
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=HANG_GUARD_S)
    finally:
        child.kill()
    assert child.returncode == 143 and err.strip() == "saelab: terminated", err
    assert _gone(kernel) and os.listdir(tmp_path / "solutions") == []
    assert [name for name in os.listdir(temp) if "saelab" in name] == []   # (torch keeps its own cache there)


def test_a_second_release_into_the_same_folder_is_refused_while_the_first_runs(tmp_path, course):
    """Two releases into one DIR at once: the second is refused at once, naming the first's pid; the
    first, stopped, leaves no DIR, no lock and no temp (before, the later swap silently replaced the first)."""
    source, temp, env = course
    argv = ["release", str(tmp_path / "out"), "--no-wheel", "--install-source", URL, "--source", str(source)]
    first = _start(argv, env)
    try:
        _kernel_of(first)   # the first holds the lock and runs its notebook
        second = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=HANG_GUARD_S, cwd=ROOT, env=env)
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=HANG_GUARD_S)
    finally:
        first.kill()
    assert second.returncode == 1, second.stderr
    assert second.stderr.strip().splitlines()[-1].endswith(f"is being written by process {first.pid} "
                                                          f"(lock {tmp_path / '.out.saelab-lock'}); wait for it "
                                                          f"to finish, or write somewhere else"), second.stderr
    assert first.returncode == 143 and sorted(os.listdir(tmp_path)) == ["lab_s.py", "tmp"]
