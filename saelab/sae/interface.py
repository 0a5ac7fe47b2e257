"""The one SAE interface every saelab tool uses, and `as_sae`, the one check that admits an SAE.

Every tool (`evaluate`, `ce_loss_recovered`, `feature_correlation`, `top_activating_examples`,
`feature_logit_effects`, `feature_card`, the experiments' evaluation) starts with
`sae = as_sae("sae", sae)` and then uses only:

- `sae.encode(x)`: activations `[..., d_in]` -> features `[..., d_sae]`
- `sae.decode(f)`: features `[..., d_sae]` -> reconstruction `[..., d_in]`
- `sae.encode_unchecked(x)`, `sae.decode_unchecked(f)`: the same without input checks, for a tool
  that checked its input once and then streams batches (TiedSAE's checks cost ~1.8x its math)
- `sae.W_dec` `[d_sae, d_in]` (each row a feature's decoder direction), `sae.b_dec` `[d_in]`
- `sae.d_in`, `sae.d_sae`: the width of the activations and the number of features
- `sae.hook_name` (e.g. "blocks.1.hook_resid_post") and `sae.layer`: the hook it reads, or None
  when unknown
- `sae.metadata`: a dict (model_name, training settings, ...)
- `sae.W_dec.device` / `sae.W_dec.dtype`: where and in what dtype to give it inputs.

All four take inputs on the SAE's device and dtype. saelab's `TiedSAE` implements the
interface itself; a SAELens SAE object enters through `sae.saelens.SAELensSAE`, which calls
SAELens's own encode/decode (see `saelab.load_sae`).
"""
from __future__ import annotations

from saelab.sae.tied import TiedSAE
from saelab.sae.saelens import SAELensSAE, is_saelens_sae
from saelab.utils import describe


def as_sae(name: str, sae):
    """`sae` as an object with the interface above, else ValueError naming `name`.

    A saelab `TiedSAE` or a `SAELensSAE` is returned as it is; a SAELens SAE object is wrapped in a
    `SAELensSAE` (no copy of its weights or math).
    """
    if isinstance(sae, (TiedSAE, SAELensSAE)):
        return sae
    if is_saelens_sae(sae):
        return SAELensSAE(sae, name=name)
    raise ValueError(f"{name}: expected a saelab TiedSAE or a SAELens SAE (load one with saelab.load_sae), "
                     f"got {describe(sae)}")
