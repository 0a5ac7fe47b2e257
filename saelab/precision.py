"""The one precision setting: what training and collection compute in (float32, or float64 to reproduce).

Training an SAE is chaotic: a rounding difference of one part in 10^7 (the CPU's kernels summing in
another order) grows, over the lab's two epochs, into other features, other co-activation pairs and
other picks. In float64 the same differences start 10^9 times smaller and stay below the digits a
notebook shows (benchmarks/RESULTS.md, "Precision"). So `$SAELAB_PRECISION=float64` (which `saelab
notebooks execute` sets for the solution notebooks) makes `train_stacked` train, `collect_activations` run
the model, and `evaluate`, `ce_loss_recovered` and `feature_ablation` run the model and the SAE
(`in_working_dtype`), in float64; results come back in the caller's dtype. Unset (or "float32"),
tensors are computed in their own dtype: students on a GPU or a laptop lose nothing.
"""
from __future__ import annotations

import contextlib
import os

import torch

from saelab.models import supports_float64
from saelab.utils import describe

__all__ = ["PRECISION_ENV", "PRECISIONS", "working_dtype", "in_working_dtype", "at_least_float32"]

#: The environment variable that picks the precision ("float32", the default, or "float64").
PRECISION_ENV = "SAELAB_PRECISION"
PRECISIONS = {"float32": torch.float32, "float64": torch.float64}


def working_dtype(dtype: torch.dtype, device) -> torch.dtype:
    """The dtype to compute in for tensors of `dtype` on `device`: `dtype` itself, or float64 when
    $SAELAB_PRECISION is "float64" (ValueError on a device without float64, such as MPS)."""
    name = os.environ.get(PRECISION_ENV, "").strip() or "float32"
    if name not in PRECISIONS:
        raise ValueError(f"${PRECISION_ENV}: expected one of {sorted(PRECISIONS)} (or unset), got {describe(name)}")
    if PRECISIONS[name] != torch.float64 or dtype == torch.float64:
        return dtype
    if not supports_float64(device):
        raise ValueError(f"${PRECISION_ENV}=float64: the device {torch.device(device)} has no float64; "
                         f"run on the CPU (device='cpu') or unset ${PRECISION_ENV}")
    return torch.float64


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """x (logits before a softmax) in float32 when it is in a lower precision (float16, bfloat16), else as
    it is: float64 logits stay float64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


@contextlib.contextmanager
def in_working_dtype(*holders):
    """Each of `holders` (a TransformerLens model, or an SAE through `as_sae`) with its weights in
    `working_dtype` while the block runs (float64 under $SAELAB_PRECISION=float64), then back in their
    own dtype: exactly the weights they had, since float64 holds every lower precision's values.
    Nothing changes without the setting."""
    with contextlib.ExitStack() as stack:
        for holder in holders:
            stack.enter_context(_model_in(holder) if hasattr(holder, "cfg") and hasattr(holder, "hook_dict")
                                else _sae_in(holder))
        yield


@contextlib.contextmanager
def _model_in(model):
    first = next(model.parameters())
    own, own_cfg, dtype = first.dtype, getattr(model.cfg, "dtype", None), working_dtype(first.dtype, first.device)
    if dtype == own:
        yield
        return
    from transformer_lens.utilities.devices import move_to_and_update_config
    move_to_and_update_config(model, dtype, print_details=False)
    try:
        yield
    finally:
        move_to_and_update_config(model, own, print_details=False)
        if own_cfg is not None:
            model.cfg.dtype = own_cfg


@contextlib.contextmanager
def _sae_in(sae):
    own = sae.W_dec.dtype
    dtype = working_dtype(own, sae.W_dec.device)
    if dtype == own:
        yield
        return
    cfg = getattr(getattr(sae, "sae", sae), "cfg", None)     # a SAELens SAE records its dtype in cfg.dtype
    own_cfg = getattr(cfg, "dtype", None)
    sae.to(dtype=dtype)
    try:
        yield
    finally:
        sae.to(dtype=own)
        if own_cfg is not None:
            cfg.dtype = own_cfg
