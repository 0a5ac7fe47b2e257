"""Features: looking at one feature of an SAE (its top activating examples, its effect on the logits,
its card), matching the features of two SAEs, using one: switching it on (steering) and off (ablation), and
browsing them all in a notebook.

Modules: `cards` (top examples, logit effects, feature cards), `matching` (match_features), `steering`
(steer, steering_effect, pick_features), `ablation` (feature_ablation), `overview` (every feature's density,
mean activation and top tokens), `browser_view` (the browser's live widgets), `browser` (browse).
"""
from saelab.features.cards import (FeatureCard, LogitEffects, TopExamples, feature_card, feature_logit_effects,
                                   top_activating_examples)
from saelab.features.ablation import AblationResult, feature_ablation
from saelab.features.matching import FeatureMatches, match_features
from saelab.features.steering import SteeringResult, pick_features, steer, steering_effect
from saelab.features.browser import FeatureBrowser, browse

__all__ = ["top_activating_examples", "feature_logit_effects", "feature_card", "TopExamples", "LogitEffects",
           "FeatureCard", "match_features", "FeatureMatches", "steer", "steering_effect", "SteeringResult",
           "pick_features", "feature_ablation", "AblationResult", "browse", "FeatureBrowser"]
