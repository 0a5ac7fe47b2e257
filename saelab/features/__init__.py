"""Features: looking at one feature of an SAE (its top activating examples, its effect on the logits,
its card), matching the features of two SAEs, and using one: switching it on (steering) and off (ablation).

Modules: `cards` (top examples, logit effects, feature cards), `matching` (match_features), `steering`
(steer, steering_effect, pick_features), `ablation` (feature_ablation).
"""
from saelab.features.cards import (FeatureCard, LogitEffects, TopExamples, feature_card, feature_logit_effects,
                                   top_activating_examples)
from saelab.features.ablation import AblationResult, feature_ablation
from saelab.features.matching import FeatureMatches, match_features
from saelab.features.steering import SteeringResult, pick_features, steer, steering_effect

__all__ = ["top_activating_examples", "feature_logit_effects", "feature_card", "TopExamples", "LogitEffects",
           "FeatureCard", "match_features", "FeatureMatches", "steer", "steering_effect", "SteeringResult",
           "pick_features", "feature_ablation", "AblationResult"]
