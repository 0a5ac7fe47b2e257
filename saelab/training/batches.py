"""The seeded mini-batch order every trainer (and the lab's own loop) uses: `batch_indices`."""
from __future__ import annotations

import math
from typing import Iterator

import torch

from saelab.validate import check_int


def batch_indices(n_rows: int, batch_size: int, seed: int, epochs: int = 1,
                  steps: int | None = None) -> Iterator[torch.Tensor]:
    """The shuffled mini-batch order: row indices [<= batch_size] int64, one tensor per step.

    Each epoch is a fresh permutation of range(n_rows) from a torch.Generator seeded with `seed`, cut
    into batches of `batch_size` (the last one may be smaller, like the seed's DataLoader). With
    `steps`, exactly that many batches are yielded, running through as many epochs as needed (`epochs`
    is then ignored). Same arguments, same batches.
    """
    check_int("n_rows", n_rows, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    check_int("seed", seed, minimum=0)
    check_int("epochs", epochs, minimum=1)
    check_int("steps", steps, minimum=1, allow_none=True)
    return _batch_indices(n_rows, batch_size, seed, epochs, steps)


def _batch_indices(n_rows, batch_size, seed, epochs, steps):
    generator = torch.Generator().manual_seed(seed)
    made, epoch = 0, 0
    while (epoch < epochs) if steps is None else (made < steps):
        order = torch.randperm(n_rows, generator=generator)
        for batch in order.split(batch_size):
            if steps is not None and made == steps:
                return
            made += 1
            yield batch
        epoch += 1


def n_steps(n_rows: int, batch_size: int, epochs: int = 1, steps: int | None = None) -> int:
    """How many batches `batch_indices` yields for these arguments."""
    return steps if steps is not None else epochs * math.ceil(n_rows / batch_size)
