"""Small shared helpers: progress bars, value descriptions for messages, and token text for display.

(Argument checks live in `saelab.validate`.)
"""
from __future__ import annotations

import functools
import os
import re
import unicodedata
from pathlib import Path
from typing import Iterable

import torch

#: The package's data: the embedded model, the texts, the lab sources, the reference SAEs.
ASSETS_DIR = Path(__file__).resolve().parent / "assets"
PROGRESS_ENV = "SAELAB_PROGRESS"


def progress_enabled(progress: bool = True) -> bool:
    """False when the caller asks for silence or $SAELAB_PROGRESS is 0/false/off (CI, nbval)."""
    return bool(progress) and os.environ.get(PROGRESS_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def progress_bar(iterable: Iterable | None = None, *, progress: bool = True, **kwargs):
    """A tqdm.auto bar (notebook widget or terminal), disabled by `progress=False` or $SAELAB_PROGRESS=0."""
    from tqdm.auto import tqdm
    return tqdm(iterable, disable=not progress_enabled(progress), dynamic_ncols=True, **kwargs)


def active(features: torch.Tensor) -> torch.Tensor:
    """Where features are active: != 0, as SAELens counts (ReLU features are active where > 0; other
    architectures' features may be negative). saelab's one definition of "active"."""
    return features != 0


#: Rounding allowance of `zero_variance`, in units of the accumulation dtype's machine epsilon.
ZERO_VARIANCE_EPS = 1e4


def zero_variance(variance, second_moment, dtype: torch.dtype = torch.float64):
    """Whether a variance is zero up to rounding: at most ZERO_VARIANCE_EPS machine epsilons of `dtype`
    (the dtype its sums were accumulated in) times the second moment E[x^2] it was computed from.
    saelab's one definition of "constant" (evaluate's explained variance, the co-activation's features);
    floats or tensors (elementwise)."""
    return variance <= ZERO_VARIANCE_EPS * torch.finfo(dtype).eps * second_moment


def describe(value) -> str:
    """A short description of a value for error messages: type and, for tensors, shape and dtype."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)} ({value.dtype})"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) < 60 else text[:57] + '...'}"


@functools.cache
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet (transformers' `bytes_to_unicode`), inverted: character -> byte."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    return {char: byte for byte, char in bytes_to_unicode().items()}


_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def token_text(tokenizer, token_id: int) -> str:
    """One token's text for display: what the tokenizer decodes it to, except that bytes which are not
    a whole UTF-8 character on their own (byte-level pieces of a multi-byte character, which decode to
    U+FFFD) are shown as `<0x98>`. Without a tokenizer, the id as `<id>`."""
    if tokenizer is None:
        return f"<{int(token_id)}>"
    token_id = int(token_id)
    text = tokenizer.decode([token_id])
    if "\ufffd" not in text:
        return text
    raw = _token_bytes(tokenizer, token_id)
    if raw is None:
        return f"{text}<{token_id}>"
    decoded = raw.decode("utf-8", errors="surrogateescape")  # lone bytes become U+DC80..U+DCFF
    return "".join(f"<0x{ord(c) - 0xDC00:02X}>" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in decoded)


def _token_bytes(tokenizer, token_id: int) -> bytes | None:
    """The raw bytes of a byte-level BPE token (GPT-2 style) or a `<0xNN>` byte-fallback piece, else None."""
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if not isinstance(piece, str) or not piece:
        return None
    match = _BYTE_PIECE.fullmatch(piece)
    if match:
        return bytes([int(match.group(1), 16)])
    alphabet = _byte_level_alphabet()
    if all(c in alphabet for c in piece):
        return bytes(alphabet[c] for c in piece)
    return None


def visible_token(token: str) -> str:
    """A token as displayed everywhere (cards, top examples, logit lists): newline as ⏎, tab as ⇥, other
    control characters escaped (\\x18), invisible format characters as \\u200b, and in a token made only
    of whitespace each space as a middle dot (·); a leading space in a word token stays a space.
    (Bytes that are not a whole character come as `<0x98>` from `utils.token_text`.)"""
    shown = token.replace("\r", "").replace("\n", "⏎").replace("\t", "⇥")
    shown = "".join(_escaped(c) for c in shown)
    return shown.replace(" ", "·") if token and not token.strip() else shown


def _escaped(char: str) -> str:
    category = unicodedata.category(char)
    if category == "Cc":
        return f"\\x{ord(char):02x}"
    if category in ("Cf", "Zl", "Zp") or (category == "Zs" and char != " "):
        return f"\\u{ord(char):04x}"
    return char
