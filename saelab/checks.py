"""Instant checks for the lab's exercises: each compares a student's code with saelab's reference
implementation on small fixed inputs.

A check prints one line starting with "✅" when the code matches, or raises `CheckFailed` (an
AssertionError) whose one-paragraph message says what differs and hints at the usual mistake. In
IPython / Jupyter, a CheckFailed shows as that message alone, without a stack trace.

    check_sae(MySAE)                      exercise 0: encode, decode, compute_loss of a tied SAE
    check_activations(collect_rows, model) exercise 0b: residual rows of one layer, BOS rows dropped
    check_training_loop(train_one)        exercise 1: one coefficient's training loop
    check_top_pairs(top_pairs)            exercise 2: the most correlated feature pairs
    check_fvu(fvu)                        exercise 3: fraction of variance unexplained
"""
from __future__ import annotations

import math

import torch

PASS = "✅"


class CheckFailed(AssertionError):
    """A student's code does not match the reference; the message says what differs and why."""


def _fail(check: str, message: str):
    raise CheckFailed(f"{check}: {message}")


def _passed(check: str, message: str) -> None:
    print(f"{PASS} {check} passed: {message}")


def _call(check: str, what: str, fn, *args, hint: str = "", **kwargs):
    """fn(*args, **kwargs), turning a student's exception into a CheckFailed that says where."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        _fail(check, f"{what} is not implemented yet (it raises NotImplementedError). Replace the "
                     "`raise NotImplementedError()` line with your code, run that cell again, then this one.")
    except CheckFailed:
        raise
    except Exception as e:  # the student's code failed: say how, without the stack trace
        detail = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        _fail(check, f"{what} raised {detail}." + (f" Hint: {hint}" if hint else ""))


def _close(a, b, atol=1e-5, rtol=1e-4) -> bool:
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=atol, rtol=rtol))


def _as_tensor(check: str, what: str, value, shape=None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        _fail(check, f"{what} should be a torch tensor, got {type(value).__name__}.")
    if shape is not None and tuple(value.shape) != tuple(shape):
        _fail(check, f"{what} should have shape {list(shape)}, got {list(value.shape)}.")
    return value.detach().cpu()


def _show_message_only(shell, etype, value, tb, tb_offset=None):
    """IPython handler for CheckFailed: print the message, not the stack trace."""
    return [f"❌ {type(value).__name__}: {value}"]


def _install_ipython_handler() -> None:
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and hasattr(shell, "set_custom_exc"):
        shell.set_custom_exc((CheckFailed,), _show_message_only)


_install_ipython_handler()


# ---------------------------------------------------------------------------------------------
# exercise 0: the tied SAE

_SAE_D, _SAE_N = 16, 48


def _sae_reference():
    """A TiedSAE with non-zero biases (so forgetting one shows) and fixed inputs."""
    from .sae import TiedSAE

    ref = TiedSAE(_SAE_D, _SAE_N, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        ref.encoder.bias.copy_(0.2 * torch.randn(_SAE_N, generator=g))
        ref.decoder_bias.copy_(0.5 * torch.randn(_SAE_D, generator=g))
    x = torch.randn(12, _SAE_D, generator=g)
    return ref, x


def _student_sae(check: str, student, ref):
    """A fresh instance of the student's SAE class, holding the reference's weights."""
    cls = type(student) if isinstance(student, torch.nn.Module) else student
    if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
        sae = _call(check, f"{cls.__name__}({_SAE_D}, {_SAE_N})", cls, _SAE_D, _SAE_N)
    else:
        _fail(check, f"pass your SAE class (e.g. check_sae(MySAE)) or an instance of it, got "
                     f"{type(student).__name__}.")
    name = type(sae).__name__
    for attr in ("encode", "decode", "compute_loss"):
        if not callable(getattr(sae, attr, None)):
            _fail(check, f"{name} has no method {attr}(); the tied SAE needs encode, decode and compute_loss.")
    keys = set(sae.state_dict())
    expected = {"encoder.weight", "encoder.bias", "decoder_bias"}
    extra = sorted(keys - expected)
    if extra:
        _fail(check, f"{name} has parameter(s) {extra} that a tied SAE does not have. A tied SAE decodes with "
                     "the encoder's own weight (transposed) plus `decoder_bias`; an extra decoder weight unties it.")
    if keys != expected:
        _fail(check, f"{name} should hold `encoder` (nn.Linear(d_model, n_features)) and `decoder_bias` "
                     f"(d_model zeros), as in the skeleton; it has {sorted(keys)}.")
    if tuple(sae.encoder.weight.shape) != (_SAE_N, _SAE_D):
        _fail(check, f"{name}({_SAE_D}, {_SAE_N}).encoder.weight should have shape [{_SAE_N}, {_SAE_D}] "
                     f"([n_features, d_model]), got {list(sae.encoder.weight.shape)}.")
    sae.load_state_dict(ref.state_dict())
    return sae


def check_sae(student) -> None:
    """Check a tied SAE class (or instance) against `saelab.TiedSAE`: encode, decode, compute_loss.

    The student's SAE gets the reference's weights (biases made non-zero) and runs on fixed inputs;
    a 3-D batch [2, 6, d_model] checks that `[..., d_model]` inputs work too.
    """
    check = "check_sae"
    ref, x = _sae_reference()
    sae = _student_sae(check, student, ref)
    W, b_enc, b_dec = (t.detach() for t in (ref.encoder.weight, ref.encoder.bias, ref.decoder_bias))

    # encode
    with torch.no_grad():
        got = _as_tensor(check, "encode(x)", _call(check, "encode(x)", sae.encode, x), (12, _SAE_N))
        want = ref.encode(x)
        if not _close(got, want):
            if (got < 0).any():
                _fail(check, "encode(x) has negative values. Features are relu(x @ W.T + b_enc): apply F.relu "
                             "after the linear map.")
            if _close(got, torch.relu(x @ W.T)):
                _fail(check, "encode(x) matches relu(x @ W.T) without the encoder bias. Add b_enc: "
                             "self.encoder(x) applies both the weight and the bias.")
            _fail(check, "encode(x) differs from relu(x @ W.T + b_enc), with W = self.encoder.weight "
                         "[n_features, d_model]. Hint: F.relu(self.encoder(x)).")

        # decode (fed the reference features, so it is checked on its own)
        f = ref.encode(x)
        got = _as_tensor(check, "decode(f)", _call(
            check, "decode(f)", sae.decode, f,
            hint="a shape mismatch usually means the weight is not transposed: the decoder maps n_features "
                 "-> d_model with W [n_features, d_model], i.e. f @ W + b_dec = F.linear(f, W.T, b_dec)."),
            (12, _SAE_D))
        want = ref.decode(f)
        if not _close(got, want):
            if _close(got, f @ W):
                _fail(check, "decode(f) matches f @ W without the decoder bias. Add self.decoder_bias: "
                             "reconstruction = f @ W + b_dec.")
            _fail(check, "decode(f) differs from f @ W + b_dec. The decoder is tied: it must use the encoder's "
                         "weight W = self.encoder.weight (transposed, not a new or separate weight) and "
                         "self.decoder_bias.")

        # [..., d_model] inputs
        x3 = x.reshape(2, 6, _SAE_D)
        got = _call(check, "encode on a [2, 6, d_model] batch", sae.encode, x3,
                    hint="use operations that act on the last dimension (self.encoder(x), F.linear, @), "
                         "not torch.mm, so any leading dimensions work.")
        if not isinstance(got, torch.Tensor) or not _close(got.detach(), ref.encode(x3)):
            _fail(check, "encode gives the wrong result on a [2, 6, d_model] batch; act on the last "
                         "dimension only (self.encoder(x) does).")
        got = _call(check, "decode on a [2, 6, n_features] batch", sae.decode, ref.encode(x3),
                    hint="use F.linear or @, not torch.mm, so any leading dimensions work.")
        if not isinstance(got, torch.Tensor) or not _close(got.detach(), ref.decode(ref.encode(x3))):
            _fail(check, "decode gives the wrong result on a [2, 6, n_features] batch; act on the last "
                         "dimension only.")

    # compute_loss
    for coef in (1e-3, 0.5):
        sae.zero_grad()
        ref.zero_grad()
        out = _call(check, f"compute_loss(x, sparsity_coef={coef})", sae.compute_loss, x, sparsity_coef=coef)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
            _fail(check, "compute_loss should return (loss, stats) with stats a dict of 'recon', 'sparsity' "
                         f"and 'n_active', got {type(out).__name__}.")
        loss, stats = out
        want_loss, want = ref.compute_loss(x, sparsity_coef=coef)
        missing = sorted({"recon", "sparsity", "n_active"} - set(stats))
        if missing:
            _fail(check, f"compute_loss's stats dict lacks {missing}; it should hold 'recon' (MSE), "
                         "'sparsity' (mean |features|) and 'n_active' (mean number of active features per row).")
        values = {}
        for key in ("recon", "sparsity", "n_active"):
            try:
                values[key] = float(stats[key])
            except (TypeError, ValueError):
                _fail(check, f"stats[{key!r}] should be a number (use .item()), got {type(stats[key]).__name__}.")
        n_rows, n_feat, d = x.shape[0], _SAE_N, _SAE_D
        if not math.isclose(values["recon"], want["recon"], rel_tol=1e-4, abs_tol=1e-6):
            ratio = values["recon"] / want["recon"] if want["recon"] else float("nan")
            if math.isclose(ratio, d, rel_tol=1e-3) or math.isclose(ratio, d * n_rows, rel_tol=1e-3):
                _fail(check, "stats['recon'] is a sum of squared errors; the reconstruction loss is their mean "
                             "over rows and dimensions: F.mse_loss(reconstruction, x).")
            _fail(check, f"stats['recon'] = {values['recon']:.6g}, expected the MSE between decode(encode(x)) and "
                         f"x = {want['recon']:.6g}. Hint: F.mse_loss(reconstruction, x).")
        if not math.isclose(values["sparsity"], want["sparsity"], rel_tol=1e-4, abs_tol=1e-7):
            ratio = values["sparsity"] / want["sparsity"] if want["sparsity"] else float("nan")
            if math.isclose(ratio, n_feat, rel_tol=1e-3):
                _fail(check, "stats['sparsity'] is the L1 norm summed over features (then averaged over rows); "
                             "the seed's sparsity term is the MEAN of |features| over rows and features: "
                             "features.abs().mean(). (A sum makes the penalty n_features times stronger.)")
            if math.isclose(ratio, n_feat * n_rows, rel_tol=1e-3):
                _fail(check, "stats['sparsity'] is |features| summed over everything; it should be averaged: "
                             "features.abs().mean().")
            _fail(check, f"stats['sparsity'] = {values['sparsity']:.6g}, expected mean |features| = "
                         f"{want['sparsity']:.6g}. Hint: features.abs().mean().")
        if not math.isclose(values["n_active"], want["n_active"], rel_tol=1e-4, abs_tol=1e-6):
            if math.isclose(values["n_active"], want["n_active"] * n_rows, rel_tol=1e-4):
                _fail(check, "stats['n_active'] counts active features over all rows; it is the mean count per "
                             "row: (features > 0).sum(dim=-1).float().mean().")
            if math.isclose(values["n_active"], want["n_active"] / n_feat, rel_tol=1e-4):
                _fail(check, "stats['n_active'] is a fraction; it is the mean NUMBER of active features per row: "
                             "(features > 0).sum(dim=-1).float().mean().")
            _fail(check, f"stats['n_active'] = {values['n_active']:.6g}, expected {want['n_active']:.6g}, the mean "
                         "number of active features per row: (features > 0).sum(dim=-1).float().mean().")
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            _fail(check, f"the loss should be a 0-dimensional tensor (so loss.backward() works), got "
                         f"{type(loss).__name__}{' of shape ' + str(list(loss.shape)) if isinstance(loss, torch.Tensor) else ''}. "
                         "Keep .item() for the stats dict only.")
        if not loss.requires_grad:
            _fail(check, "the loss does not require grad, so training cannot update the SAE; don't compute it "
                         "under torch.no_grad() or from .item() / .detach() values.")
        if not _close(loss.detach(), want_loss.detach(), atol=1e-6):
            no_coef = values["recon"] + values["sparsity"]
            if math.isclose(loss.item(), no_coef, rel_tol=1e-5) and coef != 1:
                _fail(check, "the loss is recon + sparsity without the coefficient: it should be "
                             "recon + sparsity_coef * sparsity, using the sparsity_coef argument.")
            _fail(check, f"compute_loss(x, sparsity_coef={coef}) returned loss {loss.item():.6g}, expected "
                         f"recon + sparsity_coef * sparsity = {want_loss.item():.6g}. Use the sparsity_coef "
                         "argument, not a fixed number.")
        loss.backward()
        want_loss.backward()
        grads = [(p.grad, q.grad) for p, q in zip(sae.parameters(), ref.parameters())]
        if any(g is None for g, _ in grads) or not all(_close(g, h, atol=1e-6) for g, h in grads):
            _fail(check, "the loss has the right value but the wrong gradient; build it from tensors of the "
                         "forward pass (no .item(), .detach() or numpy inside the loss).")
    _passed(check, "encode, decode and compute_loss match saelab.TiedSAE on fixed inputs "
                   "(values, shapes and gradients).")


# ---------------------------------------------------------------------------------------------
# exercise 0b: collecting activations

CHECK_TEXTS = ("The quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return a + b")


def check_activations(collect_rows, model, layer: int = 1) -> None:
    """Check `collect_rows(model, texts, layer) -> [n_tokens, d_model]` against `collect_activations`.

    Its rows must be the `resid_post` activations of `layer` for every token of each text, in order,
    without the BOS rows.
    """
    from .activations import collect_activations

    check = "check_activations"
    layer = min(layer, model.cfg.n_layers - 1)
    texts = list(CHECK_TEXTS)
    ref = collect_activations(model, texts, [layer], progress=False)[layer].rows
    with_bos = collect_activations(model, texts, [layer], exclude_bos=False, progress=False)[layer].rows
    got = _call(check, f"collect_rows(model, texts, layer={layer})", collect_rows, model, texts, layer)
    if isinstance(got, (list, tuple)):
        _fail(check, "collect_rows returned a list; concatenate the per-text rows into one tensor "
                     "[n_tokens, d_model] with torch.cat(rows, dim=0).")
    got = _as_tensor(check, "collect_rows(...)", got).float()
    if got.dim() == 3:
        _fail(check, f"collect_rows returned a 3-D tensor {list(got.shape)}; take each text's rows "
                     "[pos, d_model] (cache['resid_post', layer][0]) and concatenate them over texts.")
    if got.dim() != 2 or got.shape[1] != model.cfg.d_model:
        _fail(check, f"collect_rows should return [n_tokens, d_model = {model.cfg.d_model}], got {list(got.shape)}.")
    if got.shape == with_bos.shape and _close(got, with_bos, atol=1e-3):
        norms = with_bos.norm(dim=-1)
        bos_rows = torch.zeros(len(with_bos), dtype=torch.bool)
        start = 0
        for text in texts:
            bos_rows[start] = True
            start += model.to_tokens(text).shape[1]
        ratio = norms[bos_rows].mean() / norms[~bos_rows].mean()
        _fail(check, f"the BOS rows are still in (one per text, {len(texts)} here). The BOS token's residual "
                     f"norm is {ratio:.0f}x that of the other tokens, so these rows would dominate the SAE's MSE; "
                     "drop position 0 of each text: cache['resid_post', layer][0, 1:].")
    if got.shape[0] > ref.shape[0]:
        _fail(check, f"collect_rows returned {got.shape[0]} rows for {ref.shape[0]} real tokens (BOS excluded). "
                     "Padding rows from batching texts together must not become rows; run one text at a time "
                     "or keep only each text's real tokens.")
    if got.shape[0] < ref.shape[0]:
        _fail(check, f"collect_rows returned {got.shape[0]} rows, expected {ref.shape[0]} (every token of each "
                     "text except its BOS). Drop only position 0, not the last token too.")
    if not _close(got, ref, atol=1e-3, rtol=1e-3):
        from transformer_lens.utils import get_act_name

        for other in (layer - 1, layer + 1):
            if 0 <= other < model.cfg.n_layers:
                alt = collect_activations(model, texts, [other], progress=False)[other].rows
                if _close(got, alt, atol=1e-3, rtol=1e-3):
                    _fail(check, f"these are the rows of layer {other}, not layer {layer}; use "
                                 f"cache['resid_post', layer] ({get_act_name('resid_post', layer)}).")
        pre = collect_activations(model, texts, [layer], hook="resid_pre", progress=False)[layer].rows
        if _close(got, pre, atol=1e-3, rtol=1e-3):
            _fail(check, "these are resid_pre rows (the block's input); the lab uses resid_post, the block's "
                         "output: cache['resid_post', layer].")
        _fail(check, f"the rows have the right shape but not the values of resid_post at layer {layer}. Use "
                     "model.run_with_cache(model.to_tokens(text)) and cache['resid_post', layer][0, 1:] for "
                     "each text, in order.")
    _passed(check, f"{len(got)} rows of resid_post at layer {layer}, BOS rows excluded, match "
                   "saelab.collect_activations.")


# ---------------------------------------------------------------------------------------------
# exercise 1: the training loop

def check_training_loop(train_one) -> None:
    """Check `train_one(sae, rows, sparsity_coef, lr, batch_size, epochs, seed) -> list of losses`
    against `saelab.train_sae` with the same settings (same seeded batch order: `batch_indices`)."""
    from .sae import TiedSAE
    from .train import train_sae

    check = "check_training_loop"
    g = torch.Generator().manual_seed(2)
    rows = torch.randn(96, 8, generator=g) * 2 + 0.5
    settings = dict(lr=1e-2, batch_size=16, epochs=2, seed=3)
    for coef in (1e-3, 0.3):
        ref = TiedSAE(8, 24, seed=4)
        train_sae(ref, rows, sparsity_coef=coef, device="cpu", progress=False, **settings)
        sae = TiedSAE(8, 24, seed=4)
        before = {k: v.clone() for k, v in sae.state_dict().items()}
        losses = _call(check, f"train_one(sae, rows, sparsity_coef={coef}, ...)", train_one, sae, rows,
                       coef, **settings)
        n_steps = settings["epochs"] * math.ceil(len(rows) / settings["batch_size"])
        state = sae.state_dict()
        if all(torch.equal(before[k], state[k]) for k in state):
            _fail(check, "the SAE's weights did not change. Each step needs loss.backward() and then "
                         "optimizer.step().")
        if not isinstance(losses, (list, tuple)) or len(losses) != n_steps:
            _fail(check, f"train_one should return one loss per step ({n_steps} here: "
                         f"{settings['epochs']} epochs of {len(rows)} rows in batches of {settings['batch_size']}), "
                         f"got {type(losses).__name__}{' of length ' + str(len(losses)) if hasattr(losses, '__len__') else ''}.")
        if any(isinstance(v, torch.Tensor) for v in losses):
            _fail(check, "the losses are tensors; append loss.item() (a float), or every step's graph stays in "
                         "memory.")
        if all(_close(state[k], v) for k, v in ref.state_dict().items()):
            continue
        if coef == 0.3:
            _fail(check, "with sparsity_coef=0.3 the weights differ from the reference: pass the sparsity_coef "
                         "argument on to sae.compute_loss(batch, sparsity_coef=sparsity_coef).")
        first = float(losses[0])
        replay = TiedSAE(8, 24, seed=4)
        from .train import batch_indices
        index = next(iter(batch_indices(len(rows), settings["batch_size"], seed=settings["seed"])))
        expected_first, _ = replay.compute_loss(rows[index], sparsity_coef=coef)
        if not math.isclose(first, expected_first.item(), rel_tol=1e-4):
            _fail(check, "the first step's loss differs from the reference: take the batches in the order "
                         "batch_indices(len(rows), batch_size, seed=seed, epochs=epochs) gives, as rows[batch].")
        _fail(check, "the weights after training differ from saelab.train_sae's with the same settings. "
                     "Usual mistakes: no optimizer.zero_grad() before loss.backward() (gradients then "
                     "accumulate over steps), a new optimizer inside the loop (Adam's state resets), or a "
                     "learning rate other than lr.")
    _passed(check, "train_one's weights after training match saelab.train_sae's (same batches, Adam, "
                   "two sparsity coefficients).")


# ---------------------------------------------------------------------------------------------
# exercise 2: co-activating features

def _pair_features() -> torch.Tensor:
    """[400, 10] non-negative features: correlated groups, a rare one, a dead one."""
    g = torch.Generator().manual_seed(5)
    base = torch.relu(torch.randn(400, 4, generator=g))
    noise = 0.4 * torch.randn(400, 10, generator=g)
    f = torch.zeros(400, 10)
    f[:, 0], f[:, 1], f[:, 2] = base[:, 0], base[:, 0] + noise[:, 1], base[:, 1]
    f[:, 3] = base[:, 1] * 0.5 + base[:, 0] * 0.5 + noise[:, 3].abs()
    f[:, 4] = 0.0                                   # dead
    f[:, 5] = base[:, 2] + noise[:, 5] ** 2
    f[:, 6] = base[:, 3]
    f[:, 7] = base[:, 2] * base[:, 3] + noise[:, 7].abs()
    f[:2, 8] = torch.tensor([3.0, 2.0])             # active on 0.5% of rows: below min_density
    f[:, 9] = base[:, 3] + noise[:, 9].abs() * 2
    return torch.relu(f)


def check_top_pairs(top_pairs) -> None:
    """Check `top_pairs(features, k, min_density) -> [(i, j, corr), ...]` against
    `saelab.experiments.top_correlated_pairs` on fixed features (with a dead and a rare feature)."""
    from .experiments.correlation import top_correlated_pairs

    check = "check_top_pairs"
    features = _pair_features()
    k, min_density = 6, 0.01
    ref = top_correlated_pairs(features, k=k, min_density=min_density)
    got = _call(check, f"top_pairs(features, k={k}, min_density={min_density})", top_pairs, features,
                k=k, min_density=min_density)
    try:
        got = [(int(i), int(j), float(c)) for i, j, c in got]
    except (TypeError, ValueError):
        _fail(check, "top_pairs should return a list of (i, j, corr) tuples: two feature ids and their "
                     f"correlation, got {type(got).__name__}.")
    if any(i == j for i, j, _ in got):
        _fail(check, "the list has self-pairs (i, i) with correlation 1. Zero the diagonal of the "
                     "correlation matrix (or keep only i < j) before taking the largest values.")
    keys = [(min(i, j), max(i, j)) for i, j, _ in got]
    if len(set(keys)) < len(keys):
        _fail(check, "the list has the same pair twice, as (i, j) and (j, i): the correlation matrix is "
                     "symmetric, so keep only its upper triangle (i < j).")
    if any(math.isnan(c) for _, _, c in got):
        _fail(check, "a correlation is NaN: a feature that never fires has zero variance. Keep only features "
                     "active on more than min_density of the rows.")
    if len(got) != len(ref):
        _fail(check, f"top_pairs returned {len(got)} pairs, expected k = {len(ref)}.")
    cs = [c for _, _, c in got]
    if cs != sorted(cs, reverse=True):
        _fail(check, "the pairs should be sorted by correlation, highest first.")
    ref_keys = [(i, j) for i, j, _ in ref]
    if [tuple(sorted(p)) for p in keys] != ref_keys:
        active = torch.nonzero((features > 0).float().mean(0) > min_density).flatten().tolist()
        if all(i < len(active) and j < len(active) for i, j in keys) and \
                [(active[i], active[j]) for i, j in keys] == ref_keys:
            _fail(check, "the ids are positions among the frequently active features, not feature ids: map "
                         "them back with active_indices[i], active_indices[j].")
        if any(8 in p for p in keys):
            _fail(check, f"feature 8 is active on 0.5% of the rows, below min_density = {min_density}; "
                         "filter features by (features > 0).float().mean(0) > min_density first.")
        _fail(check, f"the pairs {keys} differ from the reference {ref_keys}. Correlate feature COLUMNS "
                     "(torch.corrcoef(features[:, active].T)), then take the k largest off-diagonal values.")
    if not all(math.isclose(a, b, abs_tol=1e-4) for a, b in zip(cs, [c for _, _, c in ref])):
        _fail(check, "the pairs are right but the correlation values differ; use Pearson correlation "
                     "(torch.corrcoef) of the features' activations over rows.")
    _passed(check, f"the top {k} pairs (no self-pairs, no duplicates, rare and dead features left out) match "
                   "saelab's reference.")


# ---------------------------------------------------------------------------------------------
# exercise 3: fraction of variance unexplained

def check_fvu(fvu) -> None:
    """Check `fvu(x, x_hat) -> float` (x, x_hat [n, d_model]) against `saelab.evaluate(...).fvu`."""
    from .metrics import evaluate
    from .sae import TiedSAE

    check = "check_fvu"
    g = torch.Generator().manual_seed(6)
    x = torch.randn(64, 8, generator=g) * torch.linspace(0.5, 3, 8) + 4.0   # far from zero mean
    sae = TiedSAE(8, 24, seed=7)
    with torch.no_grad():
        x_hat = sae(x)[0]
    want = evaluate(sae, x).fvu
    got = _call(check, "fvu(x, x_hat)", fvu, x, x_hat)
    try:
        got = float(got)
    except (TypeError, ValueError):
        _fail(check, f"fvu should return a number (a float or a 0-d tensor), got {type(got).__name__}.")
    if math.isclose(got, want, rel_tol=1e-4):
        _passed(check, f"fvu = {got:.4f} matches saelab.evaluate(...).fvu.")
        return
    sq_err = (x - x_hat).pow(2).sum().item()
    if math.isclose(got, 1 - want, rel_tol=1e-4):
        _fail(check, "this is the explained variance (1 - FVU); FVU is the fraction NOT explained: "
                     "sum((x - x_hat)^2) / sum((x - x.mean(0))^2).")
    if math.isclose(got, sq_err / x.pow(2).sum().item(), rel_tol=1e-4):
        _fail(check, "the denominator is sum(x^2), not the variance: subtract each dimension's mean over "
                     "the rows first, sum((x - x.mean(dim=0))^2). Residual streams have a large mean, so "
                     "the uncentered version looks far too good.")
    if math.isclose(got, (x - x_hat).pow(2).mean().item(), rel_tol=1e-4):
        _fail(check, "this is the MSE; divide the squared error by the total variance to get the fraction "
                     "unexplained: sum((x - x_hat)^2) / sum((x - x.mean(0))^2).")
    _fail(check, f"fvu(x, x_hat) = {got:.6g}, expected {want:.6g} = sum((x - x_hat)^2) / sum((x - x.mean(0))^2), "
                 "both sums over all rows and dimensions.")
