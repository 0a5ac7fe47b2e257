"""saelab: Lab C.4, feature extraction with sparse autoencoders, as a package.

Public names are imported lazily (importing TransformerLens takes seconds), so `import saelab`
is instant and `saelab.TiedSAE` loads its module on first use.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "models", "resolve_device": "models", "default_model_name": "models",
    "load_texts": "data", "load_documents": "data", "NOTEBOOK_PROMPTS": "data", "TEST_PROMPTS": "data",
    "TiedSAE": "sae", "as_sae": "sae_interface",
    "load_sae": "saelens_sae", "SAELensSAE": "saelens_sae", "REFERENCE_SAES": "saelens_sae",
    "collect_activations": "collect", "Activations": "activations",
    "Result": "results",
    "evaluate": "metrics", "ce_loss_recovered": "metrics", "ce_loss_recovered_many": "metrics", "EvalResult": "metrics", "CELossResult": "metrics",
    "train_sae": "train", "TrainConfig": "train_config", "LAB_RECIPE": "train_config",
    "lab_settings": "labconfig", "LabSettings": "labconfig", "TrainResult": "train",
    "sparsity_sweep": "experiments", "feature_correlation": "experiments", "compare_layers": "experiments",
    "SweepResult": "experiments", "CorrelationResult": "experiments", "LayerComparison": "experiments",
    "top_activating_examples": "features", "feature_logit_effects": "features", "feature_card": "features",
    "TopExamples": "features", "LogitEffects": "features", "FeatureCard": "features",
    "match_features": "matching", "FeatureMatches": "matching",
}

#: Every result type saelab returns (each a `saelab.results.Result`).
RESULT_TYPES = ("TrainResult", "EvalResult", "CELossResult", "SweepResult", "CorrelationResult",
                "LayerComparison", "TopExamples", "LogitEffects", "FeatureCard", "FeatureMatches")

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"saelab.{_EXPORTS[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'saelab' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
