"""Exercise 5 (Part 5): the fraction of variance unexplained, checked against `saelab.evaluate(...).fvu`.

Recipe steps and the check that notices each one skipped or wrong: the squared error summed over rows
and dimensions, the denominator centred on each dimension's own mean (not uncentred, not one overall
mean), both as sums (or both as means, not a sample variance), the ratio itself (not 1 - it), one ratio
of two totals (not the mean of each dimension's own FVU), a number. The fixed inputs reconstruct each
dimension to a different degree, so every one of those mistakes gives a value far from the right one.
"""
from __future__ import annotations

import math

import torch

from saelab.checks.core import call, fail, passed

CHECK = "check_fvu"


def _data():
    """x [64, 8] far from zero mean, with a different mean and scale per dimension, and a TiedSAE whose
    reconstruction x_hat = mean + c_d (x - mean), c_d from 0.2 (the narrowest dimension) to 0.95 (the
    widest), explains each dimension to a different degree: FVU 0.102, while the mean of the eight
    per-dimension FVUs is 0.241. Returns (sae, x, x_hat)."""
    from saelab.sae.tied import TiedSAE

    g = torch.Generator().manual_seed(6)
    x = torch.randn(64, 8, generator=g) * torch.linspace(0.5, 3, 8) + torch.linspace(-4, 8, 8)
    mean, root_c = x.mean(dim=0), torch.diag(torch.linspace(0.2, 0.95, 8).sqrt())
    sae = TiedSAE(8, 24, seed=7)
    with torch.no_grad():  # features relu(+-sqrt(c_d) (x - mean)_d), decoded back to c_d (x - mean)_d + mean_d
        sae.encoder.weight.copy_(torch.cat([root_c, -root_c, torch.zeros(8, 8)]))
        sae.encoder.bias.copy_(-sae.encoder.weight @ mean)
        sae.decoder_bias.copy_(mean)
        return sae, x, sae(x)[0]


def _mistakes(x, x_hat) -> dict[str, float]:
    """What the usual wrong formulas give -> the hint for each."""
    sq_err = (x - x_hat).pow(2).sum().item()
    n = x.shape[0]
    centred = (x - x.mean(dim=0)).pow(2).sum().item()
    return {
        "this is the explained variance (1 - FVU); FVU is the fraction NOT explained: "
        "sum((x - x_hat)^2) / sum((x - x.mean(0))^2).": 1 - sq_err / centred,
        "the denominator is sum(x^2), not the variance: subtract each dimension's mean over the rows first, "
        "sum((x - x.mean(dim=0))^2). Residual streams have a large mean, so the uncentred version looks far too "
        "good.": sq_err / x.pow(2).sum().item(),
        "the denominator is centred on one overall mean, x.mean(); centre each dimension on its own mean over "
        "the rows, x.mean(dim=0).": sq_err / (x - x.mean()).pow(2).sum().item(),
        "this is the MSE; divide the squared error by the total variance to get the fraction unexplained: "
        "sum((x - x_hat)^2) / sum((x - x.mean(0))^2).": (x - x_hat).pow(2).mean().item(),
        "this is the mean of each dimension's own FVU; FVU is one ratio of two totals, the squared error summed "
        "over rows AND dimensions over the variance summed the same way, so a dimension with more variance counts "
        "for more: sum((x - x_hat)^2) / sum((x - x.mean(0))^2).":
            ((x - x_hat).pow(2).sum(dim=0) / (x - x.mean(dim=0)).pow(2).sum(dim=0)).mean().item(),
        "the denominator is a sample variance (torch.var divides by n - 1), the numerator a mean over n: use "
        "sums for both (or torch.var(..., unbiased=False)).": sq_err / centred * (n - 1) / n,
    }


def check_fvu(fvu) -> None:
    """Exercise 5: check `fvu(x, x_hat) -> float` (x, x_hat [n, d_model]) against
    `saelab.evaluate(...).fvu` on rows [64, 8] whose dimensions have different means."""
    from saelab.metrics import evaluate

    sae, x, x_hat = _data()
    want = evaluate(sae, x).fvu
    got = call(CHECK, "fvu(x, x_hat)", fvu, x, x_hat)
    try:
        got = float(got)
    except (TypeError, ValueError):
        fail(CHECK, f"fvu should return a number (a float or a 0-d tensor), got {type(got).__name__}.")
    if math.isclose(got, want, rel_tol=1e-4):
        passed(CHECK, f"fvu = {got:.4f} matches saelab.evaluate(...).fvu.")
        return
    for hint, value in _mistakes(x, x_hat).items():
        if math.isclose(got, value, rel_tol=1e-4):
            fail(CHECK, hint)
    fail(CHECK, f"fvu(x, x_hat) = {got:.6g}, expected {want:.6g} = sum((x - x_hat)^2) / sum((x - x.mean(0))^2), "
                "both sums over all rows and dimensions.")
