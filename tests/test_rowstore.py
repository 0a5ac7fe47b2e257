"""Spilled activation rows: nameless files, private folders reclaimed after a kill, clear space errors."""
import gc
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from saelab.activations import stores as rowstore
from saelab.activations.stores import ROW_BYTES, DiskStore, TempDir

ROOT = Path(__file__).resolve().parents[1]


def _store(parent, n_rows=50, width=8, name="rows.f32"):
    directory = TempDir(parent)
    return DiskStore(directory.path / name, n_rows, width, directory)


def test_spilled_rows_have_no_name_read_back_and_vanish(tmp_path):
    store = _store(tmp_path)
    rows = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    store.write(0, rows[:30])
    store.write(30, rows[30:])
    folder = store.directory.path
    assert folder.parent == tmp_path and folder.name.startswith(f"saelab-acts-{os.getpid()}-")
    assert list(folder.iterdir()) == []                           # unlinked at once: nothing to leave behind
    st = os.fstat(store.fd)
    assert st.st_nlink == 0 and st.st_size == 50 * 8 * ROW_BYTES
    assert st.st_blocks * 512 >= st.st_size                       # reserved, not sparse
    assert torch.equal(store.rows(), rows) and torch.equal(store.chunk(10, 20), rows[10:20])
    index = torch.tensor([3, 4, 5, 40, 3])
    assert torch.equal(store.gather(index), rows[index])
    del store
    gc.collect()
    assert not folder.exists()


def test_a_second_collection_keeps_a_live_ones_folder(tmp_path):
    first, second = _store(tmp_path), _store(tmp_path)
    assert first.directory.path.is_dir() and second.directory.path.is_dir()
    first.write(0, torch.ones(50, 8))
    assert torch.equal(first.chunk(0, 50), torch.ones(50, 8))


_WRITER = textwrap.dedent("""
    import sys, time, torch
    from saelab.activations.stores import DiskStore, TempDir
    directory = TempDir(sys.argv[1])
    store = DiskStore(directory.path / "resid_post_layer0.f32", 4000, 64, directory)
    for start in range(0, 2000, 100):
        store.write(start, torch.full((100, 64), 1.0))
    print(directory.path, flush=True)
    while True:
        store.write(0, torch.full((100, 64), 2.0))
        time.sleep(0.01)
""")


def test_kill_9_leaves_no_rows_and_the_next_collection_reclaims_the_folder(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        folder = Path(child.stdout.readline().strip())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert folder.parent == tmp_path and folder.name.startswith(f"saelab-acts-{child.pid}-")
    assert list(folder.iterdir()) == []                            # the rows died with the process
    store = _store(tmp_path)                                       # the next collection
    assert not folder.exists()
    assert list(tmp_path.iterdir()) == [store.directory.path]


def test_full_disk_names_cache_dir_the_bytes_needed_and_free(tmp_path, monkeypatch):
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
                             capture_output=True).returncode == 0
    try:
        if not mounted:  # no tmpfs here: a disk that reports 1 MiB free
            usage = shutil.disk_usage(tmp_path)
            monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=2**20))
        need = 4096 * 128 * ROW_BYTES                                 # 2 MiB
        with pytest.raises(OSError, match=rf"cache_dir: not enough free space in cache_dir '{small}'.*"
                                          rf"need {need:,} bytes \(2.0 MiB\), [\d,]+ bytes free; pass cache_dir="):
            _store(small, n_rows=4096, width=128)
        if mounted:  # the space check passes (it is told so) and the reservation itself fails
            usage = shutil.disk_usage(small)
            monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=2**40))
            with pytest.raises(OSError, match=rf"cache_dir: not enough free space .* need {need:,} bytes"):
                _store(small, n_rows=4096, width=128)
        gc.collect()
        assert list(small.iterdir()) == []                            # nothing left on the full disk
    finally:
        if mounted:
            subprocess.run(["umount", str(small)], check=True)


def test_unwritable_cache_dir_is_named(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match=rf"cache_dir: cannot create a folder for spilled activation rows in "
                                      rf"cache_dir '{blocker / 'cache'}'"):
        TempDir(blocker / "cache")
    readonly = tmp_path / "ro"
    readonly.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(readonly)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        with pytest.raises(OSError, match=rf"cache_dir: cannot create .* in cache_dir '{readonly}' \(Read-only"):
            TempDir(readonly)
    finally:
        subprocess.run(["umount", str(readonly)], check=True)
