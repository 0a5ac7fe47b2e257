"""Exercise 8 (Part 8): ablating one feature, checked against `saelab.features.ablation.ablated`.

Recipe steps and the check that notices each one skipped or wrong: the feature's activation f_i(x)
(after the ReLU: zero where it is off), times its decoder direction in raw units (`sae.W_dec[i]`,
input_scale applied), subtracted from the real x (not from the reconstruction: the SAE's error term
stays), for that one feature only, with no decoder bias.
"""
from __future__ import annotations

import torch

from saelab.checks.core import as_tensor, call, close, fail, passed

CHECK = "check_ablation"
D, N, FEATURE, SCALE = 16, 48, 5, 4.0


def _data():
    """(sae, x [12, D]): a TiedSAE with input_scale 4 and non-zero biases, and rows on half of which the
    feature fires."""
    from saelab.sae.tied import TiedSAE

    sae = TiedSAE(D, N, seed=21)
    sae.input_scale = SCALE
    g = torch.Generator().manual_seed(22)
    x = 3 * torch.randn(12, D, generator=g) + 1
    with torch.no_grad():
        sae.encoder.bias.copy_(0.2 * torch.randn(N, generator=g))
        sae.decoder_bias.copy_(0.5 * torch.randn(D, generator=g))
        pre = (x / SCALE) @ sae.encoder.weight[FEATURE]
        sae.encoder.bias[FEATURE] = -pre.median()     # the feature fires on about half of the rows
    return sae, x


@torch.no_grad()
def _mistakes(sae, x) -> dict[str, torch.Tensor]:
    """What the usual wrong answers give -> the hint for each."""
    f = sae.encode(x)
    fi, d = f[:, FEATURE:FEATURE + 1], sae.W_dec[FEATURE]
    pre = ((x / SCALE) @ sae.encoder.weight[FEATURE] + sae.encoder.bias[FEATURE])[:, None]
    others = f.clone()
    others[:, FEATURE] = 0
    return {
        "this is the SAE's reconstruction without the feature: it drops the SAE's error term (x - x_hat), which "
        "the model needs. Subtract the feature's contribution from the real activation: x - f_i(x) * "
        "sae.W_dec[feature].": sae.decode(others),
        "this is the SAE's reconstruction: it replaces x (dropping the error term) and leaves the feature in. "
        "Subtract only the feature's contribution from x: x - f_i(x) * sae.W_dec[feature].": sae.decode(f),
        "the contribution includes the decoder bias b_dec (sae.decode of a one-feature vector adds it), so rows "
        "where the feature is zero change too. The contribution is f_i(x) * sae.W_dec[feature] alone.":
            x - fi * d - sae.b_dec,
        "the contribution uses the pre-activation (before the ReLU), which is non-zero where the feature is off. "
        "Use the feature's value, sae.encode(x)[:, feature], zero wherever it does not fire.": x - pre * d,
        "the direction is the unscaled weight row (sae.encoder.weight[feature]): it forgets sae.input_scale. "
        "Use sae.W_dec[feature], the decoder direction in raw activation units.": x - fi * d / SCALE,
        "every feature is removed (x - f @ W_dec); ablate only the one asked for: x - f[:, feature, None] * "
        "sae.W_dec[feature].": x - f @ sae.W_dec,
    }


def check_ablation(ablate) -> None:
    """Exercise 8: check `ablate(sae, x, feature) -> x without feature`'s contribution (x [n, d_in] raw
    rows) against saelab's reference x - f_i(x) * sae.W_dec[feature], on rows [12, 16] with an SAE whose
    input_scale is 4 and whose feature fires on half of them."""
    from saelab.features.ablation import ablated

    sae, x = _data()
    with torch.no_grad():
        want = ablated(sae, x[None], FEATURE, skip_bos=False)[0][0]
        got = call(CHECK, "ablate(sae, x, feature)", ablate, sae, x.clone(), FEATURE)
        got = as_tensor(CHECK, "ablate(sae, x, feature)", got, tuple(x.shape))
        if close(got, want, atol=1e-4):
            passed(CHECK, "x - f_i(x) * sae.W_dec[feature] matches saelab's ablation (error term kept, input_scale "
                          "included, rows where the feature is off unchanged).")
            return
        for hint, value in _mistakes(sae, x).items():
            if close(got, value, atol=1e-4):
                fail(CHECK, hint)
    off = sae.encode(x)[:, FEATURE] == 0
    where = " (the rows where the feature is off changed too)" if not close(got[off], x[off], atol=1e-4) else ""
    fail(CHECK, f"ablate(sae, x, feature) differs from x - f_i(x) * sae.W_dec[feature]{where}; f_i(x) = "
                "sae.encode(x)[:, feature].")
