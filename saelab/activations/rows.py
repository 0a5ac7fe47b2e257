"""Activations: the container of collected rows (one per token, with provenance) and the row readers.

`saelab.activations.collect.collect_activations` fills an `Activations`. Its rows live in memory, or, when they
would exceed the memory budget, in a raw float32 file on disk that is read back in batches (never
mapped for good), so training and evaluation stay bounded in memory. Every consumer reads rows only
through `gather_rows`, `iter_row_batches`, `n_rows`, `find_nonfinite_row` and `as_rows` (and
`validate.row_width`), which take a single-layer `Activations` or a float tensor `[n_tokens, width]`
that a public function already checked (`validate.check_rows`): they check nothing themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator

import torch

from saelab.models import resolve_device
from saelab.utils import token_text
from saelab.validate import check_index, check_int, check_row


@dataclass(eq=False, repr=False)
class Activations:
    """Rows of one or more layers' activations, one per token, with each row's provenance.

    layers: the model layers held (non-negative); hook: the short hook name ("resid_post");
    model_name: `model.cfg.model_name`; width: the width of each row (the hook's width: d_model for
    the residual stream, n_heads * d_head for "z", d_mlp for "mlp_post").
    texts: the source texts; text_index / position / token_ids: `[n_tokens]` int64, for each row
    the text it came from, its position in that text's tokens (BOS = 0) and its token id.
    Rows of a layer: `acts[layer].rows` `[n_tokens, width]` float32 (in memory, or memory-mapped
    when `on_disk`); read them in batches with `gather(index)` and `iter_rows(batch_size)`.
    """

    layers: tuple[int, ...]
    hook: str
    model_name: str
    width: int
    texts: list[str]
    text_index: torch.Tensor
    position: torch.Tensor
    token_ids: torch.Tensor
    _stores: dict = field(default_factory=dict)
    _text_tokens: torch.Tensor | None = None      # [sum of tokens] every text's token ids, concatenated
    _text_offsets: torch.Tensor | None = None     # [n_texts + 1] where each text's tokens start
    _tokenizer: object = None
    _n_model_layers: int | None = None

    # -- size and selection
    def __len__(self) -> int:
        return len(self.text_index)

    @property
    def n_tokens(self) -> int:
        return len(self.text_index)

    def _resolve_layer(self, layer) -> int:
        layer = check_int("layer", layer)
        resolved = layer + self._n_model_layers if layer < 0 and self._n_model_layers else layer
        if resolved not in self._stores:
            raise ValueError(f"layer: {layer} was not collected; this Activations holds layers {list(self.layers)}")
        return resolved

    def __getitem__(self, layer: int) -> "Activations":
        """The single-layer view of `layer` (same provenance, no copy)."""
        layer = self._resolve_layer(layer)
        return replace(self, layers=(layer,), _stores={layer: self._stores[layer]})

    @property
    def layer(self) -> int:
        """The single layer held (ValueError when there are several)."""
        if len(self.layers) != 1:
            raise ValueError(f"this Activations holds layers {list(self.layers)}; select one with "
                             f"acts[{self.layers[0]}] (e.g. acts[{self.layers[0]}].rows)")
        return self.layers[0]

    def _store(self):
        return self._stores[self.layer]

    # -- reading rows
    @property
    def rows(self) -> torch.Tensor:
        """`[n_tokens, width]` float32 (memory-mapped, read-only in effect, when `on_disk`)."""
        return self._store().rows()

    @property
    def on_disk(self) -> bool:
        """True when the rows live in a file on disk (read them in batches)."""
        return any(s.on_disk for s in self._stores.values())

    @property
    def device(self) -> torch.device:
        """Where `rows` / `gather` results live (CPU when on disk)."""
        store = next(iter(self._stores.values()))
        return torch.device("cpu") if store.on_disk else store.tensor.device

    def gather(self, index) -> torch.Tensor:
        """Rows `index` in index's order: `[len(index), width]` float32 (index: 1-D ints in [0, n_tokens))."""
        store = self._store()
        return store.gather(check_index("index", index, store.n_rows))

    def iter_rows(self, batch_size: int = 4096) -> Iterator[torch.Tensor]:
        """All rows in order, `[<= batch_size, width]` at a time (bounded memory when on disk)."""
        check_int("batch_size", batch_size, minimum=1)
        return iter_row_batches(self, batch_size)

    def to(self, device) -> "Activations":
        """A copy with in-memory rows on `device` (rows on disk stay there: gather returns CPU tensors)."""
        device = resolve_device(device)
        if self.on_disk:
            if device.type == "cpu":
                return self
            raise ValueError(f"device: these rows are on disk and are read in batches on the CPU; move "
                             f"each batch to {device} instead (e.g. gather_rows(acts, index).to('{device}'))")
        return replace(self, _stores={layer: store.to(device) for layer, store in self._stores.items()})

    # -- provenance
    def _decode(self, ids) -> list[str]:
        if self._tokenizer is None:
            return [f"<{int(i)}>" for i in ids]
        return [token_text(self._tokenizer, int(i)) for i in ids]

    def str_token(self, row: int) -> str:
        """The string of row `row`'s token."""
        return self._decode([self.token_ids[check_row("row", row, len(self))]])[0]

    def context(self, row: int, before: int = 8, after: int = 8) -> tuple[list[str], int]:
        """String tokens around row `row`'s token in its text (up to `before` tokens before and `after`
        after, within the text's tokens), and the index of the row's token in that list."""
        row = check_row("row", row, len(self))
        check_int("before", before, minimum=0)
        check_int("after", after, minimum=0)
        text, pos = int(self.text_index[row]), int(self.position[row])
        start, stop = int(self._text_offsets[text]), int(self._text_offsets[text + 1])
        lo, hi = max(start, start + pos - before), min(stop, start + pos + after + 1)
        return self._decode(self._text_tokens[lo:hi]), start + pos - lo

    def __repr__(self) -> str:
        where = "on disk" if self.on_disk else f"in memory ({self.device})"
        layers = self.layers[0] if len(self.layers) == 1 else list(self.layers)
        name = "layer" if len(self.layers) == 1 else "layers"
        return (f"Activations({name}={layers}, hook={self.hook!r}, n_tokens={len(self)}, width={self.width}, "
                f"model={self.model_name!r}, texts={len(self.texts)}, {where})")


# ----------------------------------------------------------------------------- shared readers
# These trust their arguments: a public function checked `activations` once (validate.check_rows).

def as_rows(activations) -> torch.Tensor:
    """`[n_tokens, width]` rows of a single-layer Activations (memory-mapped when on disk) or the tensor itself."""
    return activations.rows if isinstance(activations, Activations) else activations


def gather_rows(activations, index: torch.Tensor) -> torch.Tensor:
    """Rows `index` (1-D int64, in range) in index's order: `[len(index), width]`."""
    if isinstance(activations, Activations):
        return activations._store().gather(index)
    return activations.index_select(0, index.to(activations.device))


def iter_row_batches(activations, batch_size: int = 4096) -> Iterator[torch.Tensor]:
    """All rows in order, `[<= batch_size, width]` at a time (bounded memory for rows on disk)."""
    if isinstance(activations, Activations):
        store = activations._store()
        return (store.chunk(start, min(start + batch_size, store.n_rows))
                for start in range(0, store.n_rows, batch_size))
    return iter(activations.split(batch_size))


def n_rows(activations) -> int:
    """The number of rows (tokens)."""
    return len(activations)


def find_nonfinite_row(activations, batch_size: int = 65536) -> int | None:
    """The first row holding NaN or inf, or None when every row is finite; read in batches of
    `batch_size` rows (bounded memory for rows on disk)."""
    start = 0
    for batch in iter_row_batches(activations, batch_size):
        bad = ~torch.isfinite(batch).all(dim=-1)
        if bool(bad.any()):
            return start + int(bad.nonzero()[0, 0])
        start += batch.shape[0]
    return None
