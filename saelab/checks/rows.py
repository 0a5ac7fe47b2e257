"""Exercise 2 (Part 2): collecting residual rows without BOS, checked against `collect_activations`.

Recipe steps and the check that notices each one skipped or wrong: one forward pass per text, the
hook resid_post (not resid_pre or resid_mid), the layer asked for, position 0 (BOS) dropped and only
it, the rows of all texts concatenated in text order into one [n_tokens, d_model] tensor.
"""
from __future__ import annotations

import functools

import torch

from saelab.checks.core import as_tensor, call, close, fail, passed

CHECK = "check_activations"
CHECK_TEXTS = ("The quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return a + b")
CAT_HINT = ("when torch.cat says the sizes of tensors must match, each text's rows still have the batch dimension "
            "[1, pos, d_model] and the texts differ in length; take the first (only) batch entry, "
            "cache['resid_post', layer][0, 1:], so each text gives [pos - 1, d_model].")
HOOKS = {"resid_pre": "the block's input", "resid_mid": "after attention, before the MLP"}


@functools.lru_cache(maxsize=64)
def _rows(model, texts: tuple[str, ...], layer: int, hook: str = "resid_post"):
    """saelab's rows of `hook` at `layer`, BOS rows kept: (rows [n, d_model], position [n]). Cached, so
    running a check again (as a student does after each fix) costs only the student's function."""
    from saelab.activations.collect import collect_activations

    acts = collect_activations(model, list(texts), [layer], hook=hook, exclude_bos=False, progress=False)
    return acts[layer].rows.float(), acts[layer].position


def _as_rows(got, width: int) -> torch.Tensor:
    """The student's return value as a float [n, width] tensor; CheckFailed on a wrong form."""
    if isinstance(got, (list, tuple)):
        fail(CHECK, "collect_rows returned a list; concatenate the per-text rows into one tensor [n_tokens, "
                    "d_model] with torch.cat(rows, dim=0).")
    got = as_tensor(CHECK, "collect_rows(...)", got).float()
    if got.dim() == 3:
        fail(CHECK, f"collect_rows returned a 3-D tensor {list(got.shape)}; take each text's rows [pos, d_model] "
                    "(cache['resid_post', layer][0]) and concatenate them over texts.")
    if got.dim() != 2 or got.shape[1] != width:
        fail(CHECK, f"collect_rows should return [n_tokens, d_model = {width}], got {list(got.shape)}.")
    return got


def bos_message(rows: torch.Tensor, is_bos: torch.Tensor) -> str:
    """What is wrong with keeping the BOS rows, with the norm ratio stated only where it is telling."""
    norms = rows.norm(dim=-1)
    bos = rows[is_bos]
    spread = (bos - bos[0]).norm(dim=-1).max().item()
    same = spread <= 1e-3 * max(norms[is_bos].mean().item(), 1e-12)
    ratio = (norms[is_bos].mean() / norms[~is_bos].mean()).item()
    text = (f"the BOS rows are still in (one per text, {int(is_bos.sum())} here). Position 0 of every text is the "
            "BOS token, where the model sees nothing else, so its row is "
            + ("the same vector in every text: copies of one point that say nothing about the text. "
               if same else "about the text's start, not its content. "))
    if ratio >= 3:
        text += f"Its norm is also {ratio:.0f}x the other rows' mean, so these rows would dominate the SAE's MSE. "
    else:
        text += "On GPT-2 its norm is also many times the other rows', so these rows would dominate the SAE's MSE. "
    return text + "Drop position 0 of each text: cache['resid_post', layer][0, 1:]."


def _wrong_values(model, layer, got, with_bos, position) -> None:
    """CheckFailed naming the mistake when `got` has the right shape but not the right values."""
    last = torch.cat([position[1:] == 0, torch.tensor([True])])  # each text's last row
    if close(got, with_bos[~last], atol=1e-3, rtol=1e-3):
        fail(CHECK, "these rows drop each text's LAST position and keep its BOS (position 0): take [0, 1:], "
                    "not [0, :-1].")
    for hook, where in HOOKS.items():
        rows, _ = _rows(model, CHECK_TEXTS, layer, hook)
        if close(got, rows[position != 0], atol=1e-3, rtol=1e-3):
            if hook == "resid_pre" and layer:
                fail(CHECK, f"these rows are block {layer}'s input: the hook resid_pre at layer {layer}, the same "
                            f"values as resid_post at layer {layer - 1}, one block too early (cache['resid_pre', "
                            "layer] and cache['resid_post', layer - 1] both give them). Take the block's output at "
                            "the layer asked for: cache['resid_post', layer].")
            fail(CHECK, f"these are the rows of the hook {hook} at layer {layer}, {where}; the lab uses "
                        f"resid_post, the block's output: cache['resid_post', layer] (blocks.{layer}.hook_resid_post).")
    for other in range(model.cfg.n_layers):
        rows, _ = _rows(model, CHECK_TEXTS, other)
        if other != layer and close(got, rows[position != 0], atol=1e-3, rtol=1e-3):
            fail(CHECK, f"these are the rows of layer {other}, not layer {layer}: use the `layer` argument, "
                        "cache['resid_post', layer].")
    fail(CHECK, f"the rows have the right shape but not the values of resid_post at layer {layer}. Use "
                "model.run_with_cache(model.to_tokens(text)) and cache['resid_post', layer][0, 1:] for each text, "
                "in order, and torch.cat the rows.")


def check_activations(collect_rows, model, layer: int = 1) -> None:
    """Exercise 2: check `collect_rows(model, texts, layer) -> [n_tokens, d_model]` against
    `saelab.collect_activations` on two short texts.

    Its rows must be the `resid_post` activations of `layer` for every token of each text, in order,
    without the BOS rows (position 0).
    """
    if not (callable(getattr(model, "run_with_cache", None)) and hasattr(model, "cfg")):
        fail(CHECK, "pass the notebook's model as the second argument: check_activations(collect_rows, model); got "
                    f"{type(model).__name__}.")
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        fail(CHECK, f"layer: expected a non-negative int, got {layer!r}.")
    layer = min(layer, model.cfg.n_layers - 1)
    texts = list(CHECK_TEXTS)
    with_bos, position = _rows(model, CHECK_TEXTS, layer)
    ref = with_bos[position != 0]
    got = _as_rows(call(CHECK, f"collect_rows(model, texts, layer={layer})", collect_rows, model, texts, layer,
                        hint=CAT_HINT), with_bos.shape[1])
    if len(got) == len(with_bos):
        fail(CHECK, bos_message(with_bos, position == 0))
    if len(got) > len(ref):
        fail(CHECK, f"collect_rows returned {len(got)} rows for {len(ref)} real tokens (BOS excluded). Padding rows "
                    "from batching texts together must not become rows; run one text at a time.")
    if len(got) < len(ref):
        fail(CHECK, f"collect_rows returned {len(got)} rows, expected {len(ref)}: every token of each text except "
                    "its BOS. Drop only position 0 of each text ([0, 1:]), which model.to_tokens fills with BOS.")
    if not close(got, ref, atol=1e-3, rtol=1e-3):
        _wrong_values(model, layer, got, with_bos, position)
    passed(CHECK, f"{len(got)} rows of resid_post at layer {layer}, BOS rows excluded, match "
                  "saelab.collect_activations.")
