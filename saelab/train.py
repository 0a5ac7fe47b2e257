"""Train a TiedSAE on activation rows: the seed's Adam loop, seeded, logged and checked."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterator

import pandas as pd
import torch

from .activations import Activations, d_model_of, gather_rows, n_rows
from .metrics import EvalResult, evaluate
from .models import resolve_device
from .sae import TiedSAE
from .utils import check_float, check_int, describe, progress_bar

HISTORY_COLUMNS = ("step", "loss", "recon", "sparsity", "l0")


def batch_indices(n_rows: int, batch_size: int, seed: int, epochs: int = 1,
                  steps: int | None = None) -> Iterator[torch.Tensor]:
    """The shuffled mini-batch order: row indices [<= batch_size] int64, one tensor per step.

    Each epoch is a fresh permutation of range(n_rows) from a torch.Generator seeded with `seed`, cut
    into batches of `batch_size` (the last one may be smaller, like the seed's DataLoader). With
    `steps`, exactly that many batches are yielded, running through as many epochs as needed (`epochs`
    is then ignored). Same arguments, same batches.
    """
    check_int("n_rows", n_rows, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    check_int("seed", seed, minimum=0)
    check_int("epochs", epochs, minimum=1)
    check_int("steps", steps, minimum=1, allow_none=True)
    return _batch_indices(n_rows, batch_size, seed, epochs, steps)


def _batch_indices(n_rows, batch_size, seed, epochs, steps):
    generator = torch.Generator().manual_seed(seed)
    made, epoch = 0, 0
    while (epoch < epochs) if steps is None else (made < steps):
        order = torch.randperm(n_rows, generator=generator)
        for batch in order.split(batch_size):
            if steps is not None and made == steps:
                return
            made += 1
            yield batch
        epoch += 1


def n_steps(n_rows: int, batch_size: int, epochs: int = 1, steps: int | None = None) -> int:
    """How many batches `batch_indices` yields for these arguments."""
    return steps if steps is not None else epochs * math.ceil(n_rows / batch_size)


@dataclass
class TrainResult:
    """What `train_sae` returns: the trained SAE, its loss history and its final metrics."""
    sae: TiedSAE
    history: pd.DataFrame  # columns step, loss, recon, sparsity, l0 (values on that step's batch)
    train_metrics: EvalResult | None
    eval_metrics: EvalResult | None
    seconds: float  # the training loop only (not the final evaluation)
    tokens_per_second: float

    def plot(self):
        """A matplotlib Figure: reconstruction loss and L0 against the training step."""
        import matplotlib.pyplot as plt

        fig, (ax_recon, ax_l0) = plt.subplots(1, 2, figsize=(10, 3.6))
        h = self.history
        ax_recon.plot(h["step"], h["recon"], label="reconstruction (MSE)")
        ax_recon.plot(h["step"], h["loss"], label="total loss", alpha=0.6)
        ax_recon.set(xlabel="training step", ylabel="loss", title="Loss")
        if (h[["recon", "loss"]] > 0).all().all():
            ax_recon.set_yscale("log")
        ax_recon.legend()
        ax_l0.plot(h["step"], h["l0"], color="tab:green")
        ax_l0.set(xlabel="training step", ylabel="L0 (active features per token)", title="Sparsity")
        fig.tight_layout()
        plt.close(fig)  # returned for display, not left open in pyplot's state
        return fig

    def __repr__(self) -> str:
        last = self.history.iloc[-1] if len(self.history) else None
        tail = "" if last is None else f", final recon={last['recon']:.4g}, l0={last['l0']:.1f}"
        return (f"TrainResult({int(last['step']) if last is not None else 0} steps in {self.seconds:.1f}s, "
                f"{self.tokens_per_second:,.0f} tokens/s{tail})")


def train_sae(sae: TiedSAE, activations, sparsity_coef: float = 1e-3, lr: float = 1e-3, batch_size: int = 64,
              epochs: int = 1, steps: int | None = None, seed: int = 0, device=None, progress: bool = True,
              eval_activations=None, log_every: int = 10) -> TrainResult:
    """Train `sae` in place with Adam on the seed's loss (MSE + sparsity_coef * mean |features|).

    activations: a single-layer `Activations` or a float tensor [n_tokens, d_model], read batch by
    batch in the order of `batch_indices(n_tokens, batch_size, seed, epochs, steps)`.
    eval_activations: optional held-out rows for `eval_metrics` (`train_metrics` is always computed).
    log_every: history rows every this many steps (and at the last step); only those steps wait for
    the device. device: None picks cuda, then mps, then cpu; the SAE is moved there.
    Same SAE initialisation and seed, same numbers. A NaN/inf loss raises FloatingPointError naming the
    step. The settings are recorded in `sae.metadata` (saved with `sae.save`).
    """
    if not isinstance(sae, TiedSAE):
        raise ValueError(f"sae: expected a saelab TiedSAE, got {describe(sae)}")
    n = n_rows(activations)
    width = d_model_of(activations)
    if width != sae.d_model:
        raise ValueError(f"activations: expected rows of width d_model = {sae.d_model} (the SAE's), got {width}")
    if eval_activations is not None and d_model_of(eval_activations) != sae.d_model:
        raise ValueError(f"eval_activations: expected rows of width d_model = {sae.d_model} (the SAE's), "
                         f"got {d_model_of(eval_activations)}")
    coef = check_float("sparsity_coef", sparsity_coef, minimum=0.0)
    lr = check_float("lr", lr, minimum=0.0, strict=True)
    check_int("log_every", log_every, minimum=1)
    batches = batch_indices(n, batch_size, seed, epochs, steps)  # validates the rest
    total = n_steps(n, batch_size, epochs, steps)
    dev = resolve_device(device)
    sae.to(dev).train()
    dtype = sae.encoder.weight.dtype
    optimizer = adam(sae.parameters(), lr)

    records = []
    all_finite = torch.ones((), dtype=torch.bool, device=dev)
    n_finite = torch.zeros((), dtype=torch.int64, device=dev)  # leading steps with a finite loss
    n_tokens = 0
    bar = progress_bar(total=total, progress=progress, desc="training SAE", unit="step")
    start = time.perf_counter()
    try:
        for step, index in enumerate(batches, 1):
            x = gather_rows(activations, index).to(device=dev, dtype=dtype, non_blocking=True)
            loss, recon, sparsity, features = sae._loss_terms(x, coef)
            log = step % log_every == 0 or step == total
            if log:
                l0 = (features > 0).sum(dim=-1, dtype=torch.float32).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            all_finite &= torch.isfinite(loss)
            n_finite += all_finite
            n_tokens += x.shape[0]
            bar.update(1)
            if log:
                values = torch.stack([loss.detach(), recon.detach(), sparsity.detach(), l0]).tolist()
                if not all(math.isfinite(v) for v in values[:3]):
                    raise_diverged(int(n_finite) + 1, lr, values[0])
                records.append((step, *values))
                bar.set_postfix(recon=f"{values[1]:.4g}", l0=f"{values[3]:.1f}", refresh=False)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    sae.eval()
    sae.metadata.update(training_metadata(activations, coef, lr, batch_size, epochs, steps, seed, total, n))
    return TrainResult(
        sae=sae,
        history=pd.DataFrame(records, columns=list(HISTORY_COLUMNS)).astype({"step": "int64"}),
        train_metrics=evaluate(sae, activations),
        eval_metrics=None if eval_activations is None else evaluate(sae, eval_activations),
        seconds=seconds,
        tokens_per_second=n_tokens / seconds if seconds > 0 else math.inf,
    )


def adam(params, lr: float) -> torch.optim.Adam:
    """The seed's optimizer (Adam, default betas and eps) over `params`; the fused kernel where torch
    has one for the device (one pass over the weights instead of ~10), else the default implementation.
    `train_sae` and the stacked sparsity sweep both use it."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # no fused Adam for this device / torch version
        return torch.optim.Adam(params, lr=lr)


def raise_diverged(step: int, lr: float, loss: float):
    raise FloatingPointError(
        f"training diverged: the loss became {loss} at step {step}; try a lower lr (e.g. lr={lr / 10:g} "
        f"instead of {lr:g}), and check that the activations are finite")


def training_metadata(activations, coef, lr, batch_size, epochs, steps, seed, total, n) -> dict:
    """What `train_sae` records in sae.metadata (JSON-able, saved in cfg.json)."""
    meta = {"trainer": "saelab.train_sae", "optimizer": "Adam", "sparsity_coef": coef, "lr": lr,
            "batch_size": batch_size, "epochs": epochs if steps is None else None, "steps": total,
            "seed": seed, "n_train_tokens": n}
    if isinstance(activations, Activations):
        from transformer_lens.utilities import get_act_name
        meta.update(model_name=activations.model_name, layer=activations.layer, hook=activations.hook,
                    hook_name=get_act_name(activations.hook, activations.layer))
    return meta
