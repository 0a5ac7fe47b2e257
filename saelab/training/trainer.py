"""Train tied SAEs on activation rows: the seed's Adam loop, seeded, logged and checked.

ONE trainer core, `train_stacked`, trains k tied SAEs at once as one stacked model (weights
`[k, n_features, d_model]`, batched matmuls) on the same mini-batches: k = 1 for `train_sae`, one
per coefficient for the sparsity sweep, one per layer for `compare_layers`. The per-SAE losses are
summed, so each SAE gets exactly its own gradient (`sae.tied.tied_gradients`) and Adam (elementwise)
takes exactly the steps it would take alone: a stacked SAE equals the one trained alone, bit for bit.

Faults: the rows are checked to be finite before the first step (the SAEs are then untouched); a
NaN/inf loss stops training with the SAEs restored to their last finite logged state; a loss that
grows far above its starting value warns; Ctrl-C (KeyboardInterrupt) ends training early and
returns what was done, with the SAEs in eval mode and `metadata["interrupted_at_step"]`.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import pandas as pd
import torch

from saelab.activations.rows import Activations, find_nonfinite_row, gather_rows, n_rows
from saelab.training.batches import batch_indices, n_steps
from saelab.training.initialise import start_from_rows
from saelab.metrics import EvalResult, evaluate_unchecked
from saelab.models import resolve_device
from saelab.precision import working_dtype
from saelab.results import Result, fmt
from saelab.sae.tied import TiedSAE, tied_gradients
from saelab.training.config import LAB_RECIPE, TrainConfig
from saelab.utils import active, describe, progress_bar
from saelab.validate import check_float, check_rows

__all__ = ["TrainConfig", "LAB_RECIPE", "TrainResult", "StackedTraining", "train_sae", "train_stacked", "adam",
           "source_metadata", "batch_indices", "n_steps", "HISTORY_COLUMNS", "DIVERGENCE_FACTOR", "DENSE_RAMP",
           "DensePenalty"]

HISTORY_COLUMNS = ("step", "loss", "recon", "sparsity", "l0")
#: `train_stacked` warns when a logged loss exceeds this many times the loss of the first step.
DIVERGENCE_FACTOR = 100.0
#: dense_l1's penalty reaches its full weight at this many times dense_target (TrainConfig).
DENSE_RAMP = 1.5


class DensePenalty:
    """TrainConfig's dense-feature penalty, for any trainer: per-feature multipliers of the sparsity term,
    from each feature's running firing density (an exponential average over batches, `density_decay`):
    1 up to `dense_target`, rising linearly to 1 + `dense_l1` at DENSE_RAMP * dense_target (continuous:
    a step would let a rounding difference flip a feature's penalty)."""

    def __init__(self, config: TrainConfig):
        self.l1, self.target, self.decay = config.dense_l1, config.dense_target, config.density_decay
        self.density = None   # [..., n_features] running firing density

    def weight(self, features: torch.Tensor, rows_dim: int) -> torch.Tensor | None:
        """features [..., rows, n_f] (rows along `rows_dim`) -> [..., 1, n_f] multipliers, the running
        density updated with this batch; None without dense_l1 (the seed's loss)."""
        if not self.l1:
            return None
        now = active(features).to(features.dtype).mean(dim=rows_dim)
        self.density = now if self.density is None else self.density.mul_(self.decay).add_(now, alpha=1.0 - self.decay)
        over = (self.density - self.target) / ((DENSE_RAMP - 1.0) * self.target)
        return (1.0 + self.l1 * over.clamp(0.0, 1.0)).unsqueeze(rows_dim)


def source_metadata(activations) -> dict:
    """Where single-layer `Activations` came from (model_name, layer, hook, hook_name); {} for a tensor."""
    if not isinstance(activations, Activations):
        return {}
    from transformer_lens.utilities import get_act_name
    return {"model_name": activations.model_name, "layer": activations.layer, "hook": activations.hook,
            "hook_name": get_act_name(activations.hook, activations.layer)}


def adam(params, lr: float, betas=(0.9, 0.999)) -> torch.optim.Adam:
    """The seed's optimizer (Adam, default eps; the seed's default betas unless given) over `params`; the
    fused kernel where torch has one for the device (one pass over the weights instead of ~10), else
    the default implementation."""
    params = list(params)
    if params and _fused_adam_works(params[0]):
        return torch.optim.Adam(params, lr=lr, betas=tuple(betas), fused=True)
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas))


def _fused_adam_works(param: torch.Tensor) -> bool:
    """Whether one fused Adam step runs on a 1-element tensor like `param` (recent torch checks fused
    support at the first step(), not at construction; MPS and "meta" may have no kernel)."""
    try:
        probe = torch.zeros(1, dtype=param.dtype, device=param.device, requires_grad=True)
        probe.grad = torch.zeros_like(probe)
        torch.optim.Adam([probe], lr=1e-3, fused=True).step()
        return True
    except (RuntimeError, TypeError, ValueError, NotImplementedError):  # no fused Adam for this device / torch
        return False


@dataclass
class StackedTraining:
    """What `train_stacked` returns. histories: one DataFrame per SAE (HISTORY_COLUMNS, values on that
    step's batch); seconds: the loop's wall time; steps_done / steps_planned; interrupted: True when
    a KeyboardInterrupt ended it early (the SAEs hold the weights after `steps_done` steps)."""
    histories: list
    seconds: float
    n_tokens: int
    steps_done: int
    steps_planned: int
    interrupted: bool = False


class _Stack:
    """k tied SAEs' parameters stacked on one device: W [k, n_features, d_model], b_enc [k, n_features],
    b_dec [k, d_model]; one Adam over the three."""

    def __init__(self, saes: list[TiedSAE], coefs, config: TrainConfig, device):
        with torch.no_grad():
            self.W = torch.stack([s.encoder.weight for s in saes]).to(device)
            self.b_enc = torch.stack([s.encoder.bias for s in saes]).to(device)
            self.b_dec = torch.stack([s.decoder_bias for s in saes]).to(device)
        self.saes, self.coefs = saes, [float(c) for c in coefs]
        self.coef_t = torch.tensor(self.coefs, dtype=self.W.dtype, device=device)       # [k]
        self.optimizer = adam([self.W, self.b_enc, self.b_dec], config.lr, config.betas)
        self.lr, self.scales = config.lr, [s.input_scale for s in saes]  # each SAE trains on rows / its scale
        self._sparsity_grads: dict[int, torch.Tensor] = {}
        self.dense = DensePenalty(config)
        self._all_finite = torch.ones((), dtype=torch.bool, device=device)
        self._n_finite = torch.zeros((), dtype=torch.int64, device=device)  # leading steps with finite gradients

    def sparsity_grad(self, rows: int) -> torch.Tensor:
        """[k, 1, 1]: coef / (rows * n_features), in float64 first, as Python computes it for one SAE."""
        if rows not in self._sparsity_grads:
            n_features = self.W.shape[1]
            self._sparsity_grads[rows] = torch.tensor([c / (rows * n_features) for c in self.coefs],
                                                      dtype=self.W.dtype, device=self.W.device).view(-1, 1, 1)
        return self._sparsity_grads[rows]

    @torch.no_grad()
    def step(self, x: torch.Tensor, with_loss: bool, lr: float):
        """One Adam step at `lr` on x [k, rows, d_model]; returns [k, 4] (loss, recon, sparsity, l0) when
        with_loss."""
        if lr != self.lr:
            self.lr = lr
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        rows, d_model = x.shape[1], x.shape[2]
        features = torch.baddbmm(self.b_enc.unsqueeze(1), x, self.W.transpose(1, 2)).relu_()   # [k, rows, n_f]
        grad_out = torch.baddbmm(self.b_dec.unsqueeze(1), features, self.W).sub_(x)          # reconstruction - x
        values, recon = None, grad_out.pow(2).mean(dim=(1, 2))     # recon [k]: every step, to name a bad one
        weight = self.dense.weight(features, rows_dim=1)           # [k, 1, n_f] penalty multipliers, or None
        if with_loss:
            sparsity = features.mean(dim=(1, 2))
            penalty = sparsity if weight is None else (features * weight).mean(dim=(1, 2))
            l0 = active(features).sum(dim=-1, dtype=torch.float32).mean(dim=-1)
            values = torch.stack([recon + self.coef_t * penalty, recon, sparsity, l0.to(recon.dtype)], dim=1)
        grad_out.mul_(2.0 / (rows * d_model))                                                # d loss / d recon
        sparsity_grad = self.sparsity_grad(rows) if weight is None else self.sparsity_grad(rows) * weight
        self.W.grad, self.b_enc.grad, self.b_dec.grad, _ = tied_gradients(x, self.W, features, grad_out, sparsity_grad)
        self.optimizer.step()
        for value in (recon, self.W.grad, self.b_enc.grad, self.b_dec.grad):  # on the device: no host sync
            self._all_finite &= torch.isfinite(value).all()
        self._n_finite += self._all_finite
        return values

    def first_bad_step(self) -> int:
        """The first step whose loss was not finite (counted on the device, without waiting on it)."""
        return int(self._n_finite) + 1

    def finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in (self.W, self.b_enc, self.b_dec))

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the stacked weights into the SAEs (their last finite state, when called after a check)."""
        for i, sae in enumerate(self.saes):
            sae.encoder.weight.copy_(self.W[i])
            sae.encoder.bias.copy_(self.b_enc[i])
            sae.decoder_bias.copy_(self.b_dec[i])


def _check_sources_finite(sources: list, names: list[str]) -> None:
    seen = set()
    for source, name in zip(sources, names):
        if id(source) in seen:
            continue
        seen.add(id(source))
        row = find_nonfinite_row(source)
        if row is not None:
            raise ValueError(f"{name}: row {row} contains NaN or inf; training would corrupt the SAE, so it did "
                             f"not start (the SAE is unchanged). Remove or fix the non-finite rows first")


def _batch(sources: list, index: torch.Tensor, scales: list[float], device, dtype) -> torch.Tensor:
    """x [k, rows, d_model] / scales: one gather expanded when every SAE reads the same source at the
    same scale, else stacked."""
    k = len(sources)
    if all(s is sources[0] for s in sources) and len(set(scales)) == 1:
        x = gather_rows(sources[0], index).to(device=device, dtype=dtype, non_blocking=True)
        x = x if scales[0] == 1.0 else x / scales[0]
        return x.expand(k, *x.shape)
    x = torch.stack([gather_rows(s, index) for s in sources]).to(device=device, dtype=dtype)
    if any(scale != 1.0 for scale in scales):
        x = x / torch.tensor(scales, dtype=dtype, device=device).view(-1, 1, 1)
    return x


def _raise_diverged(what: str, step: int, last_good: int, lr: float, histories) -> None:
    """FloatingPointError naming the first non-finite step (`what` became NaN or inf there); the SAEs
    already hold the last finite logged state (`histories` are attached to the error)."""
    error = FloatingPointError(
        f"training diverged: {what} at step {step}; the SAE was restored to its last finite "
        f"state (after step {last_good}). Try a lower lr (e.g. lr={lr / 10:g} instead of {lr:g})")
    error.histories = histories
    raise error


def _warn_if_diverging(histories, first_loss: list[float], coefs, lr: float) -> None:
    for i, h in enumerate(histories):
        if len(h) and math.isfinite(first_loss[i]) and h["loss"].max() > DIVERGENCE_FACTOR * max(first_loss[i], 1e-30):
            worst = h.loc[h["loss"].idxmax()]
            which = f" (sparsity_coef {coefs[i]:g})" if len(histories) > 1 else ""
            warnings.warn(f"training diverged{which}: the loss reached {worst['loss']:.3g} at step {int(worst['step'])}, "
                          f"over {DIVERGENCE_FACTOR:g}x its first value ({first_loss[i]:.3g}); the SAE is finite but "
                          f"probably useless. Try a lower lr (e.g. lr={lr / 10:g} instead of {lr:g})",
                          RuntimeWarning, stacklevel=3)


def train_stacked(saes: list[TiedSAE], sources: list, coefs, config: TrainConfig, trainer: str = "saelab.train_sae",
                  desc: str = "training SAE", names: list[str] | None = None) -> StackedTraining:
    """Train `saes[k]` on `sources[k]` with sparsity coefficient `coefs[k]`, all at once (the one trainer core).

    sources: single-layer Activations or float tensors [n_tokens, d_model] with the same number of
    rows (the same object for a sweep: each batch is gathered once; one per layer for
    `compare_layers`); names: their argument names for messages. The SAEs are updated in place, left
    in eval mode on `config.device`, with the settings in their metadata (`trainer`: who trained it).
    """
    names = names or ["activations"] * len(saes)
    _check_sources_finite(sources, names)
    n = n_rows(sources[0])
    total = config.n_steps(n)
    batches = batch_indices(n, config.batch_size, config.seed, config.epochs, config.steps)
    dev = resolve_device(config.device)
    dtypes = [sae.encoder.weight.dtype for sae in saes]
    for sae, dtype in zip(saes, dtypes):   # $SAELAB_PRECISION=float64: initialised and trained in float64
        sae.to(device=dev, dtype=working_dtype(dtype, dev)).train()
    start_from_rows(saes, sources, config)
    stack = _Stack(saes, coefs, config, dev)
    records: list[list] = [[] for _ in saes]
    first_loss, done, last_good, n_tokens, interrupted = None, 0, 0, 0, False
    bar = progress_bar(total=total, progress=config.progress, desc=desc, unit="step")
    start = time.perf_counter()
    try:
        for step, index in enumerate(batches, 1):
            x = _batch(sources, index, stack.scales, dev, stack.W.dtype)
            log = step % config.log_every == 0 or step == total
            values = stack.step(x, with_loss=log or step == 1, lr=config.lr_at(step, total))
            done, n_tokens = step, n_tokens + x.shape[1]
            bar.update(1)
            if values is None:
                continue
            values = values.tolist()
            first_loss = first_loss or [v[0] for v in values]
            bad = [v[0] for v in values if not all(math.isfinite(u) for u in v[:3])]
            if bad:
                _raise_diverged(f"the loss or a gradient became NaN or inf (logged loss {bad[0]})",
                                stack.first_bad_step(), last_good, config.lr, _histories(records))
            if log:
                for i, v in enumerate(values):
                    records[i].append((step, *v))
                if not stack.finite():   # a finite loss but non-finite weights (e.g. an inf gradient)
                    _raise_diverged("the weights became NaN or inf", stack.first_bad_step(), last_good, config.lr,
                                    _histories(records))
                stack.write_back()
                last_good = step
                bar.set_postfix(recon=f"{values[0][1]:.4g}", l0=f"{values[0][3]:.1f}", refresh=False)
    except KeyboardInterrupt:
        interrupted = True
        if stack.finite():
            stack.write_back()
            last_good = done
        done = last_good
    finally:
        bar.close()
        for sae, dtype in zip(saes, dtypes):
            sae.to(dtype=dtype).eval()
    seconds = time.perf_counter() - start
    histories = _histories(records)
    if first_loss:
        _warn_if_diverging(histories, first_loss, stack.coefs, config.lr)
    _record_settings(saes, sources, stack.coefs, config, trainer, n, done if interrupted else None)
    return StackedTraining(histories, seconds, n_tokens, done, total, interrupted)


def _record_settings(saes, sources, coefs, config: TrainConfig, trainer: str, n: int, interrupted_at) -> None:
    """Each SAE's metadata: who trained it, its coefficient, the config, where its rows came from, and
    `interrupted_at_step` when Ctrl-C stopped it (removed when a later run finishes)."""
    for sae, source, coef in zip(saes, sources, coefs):
        sae.metadata.update(trainer=trainer, sparsity_coef=coef, **config.metadata(n), **source_metadata(source))
        sae.metadata.pop("interrupted_at_step", None)
        if interrupted_at is not None:
            sae.metadata["interrupted_at_step"] = interrupted_at


def _histories(records) -> list[pd.DataFrame]:
    return [pd.DataFrame(r, columns=list(HISTORY_COLUMNS)).astype({"step": "int64"}) for r in records]


@dataclass(repr=False)
class TrainResult(Result):
    """What `train_sae` returns: the trained SAE, its loss history and its final metrics.

    table (= history): step, loss, recon, sparsity, l0, one row every `log_every` steps (values on
    that step's batch, divided by sae.input_scale when training normalised the rows). seconds: the training loop only (not the final evaluation). interrupted:
    True when Ctrl-C ended training early (the SAE holds the weights after `steps_done` steps).
    """
    sae: TiedSAE
    history: pd.DataFrame
    train_metrics: EvalResult | None
    eval_metrics: EvalResult | None
    seconds: float
    tokens_per_second: float
    config: TrainConfig | None = None
    steps_done: int = 0
    interrupted: bool = False

    @property
    def table(self) -> pd.DataFrame:
        return self.history

    def summary(self) -> str:
        h = self.history
        tail = "" if not len(h) else f", final batch recon {fmt(h['recon'].iloc[-1])}, L0 {fmt(h['l0'].iloc[-1])}"
        where = "" if self.eval_metrics is None else f"; held-out FVU {fmt(self.eval_metrics.fvu)}"
        stop = " (INTERRUPTED)" if self.interrupted else ""
        return (f"TrainResult: {self.steps_done} steps{stop} in {self.seconds:.1f}s, "
                f"{self.tokens_per_second:,.0f} tokens/s{tail}{where}")

    def plot(self):
        """A matplotlib Figure: reconstruction loss and L0 against the training step."""
        import matplotlib.pyplot as plt

        fig, (ax_recon, ax_l0) = plt.subplots(1, 2, figsize=(10, 3.6))
        h = self.history
        ax_recon.plot(h["step"], h["recon"], label="reconstruction (MSE)")
        ax_recon.plot(h["step"], h["loss"], label="total loss", alpha=0.6)
        normalised = " (on normalised rows)" if getattr(self.sae, "input_scale", 1.0) != 1.0 else ""
        ax_recon.set(xlabel="training step", ylabel="loss" + normalised, title="Loss")
        if (h[["recon", "loss"]] > 0).all().all():
            ax_recon.set_yscale("log")
        ax_recon.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, fontsize=9)  # below the data
        ax_l0.plot(h["step"], h["l0"], color="tab:green")
        ax_l0.set(xlabel="training step", ylabel="L0 (active features per token)", title="Sparsity")
        fig.tight_layout()
        plt.close(fig)  # returned for display, not left open in pyplot's state
        return fig


def train_sae(sae: TiedSAE, activations, sparsity_coef: float = 1e-3, config: TrainConfig | None = None,
              eval_activations=None, **overrides) -> TrainResult:
    """Train `sae` in place with Adam on the seed's loss (MSE + sparsity_coef * mean |features|).

    activations: a single-layer `Activations` or a float tensor [n_tokens, d_model], read batch by
    batch in the order of `batch_indices(n_tokens, batch_size, seed, epochs, steps)`.
    config: a `TrainConfig` (e.g. `TrainConfig.lab()`, the lab's recipe); overrides: any of its fields
    as keywords (lr=, batch_size=, epochs=, steps=, seed=, device=, progress=, log_every=, betas=,
    lr_decay=, normalize=, init_norm=, init_density=), e.g. `train_sae(sae, acts, 1e-3, steps=500)`.
    eval_activations: optional held-out rows for `eval_metrics` (`train_metrics` is always computed).
    Same SAE initialisation and seed, same numbers. Faults (see the module docstring): non-finite
    rows raise ValueError before any step; a NaN/inf loss raises FloatingPointError naming the step
    with the SAE restored to its last finite logged state; Ctrl-C returns a result with
    `interrupted=True`. The settings are recorded in `sae.metadata` (saved with `sae.save`).
    """
    if not isinstance(sae, TiedSAE):
        raise ValueError(f"sae: expected a saelab TiedSAE, got {describe(sae)}")
    check_rows("activations", activations, sae.d_model)
    if eval_activations is not None:
        check_rows("eval_activations", eval_activations, sae.d_model)
    coef = check_float("sparsity_coef", sparsity_coef, minimum=0.0)
    config = TrainConfig.build(config, **overrides)
    if eval_activations is not None:
        _check_sources_finite([eval_activations], ["eval_activations"])  # before training, not after it
    run = train_stacked([sae], [activations], [coef], config)
    if run.interrupted:
        warnings.warn(f"training interrupted after step {run.steps_done} of {run.steps_planned}: the SAE holds "
                      f"those weights (metadata['interrupted_at_step'] = {run.steps_done})", RuntimeWarning,
                      stacklevel=2)
    return TrainResult(
        sae=sae, history=run.histories[0], train_metrics=evaluate_unchecked(sae, activations),
        eval_metrics=None if eval_activations is None else evaluate_unchecked(sae, eval_activations),
        seconds=run.seconds, tokens_per_second=run.n_tokens / run.seconds if run.seconds > 0 else math.inf,
        config=config, steps_done=run.steps_done, interrupted=run.interrupted)
