"""Exercise 7 (Part 7): the steering context manager, checked against `saelab.steer`'s hook.

Recipe steps and the check that notices each one skipped or wrong: the decoder direction in raw units
(`sae.W_dec[feature]`: input_scale applied; not the encoder row, not the unscaled weight), alpha times
that direction (not alpha times the feature's activation), every position but BOS (not position 0,
not only the last), at the SAE's hook, and the hook removed on exit, after an error too.
"""
from __future__ import annotations

import torch

from saelab.checks.core import call, close, fail, passed

CHECK = "check_steering"
FEATURE, ALPHA, SCALE = 3, 2.5, 4.0
TEXT = "def add(a, b):\n    return a + b"


class _Probe(Exception):
    """Raised inside the student's `with` block to see whether the hook outlives an error."""


def _sae(model):
    """A TiedSAE on the model's layer-1 resid_post with input_scale 4 and non-zero biases."""
    from saelab.sae.tied import TiedSAE

    layer = min(1, model.cfg.n_layers - 1)
    sae = TiedSAE(model.cfg.d_model, 2 * model.cfg.d_model, seed=11).to(model.W_U.device)
    sae.input_scale = SCALE
    sae.metadata.update(hook_name=f"blocks.{layer}.hook_resid_post", layer=layer)
    g = torch.Generator().manual_seed(12)
    with torch.no_grad():
        sae.encoder.bias.copy_(0.3 * torch.randn(sae.d_sae, generator=g))
        sae.decoder_bias.copy_(0.2 * torch.randn(sae.d_in, generator=g))
    return sae


@torch.no_grad()
def _delta(model, sae, tokens, steer_cm=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(activation at the SAE's hook [pos, d_in], the same with the student's steering on, minus it)."""
    point, seen = model.hook_dict[sae.hook_name], []

    def capture(module, inputs, output):
        seen.append(output[0].detach().float().cpu())

    handle = point.register_forward_hook(capture)
    try:
        model(tokens)
    finally:
        handle.remove()
    if steer_cm is None:
        return seen[0], None
    with steer_cm:
        handle = point.register_forward_hook(capture)  # after the student's hook: sees the steered value
        try:
            model(tokens)
        finally:
            handle.remove()
    return seen[0], seen[1] - seen[0]


def _name_the_mistake(sae, clean, delta, want) -> None:
    d = sae.W_dec[FEATURE].detach().float().cpu()
    if close(delta[1:], want[1:], atol=1e-4) and not close(delta[0], want[0], atol=1e-4):
        fail(CHECK, "position 0 (the BOS token) is steered too. The SAE never saw BOS rows, and BOS carries no "
                    "text; add the direction at positions 1: only (activation[:, 1:]).")
    if close(delta[-1], want[-1], atol=1e-4) and close(delta[:-1], torch.zeros_like(delta[:-1]), atol=1e-5):
        fail(CHECK, "only the last position is steered. Steering adds the direction at every position but BOS, "
                    "so every later token sees it (activation[:, 1:], not activation[:, -1]).")
    f = sae.encode(clean.to(sae.W_dec))[:, FEATURE].detach().float().cpu()
    for vector, message in (
            (d / SCALE, "the direction is the unscaled weight row (sae.encoder.weight[feature]): it forgets "
                        "sae.input_scale. Use sae.W_dec[feature], the decoder direction in raw activation units."),
            (d / SCALE ** 2, "the direction is the encoder's row for raw inputs (W / input_scale): the wrong "
                             "scale. Steering writes to the activation, so use the decoder direction "
                             "sae.W_dec[feature]."),
    ):
        if close(delta[1:], ALPHA * vector.expand(len(delta) - 1, -1), atol=1e-4):
            fail(CHECK, message)
    if close(delta[1:], ALPHA * f[1:, None].expand(-1, delta.shape[1]), atol=1e-4):
        fail(CHECK, "the hook adds alpha * f_i (the feature's activation, a number per token) to every dimension. "
                    "Steering adds alpha * d_i, the feature's decoder direction: alpha * sae.W_dec[feature].")
    if close(delta[1:], ALPHA * f[1:, None] * d, atol=1e-4):
        fail(CHECK, "the hook adds alpha * f_i * d_i, which is zero wherever the feature is off. Steering adds the "
                    "same vector alpha * sae.W_dec[feature] at every position but BOS.")
    fail(CHECK, f"the activation changes by something other than alpha * sae.W_dec[feature] at positions 1:. "
                f"Expected a change of norm {want[1].norm():.4g} per position, got {delta[1:].norm(dim=-1).mean():.4g}.")


def _check_removed(model, sae, my_steer, tokens, clean) -> None:
    """The hook is gone after the block ends normally and after an error inside it."""
    try:
        with my_steer(model, sae, FEATURE, ALPHA):
            raise _Probe
    except _Probe:
        pass
    still = [h for h in model.hook_dict[sae.hook_name].fwd_hooks]
    after, _ = _delta(model, sae, tokens)
    if still or not close(after, clean, atol=1e-5):
        model.reset_hooks()
        fail(CHECK, "after an error inside the `with` block the steering hook stayed registered, so every later "
                    "forward pass is still steered. Remove the hook in a finally: block around the yield (or use "
                    "`with model.hooks(fwd_hooks=[...]): yield`).")


def check_steering(my_steer, model) -> None:
    """Exercise 7: check `my_steer(model, sae, feature, alpha)` (a context manager) against saelab.steer's
    hook: on a fixed text, the activation at the SAE's hook must change by alpha * sae.W_dec[feature] at
    every position but BOS, with the SAE's input_scale 4, and the hook must be gone afterwards."""
    if not (callable(getattr(model, "run_with_cache", None)) and hasattr(model, "hook_dict")):
        fail(CHECK, f"pass the notebook's model as the second argument: check_steering(my_steer, model); got "
                    f"{type(model).__name__}.")
    sae = _sae(model)
    tokens = model.to_tokens(TEXT)
    manager = call(CHECK, "my_steer(model, sae, feature, alpha)", my_steer, model, sae, FEATURE, ALPHA)
    if not (hasattr(manager, "__enter__") and hasattr(manager, "__exit__")):
        fail(CHECK, "my_steer should be a context manager (decorate it with @contextlib.contextmanager and `yield` "
                    f"once), got {type(manager).__name__}.")
    clean, delta = call(CHECK, "running the model inside `with my_steer(...)`", _delta, model, sae, tokens, manager)
    want = torch.zeros_like(delta)
    want[1:] = ALPHA * sae.W_dec[FEATURE].detach().float().cpu()
    if not close(delta, want, atol=1e-4):
        model.reset_hooks()
        _name_the_mistake(sae, clean, delta, want)
    _check_removed(model, sae, my_steer, tokens, clean)
    passed(CHECK, "the activation changes by alpha * sae.W_dec[feature] at every position but BOS (input_scale "
                  "included), and the hook is gone afterwards, after an error too.")
