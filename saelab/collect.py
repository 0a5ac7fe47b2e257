"""collect_activations: one batched forward pass per batch -> per-token rows with provenance.

The seed notebook runs `run_with_cache` once per prompt, keeps every hook of every layer, and takes
one layer. Here each batch of texts goes through the model once, with hooks only on the requested
layers and the forward pass stopped after the deepest one. Right padding is masked out (rows exist
only for real tokens) and BOS rows are dropped by default: their norm dwarfs every other row's and
dominates the SAE's MSE. Identical texts (the seed repeats its five prompts ten times) run once.

The steps: tokenize (`_tokenize`), plan which positions become which rows (`_plan`), probe the
hook's width (`_probe_width`), allocate the stores in memory or on disk (`_stores`), write the
provenance (`_provenance`), then run the distinct spans in length-sorted batches (`_run`).
"""
from __future__ import annotations

import os
import warnings

import torch

from saelab.activations import Activations
from saelab.models import resolve_device
from saelab.rowstore import ROW_BYTES, DiskStore, MemoryStore, TempDir
from saelab.utils import describe, progress_bar
from saelab.validate import check_bool, check_hook, check_int, check_layers, check_model, check_texts

__all__ = ["collect_activations", "TruncationWarning"]


class TruncationWarning(UserWarning):
    """Texts longer than the model's context were cut (filter it where long texts are expected:
    `warnings.filterwarnings("ignore", category=saelab.collect.TruncationWarning)`)."""


def _prepends_bos(model) -> bool:
    return bool(getattr(model.cfg, "default_prepend_bos", True))


def _tokenize(model, texts: list[str], context_length: int, warn: bool) -> list[torch.Tensor]:
    """Each text's token ids (as `model.to_tokens(text)` gives them, BOS first), cut to `context_length`;
    with `warn`, warns once, naming how many texts were cut."""
    tokens, cut = [], 0
    for i, text in enumerate(texts):
        ids = model.to_tokens(text, truncate=False)[0].cpu()
        if len(ids) <= int(_prepends_bos(model)):
            raise ValueError(f"texts[{i}]: {describe(text)} tokenizes to no tokens; remove it or give it some text")
        cut += len(ids) > context_length
        tokens.append(ids[:context_length])
    if cut and warn:
        warnings.warn(f"collect_activations: {cut} of {len(texts)} texts are longer than the model's context "
                      f"({context_length} tokens) and were truncated to it (their later tokens give no rows)",
                      TruncationWarning, stacklevel=3)
    return tokens


def _plan(text_tokens: list[torch.Tensor], first: int, max_tokens: int | None) -> list[tuple]:
    """(text, first position, last position + 1, first row) per text that gives rows, in text order."""
    plan, n_total = [], 0
    for t, ids in enumerate(text_tokens):
        stop = len(ids) if max_tokens is None else min(len(ids), first + max_tokens - n_total)
        if stop <= first:
            break
        plan.append((t, first, stop, n_total))
        n_total += stop - first
    return plan


def _flatten(act: torch.Tensor, name: str) -> torch.Tensor:
    """`[batch, pos, d]` as is, `[batch, pos, heads, d_head]` as `[batch, pos, heads * d_head]`."""
    if act.ndim == 3:
        return act
    if act.ndim == 4:
        return act.flatten(2)
    raise ValueError(f"hook: {name} gives activations of shape {list(act.shape)}, not [batch, pos, width]")


def _probe_width(model, tokens: torch.Tensor, hook_name: str, stop_at: int) -> int:
    """The hook's row width, from a forward pass over one token."""
    widths = {}

    def probe(act, hook):
        widths[hook.name] = _flatten(act, hook.name).shape[-1]

    with torch.inference_mode():
        model.run_with_hooks(tokens[:1].unsqueeze(0).to(next(model.parameters()).device), return_type=None,
                             stop_at_layer=stop_at, fwd_hooks=[(hook_name, probe)])
    return int(widths[hook_name])


def _stores(layers, hook: str, n_total: int, width: int, memory_budget_bytes: int, cache_dir, device) -> dict:
    """One row store per layer: in memory, or raw float32 files in a fresh folder when over budget."""
    if n_total * width * ROW_BYTES * len(layers) > memory_budget_bytes:
        directory = TempDir(cache_dir)
        return {layer: DiskStore(directory.path / f"{hook}_layer{layer}.f32", n_total, width, directory)
                for layer in layers}
    return {layer: MemoryStore(torch.empty(n_total, width, dtype=torch.float32, device=device)) for layer in layers}


def _provenance(plan, text_tokens, n_total: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(text_index, position, token_ids), each [n_total] int64, in row order."""
    text_index, position, token_ids = (torch.empty(n_total, dtype=torch.int64) for _ in range(3))
    for t, lo, hi, row in plan:
        text_index[row:row + hi - lo] = t
        position[row:row + hi - lo] = torch.arange(lo, hi)
        token_ids[row:row + hi - lo] = text_tokens[t][lo:hi]
    return text_index, position, token_ids


def _distinct_runs(plan, texts) -> list[tuple]:
    """(text, first position, last position + 1, [first row of each copy]) per distinct (text, span),
    longest first, so that a batch pads little."""
    groups: dict = {}
    for t, lo, hi, row in plan:
        groups.setdefault((texts[t], lo, hi), (t, lo, hi, []))[3].append(row)
    return sorted(groups.values(), key=lambda run: -run[2])


def _run(model, runs, text_tokens, hook_names: dict, stores: dict, batch_size: int, stop_at: int, bar) -> None:
    """Run the spans `runs` through the model, `batch_size` at a time, writing each hook's rows."""
    device = next(model.parameters()).device
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    layer_of = {name: layer for layer, name in hook_names.items()}
    current: list = []

    def save(act, hook):
        act, store = _flatten(act, hook.name), stores[layer_of[hook.name]]
        for j, (t, lo, hi, rows) in enumerate(current):
            span = act[j, lo:hi].to(torch.float32)
            for row in rows:
                store.write(row, span)

    fwd_hooks = [(name, save) for name in hook_names.values()]
    with torch.inference_mode():
        for b in range(0, len(runs), batch_size):
            current[:] = runs[b:b + batch_size]
            length = max(hi for _, _, hi, _ in current)
            batch = torch.full((len(current), length), pad_id, dtype=torch.int64)
            mask = torch.zeros((len(current), length), dtype=torch.int64)
            for j, (t, _, hi, _) in enumerate(current):
                batch[j, :hi] = text_tokens[t][:hi]
                mask[j, :hi] = 1
            # an explicit mask: right padding whatever the tokenizer's padding_side says
            model.run_with_hooks(batch.to(device), attention_mask=mask.to(device), return_type=None,
                                 stop_at_layer=stop_at, fwd_hooks=fwd_hooks)
            bar.update(sum((hi - lo) * len(rows) for _, lo, hi, rows in current))


def _check_context_length(model, context_length) -> int:
    n_ctx = model.cfg.n_ctx
    context_length = check_int("context_length", context_length, minimum=2, allow_none=True) or n_ctx
    if context_length > n_ctx:
        raise ValueError(f"context_length: expected at most the model's n_ctx ({n_ctx}), got {context_length}")
    return context_length


def collect_activations(model, texts, layers, hook: str = "resid_post", batch_size: int = 16,
                        context_length: int | None = None, exclude_bos: bool = True,
                        max_tokens: int | None = None, device=None, progress: bool = True,
                        memory_budget_bytes: int = 2 * 2**30, cache_dir=None) -> Activations:
    """Collect one row per token of `hook` at each of `layers`, with one forward pass per batch.

    model: a HookedTransformer (e.g. `saelab.load_model("tiny")`); it runs on its own device and is
        stopped after the deepest requested layer.
    texts: a list of strings (e.g. `saelab.load_texts("train")` or the seed's prompts). Each text is
        tokenized as `model.to_tokens(text)` does (BOS first) and TRUNCATED to `context_length`
        tokens (default `model.cfg.n_ctx`, and then a warning says how many texts were cut).
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
    given_context, context_length = context_length, _check_context_length(model, context_length)
    check_int("max_tokens", max_tokens, minimum=1, allow_none=True)
    check_int("memory_budget_bytes", memory_budget_bytes, minimum=0)
    check_bool("exclude_bos", exclude_bos)
    store_device = torch.device("cpu") if device is None else resolve_device(device)
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise ValueError(f"cache_dir: expected a directory path or None, got {describe(cache_dir)}")

    text_tokens = _tokenize(model, texts, context_length, warn=given_context is None)
    plan = _plan(text_tokens, 1 if exclude_bos and _prepends_bos(model) else 0, max_tokens)
    n_total = sum(hi - lo for _, lo, hi, _ in plan)
    stop_at = max(layer_list) + 1
    width = _probe_width(model, text_tokens[0], hook_names[layer_list[0]], stop_at)
    stores = _stores(layer_list, hook, n_total, width, memory_budget_bytes, cache_dir, store_device)
    text_index, position, token_ids = _provenance(plan, text_tokens, n_total)
    bar = progress_bar(total=n_total, progress=progress, unit="tok",
                       desc=f"{hook} layer{'s' if len(layer_list) > 1 else ''} {', '.join(map(str, layer_list))}")
    try:
        _run(model, _distinct_runs(plan, texts), text_tokens, hook_names, stores, batch_size, stop_at, bar)
    finally:
        bar.close()
    offsets = torch.zeros(len(text_tokens) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.tensor([len(ids) for ids in text_tokens]), 0)
    return Activations(layers=layer_list, hook=hook, model_name=str(getattr(model.cfg, "model_name", "model")),
                       width=width, texts=texts, text_index=text_index, position=position,
                       token_ids=token_ids, _stores=stores, _text_tokens=torch.cat(text_tokens),
                       _text_offsets=offsets, _tokenizer=model.tokenizer, _n_model_layers=model.cfg.n_layers)
