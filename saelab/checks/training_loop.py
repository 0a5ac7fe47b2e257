"""Exercise 3 (Part 3): one sparsity coefficient's training loop, checked against `saelab.train_sae`.

Recipe steps and the check that notices each one skipped or wrong: clear the gradients, the loss of
the batch `rows[batch]` with the `sparsity_coef` argument, backward, the Adam step, the loss recorded
as a float, the batches in `batch_indices`' order. A wrong answer is replayed against the usual
mistakes (each one a variant of the reference loop) to name the one it matches.
"""
from __future__ import annotations

import functools
import math
import numbers

import torch

from saelab.checks.core import call, close, fail, passed

CHECK = "check_training_loop"
SETTINGS = dict(lr=1e-2, batch_size=16, epochs=2, seed=3)
D, N = 8, 24

MISTAKES = {  # replay variant -> what it tells the student
    "no_zero_grad": "the weights match a loop without optimizer.zero_grad(): gradients then accumulate over the "
                    "steps. Call optimizer.zero_grad() at the start of each step, before loss.backward().",
    "fresh_optimizer": "the weights match a loop that makes a new Adam optimizer at every step, which resets "
                       "Adam's running averages. Use the one optimizer made before the loop.",
    "whole_rows": "the weights match a loop that computes the loss on all rows at every step; use the batch: "
                  "sae.compute_loss(rows[batch], sparsity_coef=sparsity_coef).",
    "in_order": "the weights match a loop over the rows in their stored order; take the batches that "
                "batch_indices(len(rows), batch_size, seed=seed, epochs=epochs) gives, as rows[batch].",
}


def _data():
    return torch.randn(96, D, generator=torch.Generator().manual_seed(2)) * 2 + 0.5


def _new_sae():
    from saelab.sae.tied import TiedSAE
    return TiedSAE(D, N, seed=4)


@functools.lru_cache(maxsize=32)
def _replay(coef: float, variant: str | None = None):
    """The reference loop on `_data()`, or one usual mistake in it: (state_dict, losses). Cached."""
    from saelab.training.trainer import batch_indices

    rows = _data()
    sae = _new_sae()
    optimizer = torch.optim.Adam(sae.parameters(), lr=SETTINGS["lr"])
    batches = list(batch_indices(len(rows), SETTINGS["batch_size"], seed=SETTINGS["seed"], epochs=SETTINGS["epochs"]))
    if variant == "in_order":
        batches = list(torch.arange(len(rows)).split(SETTINGS["batch_size"])) * SETTINGS["epochs"]
    losses = []
    for batch in batches:
        if variant == "fresh_optimizer":
            optimizer = torch.optim.Adam(sae.parameters(), lr=SETTINGS["lr"])
        if variant != "no_zero_grad":
            optimizer.zero_grad()
        loss, _ = sae.compute_loss(rows if variant == "whole_rows" else rows[batch], sparsity_coef=coef)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sae.state_dict(), losses


@functools.lru_cache(maxsize=4)
def _trained(coef: float) -> dict:
    """The weights `saelab.train_sae` reaches with SETTINGS on `_data()` (cached)."""
    from saelab.training.trainer import train_sae

    ref = _new_sae()
    train_sae(ref, _data(), sparsity_coef=coef, device="cpu", progress=False, **SETTINGS)
    return ref.state_dict()


def _same(state, other) -> bool:
    return all(close(state[k], v) for k, v in other.items())


def _check_form(losses, before, state, n_steps: int) -> None:
    if all(torch.equal(before[k], state[k]) for k in state):
        fail(CHECK, "the SAE's weights did not change. Each step needs loss.backward() and then optimizer.step().")
    if not isinstance(losses, (list, tuple)) or len(losses) != n_steps:
        length = f" of length {len(losses)}" if hasattr(losses, "__len__") else ""
        fail(CHECK, f"train_one should return one loss per step ({n_steps} here: {SETTINGS['epochs']} epochs of 96 "
                    f"rows in batches of {SETTINGS['batch_size']}), got {type(losses).__name__}{length}. Append "
                    "loss.item() at every step.")
    if any(isinstance(v, torch.Tensor) for v in losses):
        fail(CHECK, "the losses are tensors; append loss.item() (a float), or every step's graph stays in memory.")
    if not all(isinstance(v, numbers.Real) for v in losses):
        kinds = sorted({type(v).__name__ for v in losses if not isinstance(v, numbers.Real)})
        fail(CHECK, f"the losses should be floats (loss.item()), got {', '.join(kinds)}.")


def _name_the_mistake(coef: float, state) -> None:
    for variant, message in MISTAKES.items():
        if _same(state, _replay(coef, variant)[0]):
            fail(CHECK, message)
    if coef != 1e-3 and _same(state, _replay(1e-3)[0]):
        fail(CHECK, f"with sparsity_coef={coef} the weights match training with 1e-3: pass the sparsity_coef "
                    "argument on to sae.compute_loss(rows[batch], sparsity_coef=sparsity_coef).")
    fail(CHECK, "the weights after training differ from saelab.train_sae's with the same settings. Each step: "
                "optimizer.zero_grad(), loss = sae.compute_loss(rows[batch], sparsity_coef=sparsity_coef)[0], "
                "loss.backward(), optimizer.step(), in batch_indices' order, with the optimizer made before the loop.")


def check_training_loop(train_one) -> None:
    """Exercise 3: check `train_one(sae, rows, sparsity_coef, lr, batch_size, epochs, seed) -> list of
    losses` against `saelab.train_sae` with the same settings (same seeded batch order: `batch_indices`),
    on rows [96, 8] at two sparsity coefficients; weights compared after training, losses step by step."""
    rows = _data()
    n_steps = SETTINGS["epochs"] * math.ceil(len(rows) / SETTINGS["batch_size"])
    for coef in (1e-3, 0.3):
        sae = _new_sae()
        before = {k: v.clone() for k, v in sae.state_dict().items()}
        losses = call(CHECK, f"train_one(sae, rows, sparsity_coef={coef}, ...)", train_one, sae, rows, coef, **SETTINGS)
        state = sae.state_dict()
        _check_form(losses, before, state, n_steps)
        if not _same(state, _trained(coef)):
            _name_the_mistake(coef, state)
        want = _replay(coef)[1]
        if not all(math.isclose(float(a), b, rel_tol=1e-4, abs_tol=1e-6) for a, b in zip(losses, want)):
            fail(CHECK, "the weights are right but the recorded losses are not each step's loss: append "
                        "loss.item() of the loss you call backward() on (recon + sparsity_coef * sparsity).")
    passed(CHECK, "train_one's weights after training match saelab.train_sae's, and its losses the steps' (same "
                  "batches, Adam, two sparsity coefficients).")
