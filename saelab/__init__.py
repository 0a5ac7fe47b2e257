"""saelab: Lab C.4, feature extraction with sparse autoencoders, as a package.

Public names are imported lazily (importing TransformerLens takes seconds), so `import saelab`
is instant and `saelab.TiedSAE` loads its module on first use.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "models", "resolve_device": "models", "default_model_name": "models",
    "ModelUnavailableError": "models",
    "load_texts": "data", "load_documents": "data", "NOTEBOOK_PROMPTS": "data", "TEST_PROMPTS": "data",
    "Result": "results", "format_table": "results",
    "TiedSAE": "sae.tied", "as_sae": "sae.interface",
    "load_sae": "sae.saelens", "SAELensSAE": "sae.saelens", "REFERENCE_SAES": "sae.saelens",
    "collect_activations": "activations.collect", "TruncationWarning": "activations.collect",
    "Activations": "activations.rows",
    "evaluate": "metrics", "ce_loss_recovered": "metrics", "ce_loss_recovered_many": "metrics",
    "EvalResult": "metrics", "CELossResult": "metrics",
    "top_activating_examples": "features.cards", "feature_logit_effects": "features.cards",
    "feature_card": "features.cards", "TopExamples": "features.cards", "LogitEffects": "features.cards",
    "FeatureCard": "features.cards", "match_features": "features.matching", "FeatureMatches": "features.matching",
    "steer": "features.steering", "steering_effect": "features.steering", "SteeringResult": "features.steering",
    "pick_features": "features.steering", "feature_ablation": "features.ablation", "AblationResult": "features.ablation",
    "browse": "features.browser", "FeatureBrowser": "features.browser",
    "batch_indices": "training.batches", "TrainConfig": "training.config", "LAB_RECIPE": "training.config",
    "train_sae": "training.trainer", "TrainResult": "training.trainer",
    "lab_settings": "training.lab_settings", "LabSettings": "training.lab_settings",
    "sparsity_sweep": "experiments", "feature_correlation": "experiments", "compare_layers": "experiments",
    "SweepResult": "experiments", "CorrelationResult": "experiments", "LayerComparison": "experiments",
    "notebook_layer": "experiments", "notebook_layers": "experiments",
    "untied_twin": "experiments.untied", "TieComparison": "experiments.untied",
    "CheckFailed": "checks.core",
}

#: Every result type saelab returns (each a `saelab.results.Result`).
RESULT_TYPES = ("TrainResult", "EvalResult", "CELossResult", "SweepResult", "CorrelationResult",
                "LayerComparison", "TopExamples", "LogitEffects", "FeatureCard", "FeatureMatches",
                "SteeringResult", "AblationResult", "TieComparison")

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
