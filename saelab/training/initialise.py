"""How training starts from the rows: the rows' scale (`TiedSAE.input_scale`) and the lab's initialisation.

`row_scale(rows)` is s = sqrt(mean ||x||^2 / d_model), so x / s has mean squared norm d_model (SAELens's
`expected_average_only_in`). `start_from_rows` applies `TrainConfig`'s normalize / init_norm /
init_density to untrained SAEs before the first step; the seed's math is untouched (only the starting
weights and the scale change).
"""
from __future__ import annotations

import torch

from saelab.activations.rows import gather_rows, iter_row_batches, n_rows
from saelab.models import accumulation

#: Rows sampled (with replacement, seeded) to set the biases of `init_density`.
DENSITY_SAMPLE = 8192


@torch.no_grad()
def row_scale(activations) -> float:
    """s = sqrt(mean over rows of ||x||^2 / d_model) of Activations or a tensor [n, d_model], streamed
    in float64 (on MPS the sums are taken on the CPU). Raises ValueError when every row is zero."""
    total, n, width = 0.0, 0, None
    for batch in iter_row_batches(activations, 8192):
        dtype, home = accumulation(batch.device)
        total += float(batch.to(dtype).pow(2).sum().to(home))
        n, width = n + batch.shape[0], batch.shape[-1]
    if not n or total <= 0.0:
        raise ValueError("activations: every row is zero, so there is no scale to normalise by; "
                         "use normalize=False")
    return (total / (n * width)) ** 0.5


def is_untrained(sae) -> bool:
    """Whether `sae` has not been trained by saelab yet (no trainer recorded in its metadata)."""
    return "trainer" not in sae.metadata


@torch.no_grad()
def density_biases(weight: torch.Tensor, rows: torch.Tensor, density: float) -> torch.Tensor:
    """b_enc [n_features] such that relu(rows @ weight.T + b_enc) is positive on round(density * n) of the
    n rows [n, d_model] for every feature (weight [n_features, d_model]; ties aside)."""
    pre = rows @ weight.T                                  # [n, n_features]
    if pre.device.type == "mps":                           # kthvalue may lack an MPS kernel
        pre = pre.cpu()
    k = pre.shape[0] - round(density * pre.shape[0])       # the k-th smallest value: density above it
    return -pre.kthvalue(max(k, 1), dim=0).values.to(weight.device)


@torch.no_grad()
def start_from_rows(saes, sources, config) -> None:
    """Before training: for each untrained SAE, `config.normalize` sets its input_scale to its source's
    row_scale (computed once per distinct source); `config.init_norm` rescales W's rows; and
    `config.init_density` sets b_enc from DENSITY_SAMPLE rows of its source (seeded by config.seed)."""
    scales: dict[int, float] = {}
    for sae, source in zip(saes, sources):
        if not is_untrained(sae):
            continue
        if config.normalize:
            if id(source) not in scales:
                scales[id(source)] = row_scale(source)
            sae.input_scale = scales[id(source)]
        weight = sae.encoder.weight
        if config.init_norm is not None:
            weight.mul_(config.init_norm / weight.norm(dim=1, keepdim=True).clamp_min(1e-12))
        if config.init_density is not None:
            generator = torch.Generator().manual_seed(config.seed)
            index = torch.randint(n_rows(source), (DENSITY_SAMPLE,), generator=generator)
            sample = gather_rows(source, index).to(device=weight.device, dtype=weight.dtype) / sae.input_scale
            sae.encoder.bias.copy_(density_biases(weight, sample, config.init_density))
