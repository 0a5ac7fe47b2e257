"""How good is an SAE: reconstruction and sparsity metrics (`evaluate`) and the language-model loss
when its reconstruction replaces the real activations (`ce_loss_recovered`)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F

from .activations import d_model_of, iter_row_batches, n_rows
from .sae import TiedSAE
from .utils import check_int, describe

DENSE_THRESHOLD = 0.1  # a feature active on more than 10% of tokens counts as dense


@dataclass
class EvalResult:
    """Metrics of an SAE on a set of activation rows (see `evaluate` for the definitions)."""
    mse: float
    explained_variance: float
    fvu: float
    l0: float
    l1: float
    dead_fraction: float
    dense_fraction: float
    feature_density: torch.Tensor  # [n_features] fraction of tokens on which each feature is active
    n_tokens: int

    def as_dict(self) -> dict:
        """The scalar metrics as a dict (feature_density left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "feature_density"}

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.as_dict().items())
        return f"EvalResult({items})"


def _check_sae(sae) -> TiedSAE:
    if not isinstance(sae, TiedSAE):
        raise ValueError(f"sae: expected a saelab TiedSAE, got {describe(sae)}")
    return sae


@torch.no_grad()
def evaluate(sae: TiedSAE, activations, batch_size: int = 4096) -> EvalResult:
    """Reconstruction and sparsity metrics of `sae` on `activations`, streamed in batches.

    activations: a single-layer `Activations` or a float tensor [n_tokens, d_model].
    With x a row, x_hat its reconstruction and f its features [n_features], over the n rows:
      mse                = mean over rows and dimensions of (x - x_hat)^2 (the seed's recon loss)
      explained_variance = 1 - E||x - x_hat||^2 / (E||x||^2 - ||E x||^2)  (SAELens' formula; sums kept
                           in float64); NaN if the rows have zero variance
      fvu                = 1 - explained_variance (fraction of variance unexplained)
      l0                 = mean number of active features (f > 0) per row
      l1                 = mean over rows of sum_i |f_i| (the seed's "sparsity" term is l1 / n_features)
      feature_density    = [n_features] fraction of rows on which each feature is active
      dead_fraction      = fraction of features never active on these rows
      dense_fraction     = fraction of features active on more than 10% of the rows
    """
    _check_sae(sae)
    check_int("batch_size", batch_size, minimum=1)
    n = n_rows(activations)
    width = d_model_of(activations)
    if width != sae.d_model:
        raise ValueError(f"activations: expected rows of width d_model = {sae.d_model} (the SAE's), got {width}")
    if n == 0:
        raise ValueError("activations: expected at least one row, got 0 rows")
    weight = sae.encoder.weight
    dev, f64 = weight.device, torch.float64
    sum_sq_err = torch.zeros((), dtype=f64, device=dev)
    sum_sq_norm = torch.zeros((), dtype=f64, device=dev)
    sum_l1 = torch.zeros((), dtype=f64, device=dev)
    sum_x = torch.zeros(sae.d_model, dtype=f64, device=dev)
    active = torch.zeros(sae.n_features, dtype=torch.int64, device=dev)
    seen = 0
    for batch in iter_row_batches(activations, batch_size):
        x = batch.to(device=dev, dtype=weight.dtype, non_blocking=True)
        features = sae._encode(x)
        sum_sq_err += (sae._decode(features) - x).pow(2).sum(dtype=f64)
        sum_sq_norm += x.pow(2).sum(dtype=f64)
        sum_x += x.sum(dim=0, dtype=f64)
        sum_l1 += features.sum(dtype=f64)  # features >= 0, so this is sum |f|
        active += (features > 0).sum(dim=0)
        seen += x.shape[0]
    if seen != n:
        raise RuntimeError(f"activations: expected {n} rows while reading, got {seen}")
    if not math.isfinite(sum_sq_norm.item()):
        raise ValueError("activations: expected finite values, got rows containing NaN or inf")
    variance = (sum_sq_norm / n - (sum_x / n).pow(2).sum()).item()
    mse_per_row = (sum_sq_err / n).item()
    explained = 1.0 - mse_per_row / variance if variance > 0 else math.nan
    density = (active.double() / n).float().cpu()
    return EvalResult(
        mse=mse_per_row / sae.d_model,
        explained_variance=explained,
        fvu=1.0 - explained,
        l0=(active.sum().double() / n).item(),
        l1=(sum_l1 / n).item(),
        dead_fraction=(density == 0).float().mean().item(),
        dense_fraction=(density > DENSE_THRESHOLD).float().mean().item(),
        feature_density=density,
        n_tokens=n,
    )


@dataclass
class CELossResult:
    """Next-token cross-entropy (nats per predicted token) with the activations left clean, replaced by
    the SAE's reconstruction, and zeroed; score = (zero_ablation - spliced) / (zero_ablation - clean)."""
    clean: float
    spliced: float
    zero_ablation: float
    score: float
    n_tokens: int

    def as_dict(self) -> dict:
        return asdict(self)


def ce_loss_recovered(model, sae: TiedSAE, texts, layer: int, hook: str = "resid_post", batch_size: int = 8,
                      context_length: int | None = None, exclude_bos: bool = True) -> CELossResult:
    """How much of the model's next-token loss survives when the SAE's reconstruction replaces the
    activations at `hook` of `layer` (e.g. "blocks.{layer}.hook_resid_post").

    Each text is tokenized with a BOS token (model.to_tokens), cut to `context_length` tokens (default:
    the model's n_ctx), and the texts of a batch are right-padded; only real next-token predictions
    (position t predicting token t+1 of the same text) count, so padding never enters the means.
    Three forward passes per batch give the mean CE with clean activations, with the SAE's
    reconstruction spliced in (run_with_hooks), and with the activations zeroed;
    score = (CE_zero - CE_spliced) / (CE_zero - CE_clean): 1 = the SAE loses nothing, 0 = as bad as
    deleting the activations (NaN if zeroing costs nothing).

    exclude_bos=True keeps the BOS position's activation unchanged in both the spliced and the zeroed
    run: the SAE was trained without BOS rows, and the huge BOS activation would otherwise dominate.
    The score then measures the positions the SAE replaces. (SAELens keeps BOS out of the splice but
    zeroes it in the baseline, which makes its zero-ablation CE, and so its score, higher.)
    """
    from transformer_lens.utilities import get_act_name

    _check_sae(sae)
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"texts: expected a non-empty list of strings, got {describe(texts)}")
    n_layers = model.cfg.n_layers
    if isinstance(layer, bool) or not isinstance(layer, int) or not -n_layers <= layer < n_layers:
        raise ValueError(f"layer: expected an int in [0, {n_layers - 1}] (the model has {n_layers} layers; "
                         f"negative ints count from the last), got {describe(layer)}")
    layer %= n_layers
    hook_name = get_act_name(hook, layer) if isinstance(hook, str) else None
    if hook_name not in model.hook_dict:
        raise ValueError(f"hook: expected a hook name such as 'resid_post', 'resid_pre' or 'mlp_out', got {hook!r}")
    check_int("batch_size", batch_size, minimum=1)
    context_length = model.cfg.n_ctx if context_length is None else context_length
    check_int("context_length", context_length, minimum=2)
    if context_length > model.cfg.n_ctx:
        raise ValueError(f"context_length: expected at most the model's n_ctx = {model.cfg.n_ctx}, "
                         f"got {context_length}")

    keep = 1 if exclude_bos else 0  # leading positions left untouched by the splice and the ablation

    def splice(act, hook):
        if act.shape[-1] != sae.d_model:
            raise ValueError(f"sae: expected d_model = {act.shape[-1]} to match {hook.name}, got {sae.d_model}")
        weight = sae.encoder.weight
        x = act[:, keep:].to(device=weight.device, dtype=weight.dtype)
        recon = sae._decode(sae._encode(x)).to(device=act.device, dtype=act.dtype)
        return torch.cat([act[:, :keep], recon], dim=1)

    def zero(act, hook):
        return torch.cat([act[:, :keep], torch.zeros_like(act[:, keep:])], dim=1)

    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    totals = torch.zeros(3, dtype=torch.float64)
    n_tokens = 0
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            rows = [model.to_tokens(t, prepend_bos=True, move_to_device=False)[0, :context_length]
                    for t in texts[start:start + batch_size]]
            lengths = torch.tensor([len(r) for r in rows])
            tokens = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=pad_id)
            # mask[b, t]: position t predicts a real token t+1 of text b
            mask = torch.arange(tokens.shape[1] - 1)[None, :] < (lengths[:, None] - 1)
            if not mask.any():
                continue
            tokens = tokens.to(model.cfg.device)
            mask = mask.to(model.cfg.device)
            for i, hooks in enumerate(([], [(hook_name, splice)], [(hook_name, zero)])):
                logits = model.run_with_hooks(tokens, fwd_hooks=hooks, padding_side="right")
                totals[i] += _masked_ce_sum(logits, tokens, mask)
                del logits  # one [batch, pos, d_vocab] at a time
            n_tokens += int(mask.sum())
    if n_tokens == 0:
        raise ValueError("texts: expected at least one text with a token after BOS, got only empty texts")
    clean, spliced, zero_ablation = (totals / n_tokens).tolist()
    denom = zero_ablation - clean
    score = (zero_ablation - spliced) / denom if denom != 0 else math.nan
    return CELossResult(clean=clean, spliced=spliced, zero_ablation=zero_ablation, score=score, n_tokens=n_tokens)


def _masked_ce_sum(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> float:
    """Sum of next-token CE over positions where mask [b, pos-1] is True; logits [b, pos, vocab]."""
    predicted = logits[:, :-1][mask].float()  # [n_real, vocab]: padding rows never reach the softmax
    targets = tokens[:, 1:][mask]
    return F.cross_entropy(predicted, targets, reduction="none").sum(dtype=torch.float64).item()
