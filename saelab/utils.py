"""Small shared helpers: progress bars and argument validation with clear messages."""
from __future__ import annotations

import math
import os
from typing import Iterable

import torch

PROGRESS_ENV = "SAELAB_PROGRESS"


def progress_enabled(progress: bool = True) -> bool:
    """False when the caller asks for silence or $SAELAB_PROGRESS is 0/false/off (CI, nbval)."""
    return bool(progress) and os.environ.get(PROGRESS_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def progress_bar(iterable: Iterable | None = None, *, progress: bool = True, **kwargs):
    """A tqdm.auto bar (notebook widget or terminal), disabled by `progress=False` or $SAELAB_PROGRESS=0."""
    from tqdm.auto import tqdm
    return tqdm(iterable, disable=not progress_enabled(progress), dynamic_ncols=True, **kwargs)


def describe(value) -> str:
    """A short description of a value for error messages: type and, for tensors, shape and dtype."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)} ({value.dtype})"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) < 60 else text[:57] + '...'}"


def check_int(name: str, value, minimum: int | None = None, allow_none: bool = False) -> int | None:
    """`value` as an int >= minimum, else ValueError naming `name`."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        need = f"an int >= {minimum}" if minimum is not None else "an int"
        raise ValueError(f"{name}: expected {need}{' or None' if allow_none else ''}, got {describe(value)}")
    return value


def check_float(name: str, value, minimum: float | None = None, strict: bool = False) -> float:
    """`value` as a finite float (>= minimum, or > minimum when strict), else ValueError naming `name`."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum}"
        raise ValueError(f"{name}: expected a finite number{bound}, got {describe(value)}")
    return float(value)
