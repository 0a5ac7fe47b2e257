"""`saelab release`: wheel, notebooks with the install source, executed solutions, nbgrader folder and a
manifest, written atomically (a failed release leaves nothing behind)."""
import hashlib
import json

import nbformat
import pytest

from saelab.course import release
from saelab.files import TEMP_TAG

LAB = '''\
# %% [markdown]
# # Lab R
# BEGIN SOLUTION
# Solutions.
# STUB: Exercises.
# END SOLUTION

# %%
INSTALL_SOURCE = None

# %%
def square(x):
    # BEGIN SOLUTION
    return x * x
    # END SOLUTION

# %% tags=["check"]
assert square(3) == 9
print("square works")
'''
URL = "https://example.org/course/saelab-0.1.0-py3-none-any.whl"


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "lab_r.py"
    path.write_text(LAB, encoding="utf-8")
    return path


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if TEMP_TAG in p.name or ".tmp-" in p.name)


@pytest.mark.slow
def test_release_writes_a_folder_a_course_can_publish(tmp_path, source):
    folder = release.release(tmp_path / "course", URL, [source], nbgrader=True)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    wheels = [f for f in files if f.startswith("dist/")]
    assert len(wheels) == 2 and wheels[0].endswith("-py3-none-any.whl") and wheels[1].endswith(".tar.gz")
    assert set(files) - set(wheels) == {"manifest.json", "notebooks/lab_r.ipynb", "solutions/lab_r.ipynb",
                                        "nbgrader/source/lab_r/lab_r.ipynb"}
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["install_source"] == URL and manifest["saelab_version"]
    assert manifest["files"] == {f: hashlib.sha256((folder / f).read_bytes()).hexdigest()
                                 for f in files if f != "manifest.json"}
    for variant in ("notebooks", "solutions"):
        nb = nbformat.read(folder / variant / "lab_r.ipynb", as_version=4)
        assert nb.cells[1].source == f"INSTALL_SOURCE = {URL!r}"
    solved = nbformat.read(folder / "solutions" / "lab_r.ipynb", as_version=4)
    assert solved.cells[-1].outputs[0].text == "square works\n"
    assert leftovers(tmp_path) == []


def test_release_refuses_a_folder_in_use_and_leaves_nothing_after_a_failure(tmp_path, source, monkeypatch):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="folder: .*busy exists and is not empty"):
        release.release(busy, URL, [source], wheel=False)

    def fail(*args, **kwargs):
        raise RuntimeError("a cell failed")
    monkeypatch.setattr(release.regenerate, "execute", fail)
    with pytest.raises(RuntimeError, match="a cell failed"):
        release.release(tmp_path / "new", URL, [source], wheel=False)
    assert not (tmp_path / "new").exists() and leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="install_source: expected a wheel path or URL"):
        release.release(tmp_path / "new", " ", [source], wheel=False)
