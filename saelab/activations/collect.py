"""collect_activations: one batched forward pass per batch -> per-token rows with provenance.

The seed notebook runs `run_with_cache` once per prompt, keeps every hook of every layer, and takes
one layer. Here each batch of windows goes through the model once, with hooks only on the requested
layers and the forward pass stopped after the deepest one. Right padding is masked out (rows exist
only for real tokens) and BOS rows are dropped by default: their norm dwarfs every other row's and
dominates the SAE's MSE. Identical texts (the seed repeats its five prompts ten times) run once.

The steps: tokenize each text whole and split it into context-sized windows (`activations.windows`),
plan which window positions become which rows (`_plan`), probe the hook's width (`probe_width`),
allocate the stores in memory or on disk (`_stores`), write the provenance (`_provenance`), then run
the distinct windows in length-sorted batches (`_run`). With `$SAELAB_PRECISION=float64` the model
runs in float64 (`saelab.precision`) and its rows are rounded once to the float32 store.
"""
from __future__ import annotations

import torch

from saelab.activations.rows import Activations
from saelab.models import resolve_device
from saelab.precision import in_working_dtype
from saelab.activations.stores import ROW_BYTES, DiskStore, MemoryStore, TempDir
from saelab.utils import progress_bar
from saelab.activations.windows import Window, prepends_bos, split_windows, tokenize
from saelab.validate import (check_bool, check_context_length, check_hook, check_int, check_layers, check_model,
                             check_path, check_texts)

__all__ = ["collect_activations", "TruncationWarning"]


class TruncationWarning(UserWarning):
    """Kept so that warning filters written for saelab <= 0.1 still work: collection no longer
    truncates texts (long texts are split into context-sized windows), so nothing raises it."""


def _plan(windows: list[Window], bos: bool, exclude_bos: bool, max_tokens: int | None) -> list[tuple]:
    """(window, first input position, last + 1, first row) per window that gives rows, in text order.
    The text's own BOS row (first window, position 0) is kept unless exclude_bos; a later window's
    added BOS never gives a row."""
    plan, n_total = [], 0
    for window in windows:
        lo = int((bos and exclude_bos) or window.added_bos(bos))
        hi = window.stop - window.start + int(bos)
        if max_tokens is not None:
            hi = min(hi, lo + max_tokens - n_total)
        if hi <= lo:
            break
        plan.append((window, lo, hi, n_total))
        n_total += hi - lo
    return plan


def _flatten(act: torch.Tensor, name: str) -> torch.Tensor:
    """`[batch, pos, d]` as is, `[batch, pos, heads, d_head]` as `[batch, pos, heads * d_head]`."""
    if act.ndim == 3:
        return act
    if act.ndim == 4:
        return act.flatten(2)
    raise ValueError(f"hook: {name} gives activations of shape {list(act.shape)}, not [batch, pos, width]")


def probe_width(model, hook_name: str, layer: int) -> int:
    """The width of `hook_name`'s rows (4-D hooks such as "z" flattened), from a forward pass over one
    token stopped after `layer` (a checked model and hook of that layer)."""
    widths = {}

    def probe(act, hook):
        widths[hook.name] = _flatten(act, hook.name).shape[-1]

    token = model.tokenizer.bos_token_id if model.tokenizer.bos_token_id is not None else 0
    with torch.inference_mode():
        model.run_with_hooks(torch.tensor([[token]], device=next(model.parameters()).device), return_type=None,
                             stop_at_layer=layer + 1, fwd_hooks=[(hook_name, probe)])
    return int(widths[hook_name])


def _stores(layers, hook: str, n_total: int, width: int, memory_budget_bytes: int, cache_dir, device) -> dict:
    """One row store per layer: in memory, or raw float32 files in a fresh folder when over budget."""
    if n_total * width * ROW_BYTES * len(layers) > memory_budget_bytes:
        directory = TempDir(cache_dir)
        return {layer: DiskStore(directory.path / f"{hook}_layer{layer}.f32", n_total, width, directory)
                for layer in layers}
    return {layer: MemoryStore(torch.empty(n_total, width, dtype=torch.float32, device=device)) for layer in layers}


def _provenance(plan, text_tokens, bos: bool, n_total: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(text_index, position in the text's tokens, token_ids), each [n_total] int64, in row order."""
    text_index, position, token_ids = (torch.empty(n_total, dtype=torch.int64) for _ in range(3))
    for window, lo, hi, row in plan:
        text_index[row:row + hi - lo] = window.text
        position[row:row + hi - lo] = window.text_positions(bos)[lo:hi]
        token_ids[row:row + hi - lo] = window.tokens(text_tokens[window.text], bos)[lo:hi]
    return text_index, position, token_ids


def _distinct_runs(plan, texts) -> list[tuple]:
    """(window, first input position, last + 1, [first row of each copy]) per distinct (text, window, span),
    longest first, so that a batch pads little."""
    groups: dict = {}
    for window, lo, hi, row in plan:
        key = (texts[window.text], window.start, window.stop, lo, hi)
        groups.setdefault(key, (window, lo, hi, []))[3].append(row)
    return sorted(groups.values(), key=lambda run: -(run[0].stop - run[0].start))


def _run(model, runs, text_tokens, bos: bool, hook_names: dict, stores: dict, batch_size: int, stop_at: int,
         bar) -> None:
    """Run the windows of `runs` through the model, `batch_size` at a time, writing each hook's rows."""
    device = next(model.parameters()).device
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    layer_of = {name: layer for layer, name in hook_names.items()}
    current: list = []

    def save(act, hook):
        act, store = _flatten(act, hook.name), stores[layer_of[hook.name]]
        for j, (_, lo, hi, rows) in enumerate(current):
            span = act[j, lo:hi].to(torch.float32)
            for row in rows:
                store.write(row, span)

    fwd_hooks = [(name, save) for name in hook_names.values()]
    with torch.inference_mode():
        for b in range(0, len(runs), batch_size):
            current[:] = runs[b:b + batch_size]
            inputs = [window.tokens(text_tokens[window.text], bos) for window, _, _, _ in current]
            batch = torch.full((len(inputs), max(map(len, inputs))), pad_id, dtype=torch.int64)
            mask = torch.zeros_like(batch)
            for j, ids in enumerate(inputs):
                batch[j, :len(ids)] = ids
                mask[j, :len(ids)] = 1
            # an explicit mask: right padding whatever the tokenizer's padding_side says
            model.run_with_hooks(batch.to(device), attention_mask=mask.to(device), return_type=None,
                                 stop_at_layer=stop_at, fwd_hooks=fwd_hooks)
            bar.update(sum((hi - lo) * len(rows) for _, lo, hi, rows in current))


def collect_activations(model, texts, layers, hook: str = "resid_post", batch_size: int = 16,
                        context_length: int | None = None, exclude_bos: bool = True,
                        max_tokens: int | None = None, device=None, progress: bool = True,
                        memory_budget_bytes: int = 2 * 2**30, cache_dir=None) -> Activations:
    """Collect one row per token of `hook` at each of `layers`, with one forward pass per batch.

    model: a HookedTransformer (e.g. `saelab.load_model("tiny")`); it runs on its own device and is
        stopped after the deepest requested layer.
    texts: a list of strings (e.g. `saelab.load_texts("train")` or the seed's prompts). Each text is
        tokenized as `model.to_tokens(text)` does (BOS first), whole: a text longer than
        `context_length` tokens (default `model.cfg.n_ctx`) is split into windows of that many tokens,
        each starting with BOS (`activations.windows`), so every token gives a row; `position` is
        always the position in the text's own tokens.
    layers: an int or a list of ints; negative ints count from the model's last layer (-1 = last).
        `Activations.layers` holds them resolved (non-negative), in the order given, without repeats.
    hook: a short hook name that `transformer_lens.utilities.get_act_name(hook, layer)` maps to a
        per-token hook: "resid_pre", "resid_mid", "resid_post" (default), "attn_out", "mlp_out",
        "mlp_post", "z" (heads flattened) and so on.
    batch_size: windows per forward pass (right-padded; padding never becomes a row). A text that
        occurs several times is run once; its rows are copied to each occurrence.
    exclude_bos: drop the BOS rows (position 0), whose norm dwarfs every other row's. The BOS that
        starts a later window never gives a row (it is not a token of the text).
    max_tokens: keep only the first `max_tokens` rows (in text order); texts past them are not run.
    device: where in-memory rows are kept (None: CPU). Rows on disk are read back to the CPU.
    memory_budget_bytes: when the rows (n_tokens * width * 4 bytes per layer, counted after
        tokenizing) would exceed this, they are written to raw float32 files in a fresh directory
        inside `cache_dir` (default: the system temp dir), removed when the Activations is
        garbage-collected; `gather` / `iter_rows` then read them back in batches.
    Returns an `Activations` with rows `[n_tokens, width]` per layer, in text order.
    """
    model = check_model("model", model)
    texts = check_texts("texts", texts)
    layer_list = check_layers("layers", layers, model.cfg.n_layers)
    hook_names = check_hook("hook", hook, model, layer_list)
    check_int("batch_size", batch_size, minimum=1)
    context_length = check_context_length("context_length", context_length, model.cfg.n_ctx)
    check_int("max_tokens", max_tokens, minimum=1, allow_none=True)
    check_int("memory_budget_bytes", memory_budget_bytes, minimum=0)
    check_bool("exclude_bos", exclude_bos)
    store_device = torch.device("cpu") if device is None else resolve_device(device)
    check_path("cache_dir", cache_dir, allow_none=True)

    bos = prepends_bos(model)
    text_tokens = tokenize(model, texts)
    plan = _plan(split_windows(text_tokens, context_length, bos), bos, exclude_bos, max_tokens)
    n_total = sum(hi - lo for _, lo, hi, _ in plan)
    stop_at = max(layer_list) + 1
    width = probe_width(model, hook_names[layer_list[0]], layer_list[0])
    stores = _stores(layer_list, hook, n_total, width, memory_budget_bytes, cache_dir, store_device)
    text_index, position, token_ids = _provenance(plan, text_tokens, bos, n_total)
    bar = progress_bar(total=n_total, progress=progress, unit="tok",
                       desc=f"{hook} layer{'s' if len(layer_list) > 1 else ''} {', '.join(map(str, layer_list))}")
    try:
        with in_working_dtype(model):
            _run(model, _distinct_runs(plan, texts), text_tokens, bos, hook_names, stores, batch_size, stop_at, bar)
    finally:
        bar.close()
    offsets = torch.cumsum(torch.tensor([0] + [len(ids) for ids in text_tokens]), 0)   # [n_texts + 1]
    return Activations(layers=layer_list, hook=hook, model_name=str(getattr(model.cfg, "model_name", "model")),
                       width=width, texts=texts, text_index=text_index, position=position,
                       token_ids=token_ids, _stores=stores, _text_tokens=torch.cat(text_tokens),
                       _text_offsets=offsets, _tokenizer=model.tokenizer, _n_model_layers=model.cfg.n_layers)
