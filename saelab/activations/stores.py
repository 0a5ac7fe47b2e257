"""Where activation rows live: in memory, or in raw float32 files read back in batches.

`MemoryStore` wraps a tensor `[n_rows, width]`; `DiskStore` writes and reads a raw float32 file with
plain file calls (pwrite / preadv), never keeping a memory map, so the resident memory of a reader
stays bounded whatever the file's size.

Spilled rows cannot outlive their process: each file is unlinked the moment it is created (the
store keeps only its open descriptor), so the kernel frees it when the store is garbage-collected
or the process dies, kill -9 included. The files are created in `TempDir`, a folder named with the
owner's pid (`saelab-acts-<pid>-<hex>`), removed when garbage-collected; a folder whose owner is
gone is removed by the next `TempDir` in the same parent. Space is reserved (posix_fallocate) after
a free-space check, so a full disk fails at once with a message naming `cache_dir`.
"""
from __future__ import annotations

import errno
import mmap
import os
import tempfile
import weakref
from pathlib import Path

import numpy as np
import torch

from saelab.files import NO_SPACE_ERRNOS, check_free_space, make_temp_dir, no_space, remove_temp

ROW_BYTES = 4  # float32
TEMP_PREFIX = "saelab-acts-"


class TempDir:
    """A private folder `parent/saelab-acts-<pid>-<hex>`, removed when the last object holding it is
    garbage-collected. parent: `cache_dir`, or None for the system temp dir."""

    def __init__(self, parent: str | os.PathLike | None):
        self.parent = Path(tempfile.gettempdir() if parent is None else parent)
        self.where = (f"cache_dir {str(self.parent)!r}" if parent is not None
                      else f"the system temp dir {str(self.parent)!r} (cache_dir=None)")
        try:
            self.path = make_temp_dir(self.parent, TEMP_PREFIX)
        except OSError as e:
            raise OSError(f"cache_dir: cannot create a folder for spilled activation rows in {self.where} "
                          f"({e.strerror or e}); pass cache_dir= a writable folder, or raise "
                          f"memory_budget_bytes to keep the rows in memory") from None
        self._finalizer = weakref.finalize(self, remove_temp, str(self.path))


class MemoryStore:
    """Rows in one tensor `[n_rows, width]`."""

    on_disk = False

    def __init__(self, rows: torch.Tensor):
        self.tensor = rows
        self.n_rows, self.width = rows.shape

    def write(self, start: int, rows: torch.Tensor) -> None:
        self.tensor[start:start + len(rows)] = rows

    def rows(self) -> torch.Tensor:
        return self.tensor

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        return self.tensor.index_select(0, index.to(self.tensor.device))

    def chunk(self, start: int, stop: int) -> torch.Tensor:
        return self.tensor[start:stop]

    def to(self, device: torch.device) -> "MemoryStore":
        return MemoryStore(self.tensor.to(device))


class DiskStore:
    """Rows in a raw little-endian float32 file `[n_rows, width]`.

    Writes and reads are plain file I/O (pwrite / preadv), so the data passes through the page cache
    and never piles up in this process's RSS; only `rows` maps the whole file. The file at `path`
    (inside `directory`) is unlinked once created: `fd` holds it, closed when the store is collected.
    """

    on_disk = True

    def __init__(self, path: Path, n_rows: int, width: int, directory: TempDir):
        self.path, self.n_rows, self.width = path, n_rows, width
        self.directory = directory  # keeps the directory alive while any store uses it
        self.row_bytes = width * ROW_BYTES
        self.nbytes = n_rows * self.row_bytes
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            raise OSError(f"cache_dir: cannot create {path.name} in {directory.where} ({e.strerror or e})") from None
        self._finalizer = weakref.finalize(self, os.close, self.fd)
        os.unlink(path)  # from now on only this descriptor holds the file
        self._reserve()

    def _reserve(self) -> None:
        """Check the free space, then allocate the whole file (no sparse file to fill later)."""
        check_free_space(self.directory.parent, self._what, self.nbytes, **self._no_space_words)
        try:
            os.posix_fallocate(self.fd, 0, self.nbytes)
        except AttributeError:  # no posix_fallocate on this system: the space check above stands
            os.ftruncate(self.fd, self.nbytes)
        except OSError as e:
            if e.errno in NO_SPACE_ERRNOS:
                raise no_space(self.directory.parent, self._what, self.nbytes, **self._no_space_words) from None
            if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            os.ftruncate(self.fd, self.nbytes)

    @property
    def _what(self) -> str:
        return f"the spilled activation rows ({self.path.name})"

    @property
    def _no_space_words(self) -> dict:
        """How `files.no_space` names the folder and what it suggests."""
        return {"argument": "cache_dir", "named": self.directory.where,
                "hint": "pass cache_dir= a folder with more space, or fewer texts / max_tokens"}

    def write(self, start: int, rows: torch.Tensor) -> None:
        data = rows.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes()
        try:
            os.pwrite(self.fd, data, start * self.row_bytes)
        except OSError as e:
            if e.errno in NO_SPACE_ERRNOS:
                raise no_space(self.directory.parent, self._what, self.nbytes, **self._no_space_words) from None
            raise

    def rows(self) -> torch.Tensor:
        if self.n_rows == 0:
            return torch.empty(0, self.width)
        # a copy-on-write map: writable (as torch wants), never writes to the file
        mapped = mmap.mmap(self.fd, self.nbytes, access=mmap.ACCESS_COPY)
        return torch.from_numpy(np.frombuffer(mapped, dtype="<f4").reshape(self.n_rows, self.width))

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        # Explicit reads, one per run of consecutive rows: pages of a mapped file that were touched
        # (and the kernel's fault-around neighbours) would count in this process's RSS.
        index = index.cpu().numpy()
        if len(index) == 0:
            return torch.empty(0, self.width)
        if (np.diff(index) > 0).all():
            wanted, inverse = index, None
        else:
            wanted, inverse = np.unique(index, return_inverse=True)
        out = np.empty((len(wanted), self.width), dtype="<f4")
        breaks = np.flatnonzero(np.diff(wanted) != 1) + 1
        starts = np.concatenate([[0], breaks])
        sizes = (np.diff(np.concatenate([starts, [len(wanted)]])) * self.row_bytes).tolist()
        offsets = (wanted[starts] * self.row_bytes).tolist()
        view = memoryview(out).cast("B")
        for at, offset, size in zip((starts * self.row_bytes).tolist(), offsets, sizes):
            self._read(view[at:at + size], offset)
        return torch.from_numpy(out if inverse is None else out[inverse.reshape(-1)])

    def chunk(self, start: int, stop: int) -> torch.Tensor:
        out = torch.empty(stop - start, self.width)
        self._read(memoryview(out.numpy()).cast("B"), start * self.row_bytes)
        return out

    def _read(self, view: memoryview, offset: int) -> None:
        done = os.preadv(self.fd, [view], offset)
        while done < len(view):
            n = os.preadv(self.fd, [view[done:]], offset + done)  # a short read: carry on
            if not n:
                raise RuntimeError(f"activation file {self.path} is shorter than expected "
                                   f"({self.n_rows} rows of {self.width} floats); was it modified?")
            done += n
