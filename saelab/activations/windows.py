"""Long texts as context-sized windows: every token of a text reaches the model, each window starting
with BOS (as SAELens's `ActivationsStore` cuts its token stream).

A text's tokens `ids` (BOS first when the model prepends one) are cut into windows of at most
`context_length` tokens: the BOS, then the next `context_length - 1` tokens of the text. The first
window is the text's own beginning; a later window's BOS is added, so its position 0 is not a token
of the text. `collect_activations` and `ce_loss_recovered` both read texts this way.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from saelab.utils import describe


class Window(NamedTuple):
    """One forward pass's worth of a text: the text's tokens [start, stop) after a BOS (when `bos`)."""
    text: int
    start: int
    stop: int

    def tokens(self, ids: torch.Tensor, bos: bool) -> torch.Tensor:
        """The model's input `[<= context_length]`: BOS (when `bos`), then ids[start:stop]."""
        return torch.cat([ids[:1], ids[self.start:self.stop]]) if bos else ids[self.start:self.stop]

    def added_bos(self, bos: bool) -> bool:
        """Whether input position 0 is a BOS added for this window (a later window's), not the text's own."""
        return bos and self.start > 1

    def text_positions(self, bos: bool) -> torch.Tensor:
        """`[len(tokens)]` each input position's position in the text's tokens (a later window's added BOS
        maps to 0, the text's own BOS)."""
        body = torch.arange(self.start, self.stop)
        return torch.cat([torch.zeros(1, dtype=torch.int64), body]) if bos else body


def prepends_bos(model) -> bool:
    """Whether `model.to_tokens` puts a BOS first (TransformerLens's default_prepend_bos)."""
    return bool(getattr(model.cfg, "default_prepend_bos", True))


def tokenize(model, texts: list[str], prepend_bos: bool | None = None) -> list[torch.Tensor]:
    """Each text's token ids on the CPU, whole (never truncated), BOS first when the model prepends one
    (or when `prepend_bos` says so); a text that gives no token besides BOS is a ValueError naming it."""
    bos = prepends_bos(model) if prepend_bos is None else prepend_bos
    tokens = []
    for i, text in enumerate(texts):
        ids = model.to_tokens(text, prepend_bos=bos, truncate=False, move_to_device=False)[0].cpu()
        if len(ids) <= int(bos):
            raise ValueError(f"texts[{i}]: {describe(text)} tokenizes to no tokens; remove it or give it some text")
        tokens.append(ids)
    return tokens


def split_windows(text_tokens: list[torch.Tensor], context_length: int, bos: bool) -> list[Window]:
    """Every text's windows, in text order: each holds up to `context_length - bos` tokens of the text."""
    step = context_length - int(bos)
    return [Window(t, start, min(start + step, len(ids)))
            for t, ids in enumerate(text_tokens) for start in range(int(bos), len(ids), step)]
