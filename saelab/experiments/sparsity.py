"""Exercise 1, the sparsity sweep: one tied SAE per sparsity coefficient, all trained at once.

The coefficients' SAEs train together as one stacked model (weights `[n_coefs, n_features,
d_model]`, batched matmuls) on the same mini-batches that `train_sae` would use. The per-coefficient
losses are summed, so each SAE gets exactly its own gradient and Adam (elementwise) takes exactly the
steps it would take alone: the results equal N separate `train_sae` runs to float precision, in a
fraction of the time. `_train_stacked` also serves `compare_layers` (one SAE per layer).
"""
from __future__ import annotations

import functools
import html
import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from saelab.activations import Activations, d_model_of, gather_rows, n_rows
from saelab.metrics import EvalResult, ce_loss_recovered, evaluate
from saelab.models import resolve_device
from saelab.sae import TiedSAE
from saelab.train import HISTORY_COLUMNS, adam, batch_indices, n_steps, raise_diverged, training_metadata
from saelab.utils import check_float, check_int, describe, progress_bar

#: The seed notebook's sweep: coefficients, epochs over its rows, Adam lr, batch size, layer 6 of 12.
SEED_COEFS = (1e-2, 1e-3, 1e-4)
SEED_EPOCHS = 50
SEED_LR = 1e-3
SEED_BATCH_SIZE = 64
SEED_FEATURES_PER_DIM = 4  # n_features = 4 * d_model


class TableReport:
    """Shared notebook display of the experiments' results: a one-line `summary()` above `.table`."""

    table: pd.DataFrame

    def summary(self) -> str:  # overridden by each result
        return type(self).__name__

    def __repr__(self) -> str:
        return f"{self.summary()}\n{self.table.to_string(index=False)}" if len(self.table) else self.summary()

    def _repr_html_(self) -> str:
        body = self.table.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0) if len(self.table) else ""
        return f"<p><b>{html.escape(self.summary())}</b></p>{body}"


def check_activations_rows(name: str, activations, d_model: int | None = None) -> int:
    """n_rows(activations) after checking its width is d_model (when given) and it has rows."""
    if d_model is not None and d_model_of(activations) != d_model:
        raise ValueError(f"{name}: expected rows of width d_model = {d_model} (the SAE's), "
                         f"got {d_model_of(activations)}")
    n = n_rows(activations)
    if n == 0:
        raise ValueError(f"{name}: expected at least one row, got 0 rows")
    return n


def check_coefs(coefs) -> tuple[float, ...]:
    """The coefficients as a tuple of distinct positive finite floats (a single number is one
    coefficient), else ValueError."""
    if isinstance(coefs, (int, float)) and not isinstance(coefs, bool):
        coefs = (coefs,)
    if not isinstance(coefs, (list, tuple)) or not coefs:
        raise ValueError(f"coefs: expected a non-empty list of positive sparsity coefficients such as "
                         f"(1e-2, 1e-3, 1e-4), got {describe(coefs)}")
    out = tuple(check_float(f"coefs[{i}]", c, minimum=0.0, strict=True) for i, c in enumerate(coefs))
    if len(set(out)) != len(out):
        raise ValueError(f"coefs: expected distinct coefficients, got {list(coefs)}")
    return out


@dataclass(repr=False)
class SweepResult(TableReport):
    """What `sparsity_sweep` returns.

    table: one row per coefficient: coef, mse, explained_variance, fvu, l0, l1, dead_fraction,
        dense_fraction (and ce_loss_recovered, ce_loss_spliced, ce_loss_clean when a model and texts
        were given), evaluated_on ("held-out" or "training data"), n_tokens.
    saes: coef -> trained TiedSAE (settings in `sae.metadata`); histories: coef -> DataFrame
        (step, loss, recon, sparsity, l0 on that step's batch); metrics: coef -> EvalResult.
    """
    table: pd.DataFrame
    saes: dict[float, TiedSAE]
    histories: dict[float, pd.DataFrame]
    metrics: dict[float, EvalResult]
    evaluated_on: str
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        s = self.settings
        where = f"layer {s['layer']} of {s['model_name']}, " if s.get("layer") is not None else ""
        t = self.table.sort_values("coef")
        trend = (f"; L0 {t['l0'].iloc[-1]:.3g} at coef {t['coef'].iloc[-1]:g} vs {t['l0'].iloc[0]:.3g} at "
                 f"{t['coef'].iloc[0]:g}" if len(t) > 1 else "")
        return (f"Sparsity sweep: {len(self.table)} SAEs ({where}{s.get('n_features')} features, "
                f"{s.get('steps')} steps of {s.get('batch_size')} on {s.get('n_train_tokens'):,} tokens, "
                f"{self.seconds:.1f}s), evaluated on {self.evaluated_on} ({int(self.table['n_tokens'].iloc[0]):,} "
                f"tokens){trend}")

    def plot(self):
        """The trade-off: L0 (x) against FVU = 1 - explained variance (y), one point per coefficient,
        log-scaled where the values span more than a factor of 10; with CE loss recovered against L0
        beside it when that was measured. Returns a matplotlib Figure."""
        import matplotlib.pyplot as plt

        t = self.table.sort_values("coef")
        has_ce = "ce_loss_recovered" in t
        fig, axes = plt.subplots(1, 2 if has_ce else 1, figsize=(11 if has_ce else 6, 4.4), squeeze=False)
        panels = [("fvu", "FVU = 1 − explained variance\n(lower = better reconstruction)",
                   "Sparsity vs reconstruction")]
        if has_ce:
            panels.append(("ce_loss_recovered", "CE loss recovered\n(higher = better)", "Sparsity vs model loss"))
        for ax, (column, ylabel, title) in zip(axes[0], panels):
            ax.plot(t["l0"], t[column], "-", color="0.7", zorder=1)
            ax.scatter(t["l0"], t[column], c=range(len(t)), cmap="viridis", s=60, zorder=2,
                       edgecolors="black", linewidths=0.5)
            for members in _coincident(t["l0"].to_numpy(), t[column].to_numpy()):
                first = t.iloc[members[0]]
                label = ", ".join(f"{t['coef'].iloc[i]:g}" for i in members)
                ax.annotate(f"coef={label}", (first["l0"], first[column]), textcoords="offset points",
                            xytext=(7, 6), fontsize=9)
            _log_if_wide(ax.set_xscale, t["l0"])
            if column == "fvu":
                _log_if_wide(ax.set_yscale, t[column])
            ax.set(xlabel="L0 = active features per token (lower = sparser)", ylabel=ylabel, title=title)
            ax.grid(True, which="major", alpha=0.3)
            ax.margins(0.15)
        fig.suptitle(f"Evaluated on {self.evaluated_on}", fontsize=9, color="0.35", x=0.99, ha="right")
        fig.tight_layout()
        plt.close(fig)
        return fig

    def plot_history(self):
        """Training curves: reconstruction loss and L0 per step, one line per coefficient."""
        import matplotlib.pyplot as plt

        fig, (ax_recon, ax_l0) = plt.subplots(1, 2, figsize=(11, 3.8))
        for coef, h in sorted(self.histories.items()):
            ax_recon.plot(h["step"], h["recon"], label=f"coef={coef:g}")
            ax_l0.plot(h["step"], h["l0"], label=f"coef={coef:g}")
        ax_recon.set(xlabel="training step", ylabel="reconstruction MSE (batch)", title="Reconstruction", yscale="log")
        ax_l0.set(xlabel="training step", ylabel="L0 (batch)", title="Active features per token")
        ax_l0.legend()
        fig.tight_layout()
        plt.close(fig)
        return fig


def _coincident(x, y, tol: float = 0.02) -> list[list[int]]:
    """Consecutive points (in the table's order) that would overlap on the plot, grouped so that they
    share one label: closer than `tol` of the data's span on both axes."""
    def spread(v):
        finite = v[np.isfinite(v)]
        return (finite.max() - finite.min()) if len(finite) and finite.max() > finite.min() else 1.0
    sx, sy = spread(x), spread(y)
    groups: list[list[int]] = []
    for i in range(len(x)):
        j = groups[-1][-1] if groups else None
        if j is not None and abs(x[i] - x[j]) <= tol * sx and abs(y[i] - y[j]) <= tol * sy:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _log_if_wide(set_scale, values) -> None:
    values = [v for v in values if math.isfinite(v)]
    if values and min(values) > 0 and max(values) / min(values) > 10:
        set_scale("log")


def sparsity_sweep(activations, coefs=SEED_COEFS, eval_activations=None, n_features: int | None = None,
                   epochs: int = SEED_EPOCHS, steps: int | None = None, lr: float = SEED_LR,
                   batch_size: int = SEED_BATCH_SIZE, model=None, texts=None, layer: int | None = None,
                   seed: int = 0, progress: bool = True, device=None) -> SweepResult:
    """Train one tied SAE per sparsity coefficient and compare them (the seed's exercise 1).

    activations: a single-layer `Activations` or a float tensor [n_tokens, d_model] to train on.
    Defaults are the seed's: coefs (1e-2, 1e-3, 1e-4), n_features = 4 * d_model, 50 epochs over the
    rows, Adam with lr 1e-3, batches of 64, every SAE initialised as `TiedSAE(d_model, n_features,
    seed=seed)`. With `steps`, exactly that many batches instead of `epochs` (a quicker run).
    eval_activations: held-out rows to measure on. Without them the SAEs are measured on their own
        training rows, as the seed does (`result.evaluated_on` says which).
    model, texts (, layer): also measure CE loss recovered (`metrics.ce_loss_recovered`) on those
        texts; `layer` defaults to the activations' layer.
    All SAEs train together in one stacked model on the same batches (`train.batch_indices`): the
    numbers equal separate `train_sae` runs with the same seed, and it is several times faster.
    Returns a `SweepResult` (.table, .plot(), .plot_history(), .saes, .histories).
    """
    coefs = check_coefs(coefs)
    d_model = d_model_of(activations)
    n = check_activations_rows("activations", activations)
    n_features = check_int("n_features", n_features, minimum=1, allow_none=True) or SEED_FEATURES_PER_DIM * d_model
    if eval_activations is not None:
        check_activations_rows("eval_activations", eval_activations, d_model)
    if (model is None) != (texts is None):
        given = {name: "None" if value is None else "given" for name, value in (("model", model), ("texts", texts))}
        raise ValueError("model, texts: CE loss recovered needs both the model and the texts to run it on; "
                         f"got model={given['model']}, texts={given['texts']}")
    if model is not None:
        layer = _ce_layer(model, activations, layer)
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"texts: expected a non-empty list of strings for CE loss recovered, "
                             f"got {describe(texts)}")
    check_int("seed", seed, minimum=0)

    saes = [TiedSAE(d_model, n_features, seed=seed) for _ in coefs]
    histories, seconds = _train_stacked(saes, [activations] * len(coefs), coefs, lr=lr, batch_size=batch_size,
                                        epochs=epochs, steps=steps, seed=seed, device=device,
                                        progress=progress, desc="sparsity sweep")
    for sae in saes:
        sae.metadata["trainer"] = "saelab.sparsity_sweep (stacked)"
    evaluated_on = "training data" if eval_activations is None else "held-out"
    target = activations if eval_activations is None else eval_activations
    rows, metrics = [], {}
    bar = progress_bar(total=len(coefs), progress=progress, desc="evaluating", unit="SAE")
    try:
        for coef, sae in zip(coefs, saes):
            metrics[coef] = evaluate(sae, target)
            row = {"coef": coef, **metrics[coef].as_dict()}
            if model is not None:
                ce = ce_loss_recovered(model, sae, texts, layer, hook=_hook_of(activations))
                row.update(ce_loss_recovered=ce.score, ce_loss_spliced=ce.spliced, ce_loss_clean=ce.clean)
            row["evaluated_on"] = evaluated_on
            rows.append(row)
            bar.update(1)
    finally:
        bar.close()
    table = pd.DataFrame(rows)
    table = table[[c for c in table.columns if c != "n_tokens"] + ["n_tokens"]]
    first = saes[0].metadata
    settings = {"n_features": n_features, "d_model": d_model, "lr": first["lr"], "batch_size": batch_size,
                "epochs": first["epochs"], "steps": first["steps"], "seed": seed, "n_train_tokens": n,
                "layer": first.get("layer"), "model_name": first.get("model_name")}
    return SweepResult(table=table, saes=dict(zip(coefs, saes)), histories=dict(zip(coefs, histories)),
                       metrics=metrics, evaluated_on=evaluated_on, settings=settings, seconds=seconds)


def _hook_of(activations) -> str:
    return activations.hook if isinstance(activations, Activations) else "resid_post"


def _ce_layer(model, activations, layer) -> int:
    n_layers = model.cfg.n_layers
    if layer is None:
        if not isinstance(activations, Activations):
            raise ValueError("layer: CE loss recovered needs the layer the activations came from; pass layer=... "
                             "(activations given as a tensor do not record it)")
        layer = activations.layer
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise ValueError(f"layer: expected an int in [0, {n_layers - 1}] (the model has {n_layers} layers), "
                         f"got {describe(layer)}")
    if isinstance(activations, Activations) and activations.layer != layer:
        raise ValueError(f"layer: the activations come from layer {activations.layer}, got layer={layer}")
    if model.cfg.d_model != d_model_of(activations):
        raise ValueError(f"model: its d_model ({model.cfg.d_model}) differs from the activations' width "
                         f"({d_model_of(activations)}); pass the model the activations came from")
    return layer


def _train_stacked(saes: list[TiedSAE], sources: list, coefs, lr: float, batch_size: int, epochs: int,
                   steps: int | None, seed: int, device, progress: bool, desc: str,
                   log_every: int = 10) -> tuple[list[pd.DataFrame], float]:
    """Train `saes[k]` on `sources[k]` with `coefs[k]` in one stacked model, as `train_sae` would alone.

    sources: activations with the same number of rows (the same object for a sweep: each batch is
    gathered once; one per layer for `compare_layers`). The SAEs are updated in place, left in eval
    mode on `device`, with `train_sae`'s metadata. Returns (history DataFrame per SAE, seconds).
    """
    lr = check_float("lr", lr, minimum=0.0, strict=True)
    n = n_rows(sources[0])
    shared = all(s is sources[0] for s in sources)
    batches = batch_indices(n, batch_size, seed, epochs, steps)  # validates batch_size, epochs, steps, seed
    total = n_steps(n, batch_size, epochs, steps)
    dev = resolve_device(device)
    with torch.no_grad():
        W = torch.stack([s.encoder.weight for s in saes]).to(dev)       # [k, n_features, d_model]
        b_enc = torch.stack([s.encoder.bias for s in saes]).to(dev)     # [k, n_features]
        b_dec = torch.stack([s.decoder_bias for s in saes]).to(dev)     # [k, d_model]
    coef_t = torch.tensor(coefs, dtype=W.dtype, device=dev)             # [k]
    optimizer = adam([W, b_enc, b_dec], lr)
    n_features = W.shape[1]

    @functools.lru_cache(maxsize=None)
    def sparsity_grads(rows: int) -> torch.Tensor:  # in float64 first, as Python computes it for one SAE
        return torch.tensor([c / (rows * n_features) for c in coefs], dtype=W.dtype, device=dev).view(-1, 1, 1)

    records: list[list] = [[] for _ in saes]
    all_finite = torch.ones((), dtype=torch.bool, device=dev)
    n_finite = torch.zeros((), dtype=torch.int64, device=dev)
    bar = progress_bar(total=total, progress=progress, desc=desc, unit="step")
    start = time.perf_counter()
    try:
        with torch.no_grad():
            for step, index in enumerate(batches, 1):
                if shared:
                    x = gather_rows(sources[0], index).to(device=dev, dtype=W.dtype, non_blocking=True)
                    x = x.expand(len(saes), *x.shape)                            # [k, rows, d_model]
                else:
                    x = torch.stack([gather_rows(s, index) for s in sources]).to(device=dev, dtype=W.dtype)
                log = step % log_every == 0 or step == total
                terms = _stacked_step(x, W, b_enc, b_dec, sparsity_grads, with_loss=log)
                optimizer.step()
                all_finite &= torch.isfinite(b_dec.grad).all()  # a NaN/inf loss makes every gradient NaN
                n_finite += all_finite
                bar.update(1)
                if log:
                    recon, sparsity, features = terms
                    l0 = (features > 0).sum(dim=-1, dtype=torch.float32).mean(dim=-1)  # [k]
                    values = torch.stack([recon + coef_t * sparsity, recon, sparsity, l0], dim=1).tolist()
                    for i, v in enumerate(values):
                        if not all(math.isfinite(u) for u in v[:3]):
                            raise_diverged(int(n_finite) + 1, lr, v[0])
                        records[i].append((step, *v))
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        for i, (sae, source) in enumerate(zip(saes, sources)):
            sae.to(dev)
            sae.encoder.weight.copy_(W[i])
            sae.encoder.bias.copy_(b_enc[i])
            sae.decoder_bias.copy_(b_dec[i])
            sae.eval()
            sae.metadata.update(training_metadata(source, float(coefs[i]), lr, batch_size, epochs, steps, seed,
                                                   total, n))
    histories = [pd.DataFrame(r, columns=list(HISTORY_COLUMNS)).astype({"step": "int64"}) for r in records]
    return histories, seconds


def _stacked_step(x, W, b_enc, b_dec, sparsity_grads, with_loss: bool):
    """One training step's gradients for k SAEs at once, written into W.grad, b_enc.grad, b_dec.grad.

    x [k, rows, d_model] (an expanded view when shared), W [k, n_features, d_model], b_enc [k, n_features],
    b_dec [k, d_model]. Per SAE the seed's loss, f = relu(x W^T + b_enc),
    loss = mean((f W + b_dec - x)^2) + coef * mean(f), differentiated by hand exactly as `TiedSAE`'s
    `_TiedLoss` does (the tied weight's decoder and encoder gradients summed in one batched GEMM).
    sparsity_grads(rows) -> [k, 1, 1]: coef / (rows * n_features), the sparsity term's gradient per
    feature activation. Returns (recon [k], sparsity [k], features [k, rows, n_features]) when
    with_loss, else None: only the history needs the loss, so most steps skip it.
    """
    rows, d_model = x.shape[1], x.shape[2]
    features = torch.baddbmm(b_enc.unsqueeze(1), x, W.transpose(1, 2)).relu_()      # [k, rows, n_features]
    grad_out = torch.baddbmm(b_dec.unsqueeze(1), features, W).sub_(x)               # reconstruction - x
    terms = (grad_out.pow(2).mean(dim=(1, 2)), features.mean(dim=(1, 2)), features) if with_loss else None
    grad_out.mul_(2.0 / (rows * d_model))                                           # d loss / d reconstruction
    grad_features = torch.bmm(grad_out, W.transpose(1, 2)).add_(sparsity_grads(rows))
    grad_features = torch.ops.aten.threshold_backward(grad_features, features, 0)   # through the ReLU
    W.grad = torch.bmm(features.transpose(1, 2), grad_out).baddbmm_(grad_features.transpose(1, 2), x)
    b_enc.grad = grad_features.sum(dim=1)
    b_dec.grad = grad_out.sum(dim=1)
    return terms
