"""The tie, measured: a trained tied SAE beside its untied twin at the same L0 (the lab's optional section).

`untied_twin(sae, activations, eval_activations, config)` trains SAELens's standard (untied) SAE
(`saelab.sae.untied`) from the tied SAE's own starting point (`TiedSAE(d, n, seed=config.seed)` and
`start_from_rows`, as `sparsity_sweep` starts it), on the same rows, in the same batches
(`batch_indices`), for the same number of steps, with the same Adam, lr schedule and dense-feature
penalty (`config`, e.g. `TrainConfig.lab()`), and the same loss, MSE + coef * mean(features), with two
differences that untying requires:

- each decoder row is held at norm 1 (renormalised after every step): untied, f_i -> c f_i with
  d_i -> d_i / c leaves the reconstruction unchanged and would let the SAE shrink every activation to
  dodge the penalty; in the tied SAE the encoder row is the decoder row, so no such free scale exists;
- the coefficient steers the L0: after every step, log(coef) += L0_GAIN * (batch L0 / target - 1),
  starting from the tied SAE's coefficient, so that the twin ends at the tied SAE's L0 and the two
  compare at the same sparsity. The target is the tied SAE's L0 on TARGET_SAMPLE training rows (seeded
  by config.seed): the batches are training rows too, so the two L0s then match on held-out rows as well.

One SAE, no stacked sweep: one training costs about one tied training.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import pandas as pd
import torch

from saelab.activations.rows import gather_rows, n_rows
from saelab.metrics import DENSE_THRESHOLD, EvalResult, evaluate_unchecked
from saelab.precision import working_dtype
from saelab.results import Result, fmt, pct
from saelab.sae.saelens import SAELensSAE
from saelab.sae.tied import TiedSAE
from saelab.sae.untied import fold_input_scale, untied_start
from saelab.training.batches import batch_indices
from saelab.training.config import TrainConfig
from saelab.training.initialise import start_from_rows
from saelab.training.trainer import DensePenalty, adam
from saelab.utils import active, describe, progress_bar
from saelab.validate import check_bool, check_float, check_rows

#: How fast the coefficient follows the L0: log(coef) moves by this times the batch's relative L0 error per step.
L0_GAIN = 0.1
#: Training rows (a seeded sample) on which the tied SAE's L0, the twin's target, is measured.
TARGET_SAMPLE = 16384
HISTORY_COLUMNS = ("step", "coef", "l0", "recon")


@dataclass(repr=False)
class TieComparison(Result):
    """What `untied_twin` returns. tied / untied: the two SAEs (untied: SAELens's standard SAE, as a
    SAELensSAE); tied_metrics / untied_metrics: `evaluate` on the held-out rows; history: the twin's
    coefficient and batch L0 every `log_every` steps; target_l0: the L0 it was steered to; seconds:
    its training loop."""
    tied: TiedSAE
    untied: SAELensSAE
    tied_metrics: EvalResult
    untied_metrics: EvalResult
    history: pd.DataFrame
    target_l0: float
    seconds: float

    caption = ("dense: active on more than 10% of the held-out tokens; enc-dec cosine: the median over alive "
               "features of the cosine between a feature's encoder and decoder directions (1 when tied).")

    @property
    def table(self) -> pd.DataFrame:
        rows = []
        for name, sae, m in (("tied (yours)", self.tied, self.tied_metrics),
                             ("untied twin", self.untied, self.untied_metrics)):
            rows.append({"sae": name, "l0": m.l0, "fvu": m.fvu, "dense_fraction": m.dense_fraction,
                         "n_dense": int((m.feature_density > DENSE_THRESHOLD).sum()), "dead_fraction": m.dead_fraction,
                         "coef": self.history["coef"].iloc[-1] if sae is self.untied else self.tied.metadata.get(
                             "sparsity_coef", math.nan),
                         "enc_dec_cosine": _encoder_decoder_cosine(sae, m.feature_density)})
        return pd.DataFrame(rows)

    def summary(self) -> str:
        t, u = self.tied_metrics, self.untied_metrics
        return (f"TieComparison: at L0 {fmt(t.l0)} (tied) and {fmt(u.l0)} (untied), FVU {fmt(t.fvu)} vs "
                f"{fmt(u.fvu)}, dense features {pct(t.dense_fraction)} vs {pct(u.dense_fraction)}")

    def plot(self):
        """A matplotlib Figure: how many features fire on more than x of the held-out tokens, tied vs
        untied (log scales; at the dotted line x = 10%, the dense features), and the twin's coefficient
        and batch L0 during training."""
        import matplotlib.pyplot as plt

        fig, (ax_d, ax_c) = plt.subplots(1, 2, figsize=(11, 3.8))
        grid = torch.logspace(-3, 0, 200)
        for name, m, color in (("tied (yours)", self.tied_metrics, "tab:blue"),
                               ("untied twin", self.untied_metrics, "tab:orange")):
            above = (m.feature_density.unsqueeze(0) > grid.unsqueeze(1)).sum(dim=1)       # [200] features
            ax_d.step(grid.numpy(), above.numpy(), where="post", color=color, linewidth=2,
                      label=f"{name}: {int((m.feature_density > DENSE_THRESHOLD).sum())} dense")
        ax_d.axvline(DENSE_THRESHOLD, color="crimson", linestyle=":", label="dense: > 10% of tokens")
        ax_d.set(xscale="log", yscale="log", xlabel="density x (fraction of held-out tokens)",
                 ylabel="features firing on more than x", title="How many features fire how often")
        ax_d.legend(fontsize=9)
        h = self.history
        ax_c.plot(h["step"], h["l0"], color="tab:orange", alpha=0.7, label="twin's batch L0")
        ax_c.axhline(self.target_l0, color="tab:blue", linestyle="--", label=f"target L0 {fmt(self.target_l0)}")
        ax_c.set(xlabel="training step", ylabel="L0", title="The twin's L0, steered by its coefficient")
        ax_coef = ax_c.twinx()
        ax_coef.plot(h["step"], h["coef"], color="0.3", label="coefficient (right axis)")
        ax_coef.set(ylabel="sparsity coefficient")
        lines = ax_c.get_lines() + ax_coef.get_lines()
        ax_c.legend(lines, [line.get_label() for line in lines], loc="upper right", fontsize=9)
        fig.tight_layout()
        plt.close(fig)
        return fig


@torch.no_grad()
def _encoder_decoder_cosine(sae, density: torch.Tensor) -> float:
    """The median over alive features (density > 0) of cos(encoder direction, decoder direction): 1 for a
    tied SAE (its encoder row is its decoder row)."""
    if isinstance(sae, TiedSAE):
        return 1.0
    enc, dec = sae.sae.W_enc.T.float(), sae.W_dec.float()                     # [d_sae, d_in] each
    cos = torch.nn.functional.cosine_similarity(enc, dec, dim=1)
    alive = density.to(cos.device) > 0
    return float(cos[alive].median()) if bool(alive.any()) else math.nan


def _train(twin, activations, scale: float, coef: float, target: float, config: TrainConfig, device):
    """Train `twin` (SAELens standard SAE, on rows / scale) in place; returns (history, seconds)."""
    n = n_rows(activations)
    total = config.n_steps(n)
    params = [twin.W_enc, twin.b_enc, twin.W_dec, twin.b_dec]
    optimizer = adam(params, config.lr, config.betas)
    log_coef = torch.tensor(math.log(coef), device=device)
    dense, records = DensePenalty(config), []
    bar = progress_bar(total=total, progress=config.progress, desc="training the untied twin", unit="step")
    start = time.perf_counter()
    for step, index in enumerate(batch_indices(n, config.batch_size, config.seed, config.epochs, config.steps), 1):
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(step, total)
        x = gather_rows(activations, index).to(device=device, dtype=twin.W_enc.dtype) / scale
        features = twin.encode(x)                                          # SAELens's math, [rows, n_features]
        recon = (twin.decode(features) - x).pow(2).mean()
        weight = dense.weight(features.detach(), rows_dim=0)
        penalty = features.mean() if weight is None else (features * weight).mean()
        optimizer.zero_grad(set_to_none=True)
        (recon + log_coef.exp() * penalty).backward()
        optimizer.step()
        with torch.no_grad():
            twin.W_dec.div_(twin.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
            l0 = active(features).sum(dim=-1, dtype=torch.float32).mean()
            log_coef += L0_GAIN * (l0 / target - 1.0)
        if step % config.log_every == 0 or step == total:
            records.append((step, log_coef.exp().item(), l0.item(), recon.item()))
        bar.update(1)
    bar.close()
    return pd.DataFrame(records, columns=list(HISTORY_COLUMNS)), time.perf_counter() - start


def untied_twin(sae: TiedSAE, activations, eval_activations, config: TrainConfig | None = None,
                coef: float | None = None, progress: bool | None = None) -> TieComparison:
    """The tied SAE `sae` beside an untied SAE trained on the same rows, batches, steps and recipe, at its L0.

    sae: a trained TiedSAE; activations: the rows it was trained on (Activations or [n, d_model]);
    eval_activations: held-out rows (both SAEs are measured there; the twin's L0 is steered to `sae`'s
    L0 on training rows, see the module docstring); config: the TrainConfig `sae` was trained with
    (default `TrainConfig.lab()`); coef: the twin's starting coefficient (default:
    sae.metadata["sparsity_coef"]); progress: a tqdm bar (None: config.progress). Needs sae_lens (the
    twin is SAELens's standard SAE). The rows are trusted to be finite: `sae` was trained on them.
    """
    if not isinstance(sae, TiedSAE):
        raise ValueError(f"sae: expected a trained saelab TiedSAE, got {describe(sae)}")
    check_rows("activations", activations, sae.d_model)
    check_rows("eval_activations", eval_activations, sae.d_model)
    if config is not None and not isinstance(config, TrainConfig):
        raise ValueError(f"config: expected a saelab.TrainConfig or None, got {describe(config)}")
    config = config or TrainConfig.lab()
    if progress is not None:
        config = TrainConfig.build(config, progress=check_bool("progress", progress))
    coef = sae.metadata.get("sparsity_coef") if coef is None else coef
    if coef is None:
        raise ValueError("coef: expected a starting coefficient; sae.metadata has no 'sparsity_coef' (an SAE "
                         "trained by saelab records it)")
    coef = check_float("coef", coef, minimum=0.0, strict=True)
    device = sae.encoder.weight.device
    target = _training_l0(sae, activations, config.seed)
    if target <= 0:
        raise ValueError("sae: no feature fires on the training rows (L0 0), so there is no L0 to match")
    own = sae.encoder.weight.dtype   # trained in working_dtype (float64 under $SAELAB_PRECISION), as the trainer does
    start = TiedSAE(sae.d_model, sae.n_features, seed=config.seed).to(device=device, dtype=working_dtype(own, device))
    start.metadata.update({k: v for k, v in sae.metadata.items() if k in ("model_name", "hook_name")})
    start_from_rows([start], [activations], TrainConfig.build(config, device=device))
    twin = untied_start(start)
    history, seconds = _train(twin, activations, start.input_scale, coef, target, config, device)
    untied = fold_input_scale(twin.to(dtype=own), start.input_scale)
    return TieComparison(tied=sae, untied=untied, tied_metrics=evaluate_unchecked(sae, eval_activations),
                         untied_metrics=evaluate_unchecked(untied, eval_activations), history=history,
                         target_l0=target, seconds=seconds)


@torch.no_grad()
def _training_l0(sae: TiedSAE, activations, seed: int) -> float:
    """`sae`'s L0 on TARGET_SAMPLE training rows drawn with replacement (seeded)."""
    index = torch.randint(n_rows(activations), (TARGET_SAMPLE,), generator=torch.Generator().manual_seed(seed))
    x = gather_rows(activations, index).to(device=sae.encoder.weight.device, dtype=sae.encoder.weight.dtype)
    return float(active(sae.encode_unchecked(x)).sum(dim=-1, dtype=torch.float32).mean())
