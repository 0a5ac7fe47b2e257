"""`saelab release` and `saelab notebooks execute` against signals (issue 19 rows 4, 5): Ctrl-C while a
notebook runs in its kernel, and kill -9 of a release. Real subprocesses, real kernels; each test
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
def test_ctrl_c_while_a_kernel_runs_is_one_line_and_leaves_nothing(tmp_path, course, command):
    source, temp, env = course
    argv = (["release", str(tmp_path / "out"), "--no-wheel", "--install-source", URL, "--source", str(source)]
            if command == "release" else ["notebooks", "execute", "--root", str(tmp_path), "--source", str(source)])
    (tmp_path / "solutions").mkdir()   # a course folder has one: execute writes the solution there
    before = sorted(os.listdir(tmp_path))
    child = _start(argv, env)
    try:
        kernel = _kernel_of(child)
        os.killpg(child.pid, signal.SIGINT)   # what Ctrl-C in a terminal does: the whole foreground group
        out, err = child.communicate(timeout=HANG_GUARD_S)
    finally:
        child.kill()
    assert child.returncode == 130 and err.strip() == "saelab: interrupted", err
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
