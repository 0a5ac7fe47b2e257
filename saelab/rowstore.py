"""Where activation rows live: in memory, or in raw float32 files read back in batches.

`MemoryStore` wraps a tensor `[n_rows, width]`; `DiskStore` writes and reads a raw float32 file with
plain file calls (pwrite / preadv), never keeping a memory map, so the resident memory of a reader
stays bounded whatever the file's size. `TempDir` removes its folder when garbage-collected.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np
import torch

ROW_BYTES = 4  # float32



class TempDir:
    """A directory removed when the last object holding it is garbage-collected."""

    def __init__(self, parent: str | os.PathLike | None):
        if parent is not None:
            Path(parent).mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix="saelab-acts-", dir=None if parent is None else str(parent)))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), True)


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
    and never piles up in this process's RSS; only `rows` maps the whole file.
    """

    on_disk = True

    def __init__(self, path: Path, n_rows: int, width: int, directory: TempDir):
        self.path, self.n_rows, self.width = path, n_rows, width
        self.directory = directory  # keeps the directory alive while any store uses it
        self.row_bytes = width * ROW_BYTES
        with open(path, "wb") as f:
            f.truncate(n_rows * self.row_bytes)

    def write(self, start: int, rows: torch.Tensor) -> None:
        data = rows.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes()
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, start * self.row_bytes)
        finally:
            os.close(fd)

    def rows(self) -> torch.Tensor:
        if self.n_rows == 0:
            return torch.empty(0, self.width)
        # a copy-on-write map: writable (as torch wants), never writes to the file
        return torch.from_numpy(np.memmap(self.path, dtype="<f4", mode="c", shape=(self.n_rows, self.width)))

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
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for at, offset, size in zip((starts * self.row_bytes).tolist(), offsets, sizes):
                self._read(fd, view[at:at + size], offset)
        finally:
            os.close(fd)
        return torch.from_numpy(out if inverse is None else out[inverse.reshape(-1)])

    def chunk(self, start: int, stop: int) -> torch.Tensor:
        out = torch.empty(stop - start, self.width)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            self._read(fd, memoryview(out.numpy()).cast("B"), start * self.row_bytes)
        finally:
            os.close(fd)
        return out

    def _read(self, fd: int, view: memoryview, offset: int) -> None:
        done = os.preadv(fd, [view], offset)
        while done < len(view):
            n = os.preadv(fd, [view[done:]], offset + done)  # a short read: carry on
            if not n:
                raise RuntimeError(f"activation file {self.path} is shorter than expected "
                                   f"({self.n_rows} rows of {self.width} floats); was it modified?")
            done += n


# ----------------------------------------------------------------------------- Activations
