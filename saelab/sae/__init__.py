"""SAEs: the lab's tied SAE, the SAELens folder it is saved in, SAELens SAEs behind the same
interface, and `as_sae`, the one door every tool takes an SAE through.

Modules, lowest first: `folder_format` (cfg.json + sae_weights.safetensors, written whole, read
whole), `tied` (TiedSAE: the original notebook's math), `saelens` (SAELensSAE, load_sae, the
shipped reference SAE), `untied` (a tied SAE's untied twin as SAELens's standard SAE: its start and
its input scale folded in), `interface` (as_sae).
"""
from saelab.sae.interface import as_sae
from saelab.sae.saelens import REFERENCE_SAES, SAELensSAE, load_sae
from saelab.sae.tied import TiedSAE
from saelab.sae.untied import fold_input_scale, untied_start

__all__ = ["TiedSAE", "SAELensSAE", "load_sae", "REFERENCE_SAES", "as_sae", "untied_start", "fold_input_scale"]
