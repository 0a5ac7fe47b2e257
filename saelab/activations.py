"""collect_activations: one batched forward pass per batch -> per-token rows with provenance.

The seed notebook runs `run_with_cache` once per prompt, keeps every hook of every layer, and takes
one layer. Here each batch of texts goes through the model once, with hooks only on the requested
layers and the forward pass stopped after the deepest one. Right padding is masked out (rows exist
only for real tokens) and BOS rows are dropped by default: their norm dwarfs every other row's and
dominates the SAE's MSE.

Rows live in memory, or, when they would exceed `memory_budget_bytes`, in a raw float32 file on disk
that is read back in batches (never mapped for good), so collecting and training stay bounded in
memory. Every consumer reads rows only through `gather_rows`, `iter_row_batches`, `n_rows`,
`d_model_of` and `as_rows`, which accept a single-layer `Activations` or a float tensor
`[n_tokens, d_model]`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence

import numpy as np
import torch

from saelab.models import resolve_device
from saelab.rowstore import ROW_BYTES, DiskStore, MemoryStore, TempDir
from saelab.utils import check_int, describe, progress_bar

#: Short hook names tried against the model when listing what `hook` may be (any name that
#: `get_act_name(hook, layer)` maps to a hook of the model with a per-token activation works).
KNOWN_HOOKS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_in", "attn_in",
               "mlp_pre", "mlp_post", "q", "k", "v", "z", "result", "q_input", "k_input", "v_input")
_NOT_PER_TOKEN = ("hook_pattern", "hook_attn_scores")


@dataclass(eq=False, repr=False)
class Activations:
    """Rows of one or more layers' activations, one per token, with each row's provenance.

    layers: the model layers held (non-negative); hook: the short hook name ("resid_post");
    model_name: `model.cfg.model_name`; d_model: the width of each row (the hook's width).
    texts: the source texts; text_index / position / token_ids: `[n_tokens]` int64, for each row
    the text it came from, its position in that text's tokens (BOS = 0) and its token id.
    Rows of a layer: `acts[layer].rows` `[n_tokens, d_model]` float32 (in memory, or memory-mapped
    when `on_disk`); read them in batches with `gather(index)` and `iter_rows(batch_size)`.
    """

    layers: tuple[int, ...]
    hook: str
    model_name: str
    d_model: int
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
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise ValueError(f"layer: expected an int (one of {list(self.layers)}), got {describe(layer)}")
        resolved = int(layer) + self._n_model_layers if layer < 0 and self._n_model_layers else int(layer)
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
        """`[n_tokens, d_model]` float32 (memory-mapped, read-only in effect, when `on_disk`)."""
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
        """Rows `index` in index's order: `[len(index), d_model]` float32 (index: 1-D ints in [0, n_tokens))."""
        store = self._store()
        return store.gather(_check_index(index, store.n_rows))

    def iter_rows(self, batch_size: int = 4096) -> Iterator[torch.Tensor]:
        """All rows in order, `[<= batch_size, d_model]` at a time (bounded memory when on disk)."""
        store = self._store()
        check_int("batch_size", batch_size, minimum=1)
        return (store.chunk(start, min(start + batch_size, store.n_rows))
                for start in range(0, store.n_rows, batch_size))

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
    def _check_row(self, row) -> int:
        n = len(self)
        if isinstance(row, torch.Tensor) and row.numel() == 1 and not row.is_floating_point():
            row = int(row)
        if isinstance(row, (np.integer,)):
            row = int(row)
        if isinstance(row, bool) or not isinstance(row, int) or not -n <= row < n:
            raise ValueError(f"row: expected an int in [0, {n}), got {describe(row)}")
        return row % n

    def _decode(self, ids) -> list[str]:
        if self._tokenizer is None:
            return [f"<{int(i)}>" for i in ids]
        return [self._tokenizer.decode([int(i)]) for i in ids]

    def str_token(self, row: int) -> str:
        """The string of row `row`'s token."""
        return self._decode([self.token_ids[self._check_row(row)]])[0]

    def context(self, row: int, before: int = 8, after: int = 8) -> tuple[list[str], int]:
        """String tokens around row `row`'s token in its text (up to `before` tokens before and `after`
        after, within the tokens the model saw), and the index of the row's token in that list."""
        row = self._check_row(row)
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
        return (f"Activations({name}={layers}, hook={self.hook!r}, n_tokens={len(self)}, d_model={self.d_model}, "
                f"model={self.model_name!r}, texts={len(self.texts)}, {where})")


# ----------------------------------------------------------------------------- shared readers

def _check_activations(activations, name: str = "activations"):
    """A single-layer Activations or a 2-D float tensor, else ValueError naming `name`."""
    if isinstance(activations, Activations):
        if len(activations.layers) != 1:
            raise ValueError(f"{name}: expected a single-layer Activations, got one with layers "
                             f"{list(activations.layers)}; select one with {name}[{activations.layers[0]}]")
        return activations
    if isinstance(activations, torch.Tensor) and activations.ndim == 2 and activations.is_floating_point():
        return activations
    raise ValueError(f"{name}: expected a single-layer Activations or a float tensor [n_tokens, d_model], "
                     f"got {describe(activations)}")


def _check_index(index, n: int, name: str = "index") -> torch.Tensor:
    if isinstance(index, np.ndarray):
        index = torch.from_numpy(index)
    elif isinstance(index, (list, tuple, range)):
        index = torch.as_tensor(list(index), dtype=torch.int64)
    if (not isinstance(index, torch.Tensor) or index.ndim != 1 or index.is_floating_point()
            or index.dtype == torch.bool or index.is_complex()):
        raise ValueError(f"{name}: expected a 1-D integer tensor of row numbers, got {describe(index)}")
    index = index.to(torch.int64)
    if len(index) and (int(index.min()) < 0 or int(index.max()) >= n):
        raise ValueError(f"{name}: row numbers must be in [0, {n}), got min {int(index.min())}, "
                         f"max {int(index.max())}")
    return index


def as_rows(activations) -> torch.Tensor:
    """`[n_tokens, d_model]` rows of a single-layer Activations (memory-mapped when on disk) or the tensor itself."""
    activations = _check_activations(activations)
    return activations.rows if isinstance(activations, Activations) else activations


def gather_rows(activations, index) -> torch.Tensor:
    """Rows `index` (1-D ints) in index's order: `[len(index), d_model]`."""
    activations = _check_activations(activations)
    if isinstance(activations, Activations):
        return activations.gather(index)
    index = _check_index(index, len(activations))
    return activations.index_select(0, index.to(activations.device))


def iter_row_batches(activations, batch_size: int = 4096) -> Iterator[torch.Tensor]:
    """All rows in order, `[<= batch_size, d_model]` at a time."""
    activations = _check_activations(activations)
    check_int("batch_size", batch_size, minimum=1)
    if isinstance(activations, Activations):
        return activations.iter_rows(batch_size)
    return iter(activations.split(batch_size))


def n_rows(activations) -> int:
    """The number of rows (tokens)."""
    return len(_check_activations(activations))


def d_model_of(activations) -> int:
    """The width of each row."""
    activations = _check_activations(activations)
    return activations.d_model if isinstance(activations, Activations) else activations.shape[1]


# ----------------------------------------------------------------------------- collection

def _check_model(model):
    if not all(hasattr(model, a) for a in ("cfg", "hook_dict", "run_with_hooks", "to_tokens")):
        raise ValueError(f"model: expected a TransformerLens HookedTransformer (e.g. saelab.load_model('tiny')), "
                         f"got {describe(model)}")
    if getattr(model, "tokenizer", None) is None:
        raise ValueError("model: it has no tokenizer, so texts cannot be tokenized; load it with one "
                         "(saelab.load_model does)")
    return model


def _check_texts(texts) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise ValueError(f"texts: expected a list of strings, got a single {type(texts).__name__}; "
                         f"wrap it in a list: [text]")
    try:
        texts = list(texts)
    except TypeError:
        raise ValueError(f"texts: expected a list of strings, got {describe(texts)}") from None
    if not texts:
        raise ValueError("texts: expected a non-empty list of strings, got an empty one")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts[{i}]: expected a str, got {describe(text)}")
    return texts


def _check_layers(model, layers) -> tuple[int, ...]:
    n_layers = model.cfg.n_layers
    single = isinstance(layers, (int, np.integer)) and not isinstance(layers, bool)
    if not single and not (isinstance(layers, Sequence) and not isinstance(layers, str)):
        raise ValueError(f"layers: expected an int or a list of ints in [0, {n_layers}) (negative ints count "
                         f"from the last layer), got {describe(layers)}")
    items = [layers] if single else list(layers)
    if not items:
        raise ValueError(f"layers: expected at least one layer in [0, {n_layers}), got an empty list")
    resolved = []
    for layer in items:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not -n_layers <= layer < n_layers:
            raise ValueError(f"layers: {layer!r} is out of range; the model has n_layers={n_layers}, so use "
                             f"0..{n_layers - 1} (or -{n_layers}..-1 counting from the last)")
        layer = int(layer) % n_layers
        if layer not in resolved:
            resolved.append(layer)
    return tuple(resolved)


def _hook_names(model, hook, layers) -> dict[int, str]:
    from transformer_lens.utilities import get_act_name

    available = [h for h in KNOWN_HOOKS if get_act_name(h, 0) in model.hook_dict]
    if not isinstance(hook, str) or not hook:
        raise ValueError(f"hook: expected a hook name such as 'resid_post' (one of {available}), got {describe(hook)}")
    names = {}
    for layer in layers:
        try:
            name = get_act_name(hook, layer)
        except Exception:  # get_act_name raises assorted errors for odd names
            name = None
        if name is None or name not in model.hook_dict or not name.startswith(f"blocks.{layer}."):
            raise ValueError(f"hook: unknown hook {hook!r} for layer {layer}; expected a per-layer hook "
                             f"such as {available}")
        if name.endswith(_NOT_PER_TOKEN):
            raise ValueError(f"hook: {hook!r} ({name}) holds attention between positions, not one row per "
                             f"token; use a per-token hook such as {available}")
        names[layer] = name
    return names


def _tokenize(model, texts: list[str], context_length: int) -> list[torch.Tensor]:
    """Each text's token ids (as `model.to_tokens(text)` gives them, BOS first), cut to `context_length`."""
    tokens = []
    for i, text in enumerate(texts):
        ids = model.to_tokens(text, truncate=False)[0][:context_length].cpu()
        if len(ids) <= int(_prepends_bos(model)):
            raise ValueError(f"texts[{i}]: {describe(text)} tokenizes to no tokens; remove it or give it some text")
        tokens.append(ids)
    return tokens


def _prepends_bos(model) -> bool:
    return bool(getattr(model.cfg, "default_prepend_bos", True))


def _flatten(act: torch.Tensor, name: str) -> torch.Tensor:
    """`[batch, pos, d]` as is, `[batch, pos, heads, d_head]` as `[batch, pos, heads * d_head]`."""
    if act.ndim == 3:
        return act
    if act.ndim == 4:
        return act.flatten(2)
    raise ValueError(f"hook: {name} gives activations of shape {list(act.shape)}, not [batch, pos, width]")


def collect_activations(model, texts, layers, hook: str = "resid_post", batch_size: int = 16,
                        context_length: int | None = None, exclude_bos: bool = True,
                        max_tokens: int | None = None, device=None, progress: bool = True,
                        memory_budget_bytes: int = 2 * 2**30, cache_dir=None) -> Activations:
    """Collect one row per token of `hook` at each of `layers`, with one forward pass per batch.

    model: a HookedTransformer (e.g. `saelab.load_model("tiny")`); it runs on its own device and is
        stopped after the deepest requested layer.
    texts: a list of strings (e.g. `saelab.load_texts("train")` or the seed's prompts). Each text is
        tokenized as `model.to_tokens(text)` does (BOS first) and TRUNCATED to `context_length`
        tokens (default `model.cfg.n_ctx`); the tokens after that are not used.
    layers: an int or a list of ints; negative ints count from the model's last layer (-1 = last).
        `Activations.layers` holds them resolved (non-negative), in the order given, without repeats.
    hook: a short hook name that `transformer_lens.utilities.get_act_name(hook, layer)` maps to a
        per-token hook: "resid_pre", "resid_mid", "resid_post" (default), "attn_out", "mlp_out",
        "mlp_post", "z" (heads flattened) and so on.
    batch_size: texts per forward pass (right-padded; padding never becomes a row). A text that
        occurs several times is run once; its rows are copied to each occurrence.
    exclude_bos: drop the BOS rows (position 0), whose norm dwarfs every other row's.
    max_tokens: keep only the first `max_tokens` rows (in text order); texts past them are not run.
    device: where in-memory rows are kept (None: CPU). Rows on disk are read back to the CPU.
    memory_budget_bytes: when the rows (n_tokens * d_model * 4 bytes per layer, counted after
        tokenizing) would exceed this, they are written to raw float32 files in a fresh directory
        inside `cache_dir` (default: the system temp dir), removed when the Activations is
        garbage-collected; `gather` / `iter_rows` then read them back in batches.
    Returns an `Activations` with rows `[n_tokens, d_model]` per layer, in text order.
    """
    model = _check_model(model)
    texts = _check_texts(texts)
    layer_list = _check_layers(model, layers)
    hook_names = _hook_names(model, hook, layer_list)
    check_int("batch_size", batch_size, minimum=1)
    n_ctx = model.cfg.n_ctx
    context_length = check_int("context_length", context_length, minimum=2, allow_none=True) or n_ctx
    if context_length > n_ctx:
        raise ValueError(f"context_length: expected at most the model's n_ctx ({n_ctx}), got {context_length}")
    check_int("max_tokens", max_tokens, minimum=1, allow_none=True)
    check_int("memory_budget_bytes", memory_budget_bytes, minimum=0)
    if not isinstance(exclude_bos, bool):
        raise ValueError(f"exclude_bos: expected True or False, got {describe(exclude_bos)}")
    store_device = torch.device("cpu") if device is None else resolve_device(device)
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise ValueError(f"cache_dir: expected a directory path or None, got {describe(cache_dir)}")

    # Tokenize everything first: the plan (which positions of which text become which rows) and
    # the memory estimate come from the token counts.
    text_tokens = _tokenize(model, texts, context_length)
    first = 1 if exclude_bos and _prepends_bos(model) else 0
    plan = []  # (text, first position, last position + 1, first row)
    n_total = 0
    for t, ids in enumerate(text_tokens):
        stop = len(ids)
        if max_tokens is not None:
            stop = min(stop, first + max_tokens - n_total)
        if stop <= first:
            break
        plan.append((t, first, stop, n_total))
        n_total += stop - first

    # Probe the hooks' width on one token.
    model_device = next(model.parameters()).device
    stop_at = max(layer_list) + 1
    widths = {}

    def probe(act, hook):
        widths[hook.name] = _flatten(act, hook.name).shape[-1]

    with torch.inference_mode():
        model.run_with_hooks(text_tokens[0][:1].unsqueeze(0).to(model_device), return_type=None,
                             stop_at_layer=stop_at, fwd_hooks=[(n, probe) for n in hook_names.values()])
    width = widths[hook_names[layer_list[0]]]

    # Where the rows go.
    on_disk = n_total * width * ROW_BYTES * len(layer_list) > memory_budget_bytes
    if on_disk:
        directory = TempDir(cache_dir)
        stores = {layer: DiskStore(directory.path / f"{hook}_layer{layer}.f32", n_total, width, directory)
                  for layer in layer_list}
    else:
        stores = {layer: MemoryStore(torch.empty(n_total, width, dtype=torch.float32, device=store_device))
                  for layer in layer_list}

    # Provenance, in text order.
    text_index = torch.empty(n_total, dtype=torch.int64)
    position = torch.empty(n_total, dtype=torch.int64)
    token_ids = torch.empty(n_total, dtype=torch.int64)
    for t, lo, hi, row in plan:
        text_index[row:row + hi - lo] = t
        position[row:row + hi - lo] = torch.arange(lo, hi)
        token_ids[row:row + hi - lo] = text_tokens[t][lo:hi]

    # Identical texts (the seed repeats its five prompts ten times) give identical rows: run each
    # distinct (text, span) once and write its rows wherever it occurs.
    groups: dict = {}
    for t, lo, hi, row in plan:
        groups.setdefault((texts[t], lo, hi), (t, lo, hi, []))[3].append(row)
    runs = list(groups.values())  # (text, first position, last position + 1, [first row of each copy])

    # Batches of similar lengths (longest first), so little compute goes to padding.
    order = sorted(range(len(runs)), key=lambda i: -runs[i][2])
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    layer_of = {name: layer for layer, name in hook_names.items()}
    current: list = []

    def save(act, hook):
        act = _flatten(act, hook.name)
        store = stores[layer_of[hook.name]]
        for j, (t, lo, hi, rows) in enumerate(current):
            span = act[j, lo:hi].to(torch.float32)
            for row in rows:
                store.write(row, span)

    fwd_hooks = [(name, save) for name in hook_names.values()]
    bar = progress_bar(total=n_total, progress=progress, unit="tok",
                       desc=f"{hook} layer{'s' if len(layer_list) > 1 else ''} {', '.join(map(str, layer_list))}")
    try:
        with torch.inference_mode():
            for b in range(0, len(order), batch_size):
                current[:] = [runs[i] for i in order[b:b + batch_size]]
                length = max(hi for _, _, hi, _ in current)
                batch = torch.full((len(current), length), pad_id, dtype=torch.int64)
                mask = torch.zeros((len(current), length), dtype=torch.int64)
                for j, (t, _, hi, _) in enumerate(current):
                    batch[j, :hi] = text_tokens[t][:hi]
                    mask[j, :hi] = 1
                # an explicit mask: right padding whatever the tokenizer's padding_side says
                model.run_with_hooks(batch.to(model_device), attention_mask=mask.to(model_device), return_type=None,
                                     stop_at_layer=stop_at, fwd_hooks=fwd_hooks)
                bar.update(sum((hi - lo) * len(rows) for _, lo, hi, rows in current))
    finally:
        bar.close()

    offsets = torch.zeros(len(text_tokens) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.tensor([len(ids) for ids in text_tokens]), 0)
    return Activations(layers=layer_list, hook=hook, model_name=str(getattr(model.cfg, "model_name", "model")),
                       d_model=int(width), texts=texts, text_index=text_index, position=position,
                       token_ids=token_ids, _stores=stores, _text_tokens=torch.cat(text_tokens),
                       _text_offsets=offsets, _tokenizer=model.tokenizer, _n_model_layers=model.cfg.n_layers)
