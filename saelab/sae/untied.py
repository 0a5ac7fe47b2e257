"""The untied twin of a tied SAE: SAELens's standard (untied) ReLU SAE, started from the tied SAE's weights.

    features       = relu(x @ W_enc + b_enc)        W_enc [d_in, d_sae]
    reconstruction = features @ W_dec + b_dec       W_dec [d_sae, d_in], free to differ from W_enc.T

The math is SAELens's own (`sae_lens.StandardSAE`, `apply_b_dec_to_input=False`, as saelab's tied SAE
is saved): saelab writes no second copy of it. `untied_start(tied)` copies a tied SAE's weights into one
(W_enc = W.T, W_dec = W: the same SAE, not yet untied by training), on the rows the tied SAE's math
reads (x / input_scale); `fold_input_scale(sae, s)` then makes it read and write raw rows, as
`TiedSAE.save` folds s (in float64, rounded once). Untrained, the two compute the same features.
"""
from __future__ import annotations

import torch

from saelab.sae.saelens import SAELensSAE
from saelab.sae.tied import TiedSAE
from saelab.utils import describe

#: The metadata keys of a TiedSAE that SAELens's SAEMetadata keeps for the twin.
_SHARED_METADATA = ("model_name", "hook_name")


def untied_start(tied: TiedSAE):
    """A `sae_lens.StandardSAE` equal to `tied` on rows divided by tied.input_scale: W_enc = W.T, W_dec = W,
    b_enc, b_dec = decoder_bias (copies, on tied's device and dtype), hook_name and model_name from its
    metadata. Needs sae_lens (ImportError naming the install otherwise)."""
    if not isinstance(tied, TiedSAE):
        raise ValueError(f"tied: expected a saelab TiedSAE, got {describe(tied)}")
    try:
        from sae_lens import StandardSAE, StandardSAEConfig
        from sae_lens.saes.sae import SAEMetadata
    except ImportError:
        raise ImportError("the untied twin is SAELens's standard SAE and needs sae_lens, which is not installed: "
                          "pip install sae-lens") from None
    weight = tied.encoder.weight.detach()
    metadata = SAEMetadata(**{k: tied.metadata[k] for k in _SHARED_METADATA if tied.metadata.get(k) is not None})
    cfg = StandardSAEConfig(d_in=tied.d_model, d_sae=tied.n_features, dtype=str(weight.dtype).removeprefix("torch."),
                            device=str(weight.device), apply_b_dec_to_input=False, metadata=metadata)
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(weight.T)
        sae.W_dec.copy_(weight)
        sae.b_enc.copy_(tied.encoder.bias.detach())
        sae.b_dec.copy_(tied.decoder_bias.detach())
    return sae


@torch.no_grad()
def fold_input_scale(sae, scale: float) -> SAELensSAE:
    """`sae` (a SAELens standard SAE trained on rows / scale) made to read and write raw rows, in place:
    W_enc / s, W_dec * s, b_dec * s, in float64 and rounded once to its dtype; returned as a `SAELensSAE`."""
    sae.W_enc.copy_((sae.W_enc.double() / scale).to(sae.W_enc.dtype))
    for param in (sae.W_dec, sae.b_dec):
        param.copy_((param.double() * scale).to(param.dtype))
    return SAELensSAE(sae.eval())
