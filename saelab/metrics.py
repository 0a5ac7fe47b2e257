"""How good is an SAE: reconstruction and sparsity metrics (`evaluate`) and the language-model loss
when its reconstruction replaces the real activations (`ce_loss_recovered`).

Both accept any SAE with saelab's SAE interface (`saelab.as_sae`)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import pandas as pd
import torch
import torch.nn.functional as F

from saelab.activations.collect import probe_width
from saelab.activations.rows import iter_row_batches, n_rows
from saelab.activations.windows import split_windows, tokenize
from saelab.models import accumulation
from saelab.precision import at_least_float32, in_working_dtype
from saelab.results import Result, fmt
from saelab.sae.interface import as_sae
from saelab.utils import active, describe, zero_variance
from saelab.validate import (check_bool, check_choice, check_context_length, check_hook, check_int, check_layer,
                             check_model, check_rows, check_texts)

DENSE_THRESHOLD = 0.1  # a feature active on more than 10% of tokens counts as dense
MSE_CAPTION = ("mse is the mean over rows and dimensions of (x - x_hat)^2 (per dimension: SAELens's mse is "
               "the sum over dimensions, i.e. this times d_in).")


@dataclass(repr=False)
class EvalResult(Result):
    """Metrics of an SAE on a set of activation rows (see `evaluate` for the definitions).

    table: one row with the scalar metrics (feature_density left out); mse is per dimension.
    """
    mse: float
    explained_variance: float
    fvu: float
    l0: float
    l1: float
    dead_fraction: float
    dense_fraction: float
    feature_density: torch.Tensor  # [n_features] fraction of tokens on which each feature is active
    n_tokens: int

    caption = MSE_CAPTION

    def as_dict(self) -> dict:
        """The scalar metrics as a dict (feature_density left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "feature_density"}

    @property
    def table(self) -> pd.DataFrame:
        return pd.DataFrame([self.as_dict()])

    def summary(self) -> str:
        return (f"SAE on {self.n_tokens:,} tokens: explained variance {fmt(self.explained_variance)}, "
                f"L0 {fmt(self.l0)}, MSE per dimension {fmt(self.mse)}, dead {fmt(100 * self.dead_fraction)}%, "
                f"dense {fmt(100 * self.dense_fraction)}% of {len(self.feature_density)} features")


class _Sums:
    """Running float64 sums over batches of rows x [b, d_in] and their features f [b, d_sae].

    A batch is reduced on its device in `models.accumulation`'s dtype (float64 where the device has
    it; float32 on MPS) and added to float64 totals kept on `home` (the device itself, or the CPU)."""

    def __init__(self, d_in: int, d_sae: int, device):
        self.dtype, self.home = accumulation(device)
        f64 = torch.float64
        self.sq_err = torch.zeros((), dtype=f64, device=self.home)
        self.sq_norm = torch.zeros((), dtype=f64, device=self.home)
        self.l1 = torch.zeros((), dtype=f64, device=self.home)
        self.x = torch.zeros(d_in, dtype=f64, device=self.home)
        self.active = torch.zeros(d_sae, dtype=torch.int64, device=self.home)
        self.n = 0

    def add(self, x: torch.Tensor, features: torch.Tensor, reconstruction: torch.Tensor) -> None:
        dtype, home, f64 = self.dtype, self.home, torch.float64
        self.sq_err += (reconstruction - x).pow(2).sum(dtype=dtype).to(home, f64)
        wide = x.to(dtype)             # squared in the dtype of the sums, as the mean is: see zero_variance
        self.sq_norm += wide.pow(2).sum().to(home, f64)
        self.x += wide.sum(dim=0).to(home, f64)
        self.l1 += features.abs().sum(dtype=dtype).to(home, f64)
        self.active += active(features).sum(dim=0).to(home)
        self.n += x.shape[0]


@torch.no_grad()
def evaluate(sae, activations, batch_size: int = 4096) -> EvalResult:
    """Reconstruction and sparsity metrics of `sae` on `activations`, streamed in batches.

    activations: a single-layer `Activations` or a float tensor [n_tokens, d_in].
    With x a row, x_hat its reconstruction and f its features [d_sae], over the n rows:
      mse                = mean over rows and dimensions of (x - x_hat)^2 (the seed's recon loss; per
                           dimension, where SAELens's mse sums over the d_in dimensions)
      explained_variance = 1 - E||x - x_hat||^2 / (E||x||^2 - ||E x||^2)  (SAELens' formula; sums kept
                           in float64); NaN if the rows have zero variance (`utils.zero_variance`)
      fvu                = 1 - explained_variance (fraction of variance unexplained)
      l0                 = mean number of active features (f != 0, as SAELens counts) per row
      l1                 = mean over rows of sum_i |f_i| (the seed's "sparsity" term is l1 / d_sae)
      feature_density    = [d_sae] fraction of rows on which each feature is active
      dead_fraction      = fraction of features never active on these rows
      dense_fraction     = fraction of features active on more than 10% of the rows
    """
    sae = as_sae("sae", sae)
    check_int("batch_size", batch_size, minimum=1)
    check_rows("activations", activations, sae.d_in)
    return evaluate_unchecked(sae, activations, batch_size)


@torch.no_grad()
def evaluate_unchecked(sae, activations, batch_size: int = 4096) -> EvalResult:
    """`evaluate` for callers that checked its arguments once (the experiments, the trainer): `sae`
    already through `as_sae`, `activations` through `validate.check_rows` with the SAE's width."""
    n = n_rows(activations)
    sums = _Sums(sae.d_in, sae.d_sae, sae.W_dec.device)
    with in_working_dtype(sae):   # float64 under $SAELAB_PRECISION
        weight = sae.W_dec
        for batch in iter_row_batches(activations, batch_size):
            x = batch.to(device=weight.device, dtype=weight.dtype, non_blocking=True)
            features = sae.encode_unchecked(x)
            sums.add(x, features, sae.decode_unchecked(features))
    if sums.n != n:
        raise RuntimeError(f"activations: expected {n} rows while reading, got {sums.n}")
    if not math.isfinite(sums.sq_norm.item()):
        raise ValueError("activations: expected finite values, got rows containing NaN or inf")
    second_moment = (sums.sq_norm / n).item()
    variance = second_moment - (sums.x / n).pow(2).sum().item()
    mse_per_row = (sums.sq_err / n).item()
    constant = zero_variance(variance, second_moment, sums.dtype)
    explained = math.nan if constant else 1.0 - mse_per_row / variance
    density = (sums.active.double() / n).float().cpu()
    return EvalResult(
        mse=mse_per_row / sae.d_in,
        explained_variance=explained,
        fvu=1.0 - explained,
        l0=(sums.active.sum().double() / n).item(),
        l1=(sums.l1 / n).item(),
        dead_fraction=(density == 0).float().mean().item(),
        dense_fraction=(density > DENSE_THRESHOLD).float().mean().item(),
        feature_density=density,
        n_tokens=n,
    )


@dataclass(repr=False)
class CELossResult(Result):
    """Next-token cross-entropy (nats per predicted token) with the activations left clean, replaced by
    the SAE's reconstruction, and zeroed; score = (zero_ablation - spliced) / (zero_ablation - clean).

    table: one row: clean, spliced, zero_ablation, score, n_tokens.
    """
    clean: float
    spliced: float
    zero_ablation: float
    score: float
    n_tokens: int

    caption = ("CE in nats per predicted token. saelab's conventions (the default): every next-token prediction "
               "counts, the one made at BOS included, and the BOS activation is left unchanged in the spliced and "
               "zeroed runs unless exclude_bos=False; conventions='saelens' (SAELens's run_evals): predictions "
               "made at BOS are left out and BOS is zeroed in the zero-ablation run.")

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def table(self) -> pd.DataFrame:
        return pd.DataFrame([self.as_dict()])

    def summary(self) -> str:
        return (f"CE loss recovered {fmt(self.score)} on {self.n_tokens:,} predicted tokens (CE clean "
                f"{fmt(self.clean)}, spliced {fmt(self.spliced)}, zero-ablated {fmt(self.zero_ablation)} nats)")


def ce_loss_recovered(model, sae, texts, layer: int, hook: str = "resid_post", batch_size: int = 8,
                      context_length: int | None = None, exclude_bos: bool = True,
                      conventions: str = "saelab") -> CELossResult:
    """How much of the model's next-token loss survives when the SAE's reconstruction replaces the
    activations at `hook` of `layer` (e.g. "blocks.{layer}.hook_resid_post").

    sae: any SAE with saelab's SAE interface (`saelab.as_sae`).
    Each text is tokenized with a BOS token (model.to_tokens), whole, and split into windows of
    `context_length` tokens (default: the model's n_ctx), each starting with BOS, as
    `collect_activations` reads texts; `batch_size` windows run at a time, right-padded. Only real
    next-token predictions (position t predicting token t+1 of the same window) count, so padding
    never enters the means.
    Three forward passes per batch give the mean CE with clean activations, with the SAE's
    reconstruction spliced in (run_with_hooks), and with the activations zeroed;
    score = (CE_zero - CE_spliced) / (CE_zero - CE_clean): 1 = the SAE loses nothing, 0 = as bad as
    deleting the activations (NaN if zeroing costs nothing).

    conventions="saelab" (the default):
    - BOS: exclude_bos=True keeps the BOS position's activation unchanged in both the spliced and the
      zeroed run: the SAE was trained without BOS rows, and the huge BOS activation would otherwise
      dominate. The score then measures the positions the SAE replaces. exclude_bos=False splices and
      zeroes every position, BOS included.
    - Position 0: the prediction made at the BOS position (of the text's first token) counts in
      every CE mean.
    conventions="saelens" reproduces SAELens's `run_evals` (`get_recons_loss` with its default
    ignore_tokens; exclude_bos is not used):
    - the splice leaves every position whose token is a special token (the tokenizer's BOS, EOS, PAD,
      SEP, decoder-start ids) unchanged; the zero ablation zeroes every position, BOS included,
      which makes its zero-ablation CE, and so its score, higher;
    - a prediction counts only when the token it is made at is not special: position 0 (BOS) is
      left out of all three CE means.
    """
    return _ce_results(model, {"sae": as_sae("sae", sae)}, texts, layer, hook, batch_size, context_length,
                       exclude_bos, conventions)[0]


def ce_loss_recovered_many(model, saes, texts, layer: int, hook: str = "resid_post", batch_size: int = 8,
                           context_length: int | None = None, exclude_bos: bool = True,
                           conventions: str = "saelab") -> list[CELossResult]:
    """`ce_loss_recovered` of several SAEs on the same texts and hook, one CELossResult each (equal to
    `ce_loss_recovered` of that SAE alone): the clean and zero-ablated passes are shared, so a batch
    takes 2 + k forward passes instead of 3k (the sparsity sweep's CE column)."""
    if not isinstance(saes, (list, tuple)) or not saes:
        raise ValueError(f"saes: expected a non-empty list of SAEs, got {describe(saes)}")
    saes = {f"saes[{i}]": as_sae(f"saes[{i}]", s) for i, s in enumerate(saes)}
    return _ce_results(model, saes, texts, layer, hook, batch_size, context_length, exclude_bos, conventions)


def _ce_results(model, saes: dict, texts, layer, hook, batch_size, context_length, exclude_bos, conventions):
    """CELossResult per SAE ({argument name: SAE through as_sae}): passes clean, zeroed, then one spliced
    per SAE."""
    texts, hook_name, context_length = _check_ce_args(model, saes, texts, layer, hook, batch_size, context_length)
    check_bool("exclude_bos", exclude_bos)
    check_choice("conventions", conventions, ("saelab", "saelens"))
    saes = list(saes.values())
    special = _special_token_ids(model.tokenizer) if conventions == "saelens" else None
    keep = {}  # keep["splice"], keep["zero"]: [b, pos] True where the batch's activation stays unchanged
    totals = torch.zeros(2 + len(saes), dtype=torch.float64)
    n_tokens = 0
    with torch.no_grad(), in_working_dtype(model, *saes):   # float64 under $SAELAB_PRECISION
        hooks = [None, _zero_hook(keep)] + [_splice_hook(sae, keep) for sae in saes]   # clean, zeroed, spliced...
        for tokens, mask in _token_batches(model, texts, batch_size, context_length):
            keep["splice"], keep["zero"], mask = _kept_positions(tokens, mask, special, exclude_bos)
            for i, hook_fn in enumerate(hooks):
                fwd_hooks = [] if hook_fn is None else [(hook_name, hook_fn)]
                logits = model.run_with_hooks(tokens, fwd_hooks=fwd_hooks, padding_side="right")
                totals[i] += _masked_ce_sum(logits, tokens, mask)
                del logits  # one [batch, pos, d_vocab] at a time
            n_tokens += int(mask.sum())
    if n_tokens == 0:
        raise ValueError("texts: expected at least one text with a token after BOS, got only empty texts")
    clean, zero_ablation, *spliced = (totals / n_tokens).tolist()
    denom = zero_ablation - clean
    return [CELossResult(clean=clean, spliced=value, zero_ablation=zero_ablation, n_tokens=n_tokens,
                         score=(zero_ablation - value) / denom if denom != 0 else math.nan) for value in spliced]


def _special_token_ids(tokenizer) -> torch.Tensor:
    """[n] the structural special token ids (BOS, EOS, PAD, SEP, decoder start), as SAELens's
    `get_special_token_ids` finds them."""
    attrs = ("bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id")
    ids = {getattr(tokenizer, a, None) for a in attrs} - {None}
    return torch.tensor(sorted(ids), dtype=torch.long)


def _check_ce_args(model, saes: dict, texts, layer, hook, batch_size, context_length) -> tuple[list[str], str, int]:
    """(texts, full hook name, context length) after checking `ce_loss_recovered`'s arguments, each SAE's
    d_in against the hook's width (4-D hooks such as "z" flattened, as `collect_activations` does)."""
    check_model("model", model)
    texts = check_texts("texts", texts, allow_str=True)
    layer = check_layer("layer", layer, model.cfg.n_layers)
    hook_name = check_hook("hook", hook, model, [layer])[layer]
    check_int("batch_size", batch_size, minimum=1)
    context_length = check_context_length("context_length", context_length, model.cfg.n_ctx)
    width = probe_width(model, hook_name, layer)
    for name, sae in saes.items():
        if sae.d_in != width:
            raise ValueError(f"{name}: expected an SAE of d_in = {width}, the width of {hook_name}'s rows in this "
                             f"model, got d_in = {sae.d_in} (an SAE trained on another hook or model?)")
    return texts, hook_name, context_length


def _splice_hook(sae, keep: dict):
    """The spliced run's hook: the SAE's reconstruction, except where keep["splice"] [b, pos] is True."""
    weight = sae.W_dec

    def splice(act, hook):
        flat = act.flatten(2)                                   # [b, pos, d_in]: heads flattened for 4-D hooks
        replace = ~keep["splice"].to(act.device)
        x = flat[replace].to(device=weight.device, dtype=weight.dtype)  # [n_replaced, d_in]
        out = flat.clone()
        out[replace] = sae.decode_unchecked(sae.encode_unchecked(x)).to(device=act.device, dtype=act.dtype)
        return out.view_as(act)

    return splice


def _zero_hook(keep: dict):
    """The zero-ablated run's hook: zeros, except where keep["zero"] [b, pos] is True."""
    def zero(act, hook):
        kept = keep["zero"].to(act.device).view(*keep["zero"].shape, *[1] * (act.ndim - 2))   # [b, pos, 1(, 1)]
        return torch.where(kept, act, torch.zeros((), dtype=act.dtype, device=act.device))

    return zero


def _token_batches(model, texts: list[str], batch_size: int, context_length: int):
    """Yield (tokens [b, pos] right-padded on the model's device, mask [b, pos - 1]) per batch of windows
    (each text whole, in windows of context_length tokens starting with BOS: `activations.windows`),
    mask[b, t] True where position t predicts a real token t+1 of window b; batches without any are skipped."""
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    text_tokens = tokenize(model, texts, prepend_bos=True)
    windows = split_windows(text_tokens, context_length, bos=True)
    for start in range(0, len(windows), batch_size):
        rows = [w.tokens(text_tokens[w.text], bos=True) for w in windows[start:start + batch_size]]
        lengths = torch.tensor([len(r) for r in rows])
        tokens = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=pad_id)
        mask = torch.arange(tokens.shape[1] - 1)[None, :] < (lengths[:, None] - 1)
        if mask.any():
            yield tokens.to(model.cfg.device), mask.to(model.cfg.device)


def _kept_positions(tokens, mask, special, exclude_bos: bool):
    """(splice keeps [b, pos], zero keeps [b, pos], prediction mask [b, pos-1]) for one batch: saelab's
    conventions when `special` is None (BOS kept in both runs when exclude_bos), else SAELens's."""
    if special is None:
        keep = torch.zeros_like(tokens, dtype=torch.bool)
        keep[:, 0] = exclude_bos
        return keep, keep, mask
    keep = torch.isin(tokens, special.to(tokens.device))
    return keep, torch.zeros_like(keep), mask & ~keep[:, :-1]


def _masked_ce_sum(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> float:
    """Sum of next-token CE over positions where mask [b, pos-1] is True; logits [b, pos, vocab]."""
    predicted = at_least_float32(logits[:, :-1][mask])  # [n_real, vocab]: padding rows never reach the softmax
    targets = tokens[:, 1:][mask]
    dtype, _ = accumulation(predicted.device)
    return F.cross_entropy(predicted, targets, reduction="none").sum(dtype=dtype).item()
