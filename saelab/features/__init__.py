"""Features: looking at one feature of an SAE (its top activating examples, its effect on the logits,
its card) and matching the features of two SAEs.

Modules: `cards` (top examples, logit effects, feature cards), `matching` (match_features).
"""
from saelab.features.cards import (FeatureCard, LogitEffects, TopExamples, feature_card, feature_logit_effects,
                                   top_activating_examples)
from saelab.features.matching import FeatureMatches, match_features

__all__ = ["top_activating_examples", "feature_logit_effects", "feature_card", "TopExamples", "LogitEffects",
           "FeatureCard", "match_features", "FeatureMatches"]
