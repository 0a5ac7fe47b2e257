"""Exercise 1 (Part 1): the tied SAE class, checked against `saelab.TiedSAE`.

Recipe steps and the check that notices each one skipped or wrong: the encoder's linear map with its
bias, the ReLU (encode); the transposed tied weight, the decoder bias (decode); any leading batch
dimensions; the MSE as a mean, the L1 term as a mean, n_active per row, the coefficient, a tensor loss
with a gradient (compute_loss).
"""
from __future__ import annotations

import math

import torch

from saelab.checks.core import as_tensor, call, close, fail, passed

D, N = 16, 48          # d_model and n_features of the check's SAE
CHECK = "check_sae"


def _reference():
    """A TiedSAE with non-zero biases (so forgetting one shows) and fixed inputs x [12, D]."""
    from saelab.sae.tied import TiedSAE

    ref = TiedSAE(D, N, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        ref.encoder.bias.copy_(0.2 * torch.randn(N, generator=g))
        ref.decoder_bias.copy_(0.5 * torch.randn(D, generator=g))
    return ref, torch.randn(12, D, generator=g)


def _student_sae(student, ref):
    """A fresh instance of the student's SAE class, holding the reference's weights."""
    cls = type(student) if isinstance(student, torch.nn.Module) else student
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        fail(CHECK, f"pass your SAE class (e.g. check_sae(MySAE)) or an instance of it, got {type(student).__name__}.")
    sae = call(CHECK, f"{cls.__name__}({D}, {N})", cls, D, N)
    name = type(sae).__name__
    for attr in ("encode", "decode", "compute_loss"):
        if not callable(getattr(sae, attr, None)):
            fail(CHECK, f"{name} has no method {attr}(); the tied SAE needs encode, decode and compute_loss.")
    keys, expected = set(sae.state_dict()), {"encoder.weight", "encoder.bias", "decoder_bias"}
    if keys - expected:
        fail(CHECK, f"{name} has parameter(s) {sorted(keys - expected)} that a tied SAE does not have. A tied SAE "
                    "decodes with the encoder's own weight (transposed) plus `decoder_bias`; an extra decoder "
                    "weight unties it.")
    if keys != expected:
        fail(CHECK, f"{name} should hold `encoder` (nn.Linear(d_model, n_features)) and `decoder_bias` (d_model "
                    f"zeros), as in the skeleton; it has {sorted(keys)}.")
    if tuple(sae.encoder.weight.shape) != (N, D):
        fail(CHECK, f"{name}({D}, {N}).encoder.weight should have shape [{N}, {D}] ([n_features, d_model]), got "
                    f"{list(sae.encoder.weight.shape)}.")
    sae.load_state_dict(ref.state_dict())
    return sae


def _check_encode(sae, ref, x, W) -> None:
    got = as_tensor(CHECK, "encode(x)", call(CHECK, "encode(x)", sae.encode, x), (len(x), N))
    if close(got, ref.encode(x)):
        return
    if (got < 0).any():
        fail(CHECK, "encode(x) has negative values. Features are relu(x @ W.T + b_enc): apply F.relu after the "
                    "linear map.")
    if close(got, torch.relu(x @ W.T)):
        fail(CHECK, "encode(x) matches relu(x @ W.T) without the encoder bias. Add b_enc: self.encoder(x) applies "
                    "both the weight and the bias.")
    fail(CHECK, "encode(x) differs from relu(x @ W.T + b_enc), with W = self.encoder.weight [n_features, "
                "d_model]. Hint: F.relu(self.encoder(x)).")


def _check_decode(sae, ref, x, W) -> None:
    f = ref.encode(x)  # the reference features, so decode is checked on its own
    got = as_tensor(CHECK, "decode(f)", call(
        CHECK, "decode(f)", sae.decode, f,
        hint="a shape mismatch usually means the weight is not transposed: the decoder maps n_features -> "
             "d_model with W [n_features, d_model], i.e. f @ W + b_dec = F.linear(f, W.T, b_dec)."), (len(x), D))
    if close(got, ref.decode(f)):
        return
    if close(got, f @ W):
        fail(CHECK, "decode(f) matches f @ W without the decoder bias. Add self.decoder_bias: reconstruction = "
                    "f @ W + b_dec.")
    fail(CHECK, "decode(f) differs from f @ W + b_dec. The decoder is tied: it must use the encoder's weight "
                "W = self.encoder.weight (transposed, not a new or separate weight) and self.decoder_bias.")


def _check_leading_dims(sae, ref, x) -> None:
    """encode and decode on [2, 6, ...] batches: operations on the last dimension only."""
    x3 = x.reshape(2, 6, D)
    for what, fn, arg, want in (("encode", sae.encode, x3, ref.encode(x3)),
                                ("decode", sae.decode, ref.encode(x3), ref.decode(ref.encode(x3)))):
        shape = f"[2, 6, {'d_model' if what == 'encode' else 'n_features'}]"
        got = call(CHECK, f"{what} on a {shape} batch", fn, arg,
                   hint="use operations that act on the last dimension (self.encoder(x), F.linear, @), not "
                        "torch.mm, so any leading dimensions work.")
        if not isinstance(got, torch.Tensor) or not close(got.detach(), want):
            fail(CHECK, f"{what} gives the wrong result on a {shape} batch; act on the last dimension only "
                        "(self.encoder(x), F.linear and @ do).")


def _stats(out) -> tuple[object, dict]:
    """(loss, stats as floats) from compute_loss's return value; CheckFailed if it has the wrong form."""
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
        fail(CHECK, "compute_loss should return (loss, stats) with stats a dict of 'recon', 'sparsity' and "
                    f"'n_active', got {type(out).__name__}.")
    loss, stats = out
    missing = sorted({"recon", "sparsity", "n_active"} - set(stats))
    if missing:
        fail(CHECK, f"compute_loss's stats dict lacks {missing}; it should hold 'recon' (MSE), 'sparsity' (mean "
                    "|features|) and 'n_active' (mean number of active features per row).")
    values = {}
    for key in ("recon", "sparsity", "n_active"):
        try:
            values[key] = float(stats[key])
        except (TypeError, ValueError):
            fail(CHECK, f"stats[{key!r}] should be a number (use .item()), got {type(stats[key]).__name__}.")
    return loss, values


def _ratio_is(got: float, want: float, factor: float) -> bool:
    return want != 0 and math.isclose(got / want, factor, rel_tol=1e-3)


def _check_stats(values: dict, want: dict, n_rows: int) -> None:
    recon, sparsity, active = values["recon"], values["sparsity"], values["n_active"]
    if not math.isclose(recon, want["recon"], rel_tol=1e-4, abs_tol=1e-6):
        if _ratio_is(recon, want["recon"], D) or _ratio_is(recon, want["recon"], D * n_rows):
            fail(CHECK, "stats['recon'] is a sum of squared errors; the reconstruction loss is their mean over "
                        "rows and dimensions: F.mse_loss(reconstruction, x).")
        fail(CHECK, f"stats['recon'] = {recon:.6g}, expected the MSE between decode(encode(x)) and x = "
                    f"{want['recon']:.6g}. Hint: F.mse_loss(reconstruction, x).")
    if not math.isclose(sparsity, want["sparsity"], rel_tol=1e-4, abs_tol=1e-7):
        if _ratio_is(sparsity, want["sparsity"], N):
            fail(CHECK, "stats['sparsity'] is the L1 norm summed over features (then averaged over rows); the "
                        "sparsity term is the MEAN of |features| over rows and features: features.abs().mean(). "
                        "(A sum makes the penalty n_features times stronger.)")
        if _ratio_is(sparsity, want["sparsity"], N * n_rows):
            fail(CHECK, "stats['sparsity'] is |features| summed over everything; it should be averaged: "
                        "features.abs().mean().")
        fail(CHECK, f"stats['sparsity'] = {sparsity:.6g}, expected mean |features| = {want['sparsity']:.6g}. "
                    "Hint: features.abs().mean().")
    if not math.isclose(active, want["n_active"], rel_tol=1e-4, abs_tol=1e-6):
        how = "(features > 0).sum(dim=-1).float().mean()"
        if _ratio_is(active, want["n_active"], n_rows):
            fail(CHECK, f"stats['n_active'] counts active features over all rows; it is the mean count per row: {how}.")
        if _ratio_is(active, want["n_active"], 1 / N):
            fail(CHECK, f"stats['n_active'] is a fraction; it is the mean NUMBER of active features per row: {how}.")
        fail(CHECK, f"stats['n_active'] = {active:.6g}, expected {want['n_active']:.6g}, the mean number of "
                    f"active features per row: {how}.")


def _check_loss(loss, want_loss, values: dict, coef: float) -> None:
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        shape = f" of shape {list(loss.shape)}" if isinstance(loss, torch.Tensor) else ""
        fail(CHECK, f"the loss should be a 0-dimensional tensor (so loss.backward() works), got "
                    f"{type(loss).__name__}{shape}. Keep .item() for the stats dict only.")
    if not loss.requires_grad:
        fail(CHECK, "the loss does not require grad, so training cannot update the SAE; don't compute it under "
                    "torch.no_grad() or from .item() / .detach() values.")
    if close(loss.detach(), want_loss.detach(), atol=1e-6):
        return
    recon, sparsity, got = values["recon"], values["sparsity"], loss.item()
    if math.isclose(got, recon + sparsity, rel_tol=1e-5) and coef != 1:
        fail(CHECK, "the loss is recon + sparsity without the coefficient: it should be recon + sparsity_coef * "
                    "sparsity, using the sparsity_coef argument.")
    if math.isclose(got, coef * recon + sparsity, rel_tol=1e-5):
        fail(CHECK, "the coefficient multiplies the wrong term: the loss is sparsity_coef * recon + sparsity; it "
                    "should be recon + sparsity_coef * sparsity (the coefficient weighs the L1 penalty).")
    used = (got - recon) / sparsity if sparsity else float("nan")
    if math.isfinite(used) and used > 0 and not math.isclose(used, coef, rel_tol=1e-3):
        fail(CHECK, f"compute_loss(x, sparsity_coef={coef}) returned recon + {used:.3g} * sparsity: the "
                    "coefficient is not the sparsity_coef argument (a fixed number, or a default that wins). Use "
                    "recon + sparsity_coef * sparsity.")
    fail(CHECK, f"compute_loss(x, sparsity_coef={coef}) returned loss {got:.6g}, expected recon + sparsity_coef * "
                f"sparsity = {want_loss.item():.6g}, from the same recon and sparsity as the stats.")


def _check_compute_loss(sae, ref, x) -> None:
    for coef in (1e-3, 0.5):
        sae.zero_grad()
        ref.zero_grad()
        out = call(CHECK, f"compute_loss(x, sparsity_coef={coef})", sae.compute_loss, x, sparsity_coef=coef)
        loss, values = _stats(out)
        want_loss, want = ref.compute_loss(x, sparsity_coef=coef)
        _check_stats(values, want, len(x))
        _check_loss(loss, want_loss, values, coef)
        loss.backward()
        want_loss.backward()
        grads = [(p.grad, q.grad) for p, q in zip(sae.parameters(), ref.parameters())]
        if any(g is None for g, _ in grads) or not all(close(g, h, atol=1e-6) for g, h in grads):
            fail(CHECK, "the loss has the right value but the wrong gradient; build it from tensors of the forward "
                        "pass (no .item(), .detach() or numpy inside the loss).")


def check_sae(student) -> None:
    """Exercise 1: check a tied SAE class (or instance) against `saelab.TiedSAE`.

    The student's SAE gets the reference's weights (biases made non-zero) and runs on fixed inputs
    x [12, d_model]: encode, decode (on the reference's features), both on [2, 6, ...] batches, then
    compute_loss's stats, loss value and gradient at two sparsity coefficients.
    """
    ref, x = _reference()
    sae = _student_sae(student, ref)
    W = ref.encoder.weight.detach()
    with torch.no_grad():
        _check_encode(sae, ref, x, W)
        _check_decode(sae, ref, x, W)
        _check_leading_dims(sae, ref, x)
    _check_compute_loss(sae, ref, x)
    passed(CHECK, "encode, decode and compute_loss match saelab.TiedSAE on fixed inputs (values, shapes and "
                  "gradients).")
