"""A feature browser in the notebook: `browse(model, sae, activations)` shows one feature at a time, picked by
id, by a search over the features' top tokens, or by clicking a point of the density-vs-mean-activation
scatter: its card (`feature_card`), what removing it costs (`feature_ablation`) and what adding it makes
the model write (`steering_effect`, with a slider for alpha).

Live, it is an ipywidgets view with a plotly FigureWidget (their JavaScript comes with the packages as
Jupyter extensions: no CDN, works offline). Without a live frontend (nbval, nbconvert, a saved page) the
same output falls back to its static HTML: the current feature's card, ablation and steering.
The per-feature work runs on first view of a feature and is cached; the overview is computed once.
"""
from __future__ import annotations

import html

import pandas as pd

from saelab.data import TEST_PROMPTS
from saelab.features.ablation import AblationResult, feature_ablation
from saelab.features.browser_view import ALPHA_MAX, BrowserView, widgets_available
from saelab.features.cards import FeatureCard, feature_card
from saelab.features.overview import FeatureOverview, feature_overview
from saelab.features.steering import SteeringResult, pick_features, steering_effect
from saelab.results import fmt
from saelab.sae.interface import as_sae
from saelab.utils import describe
from saelab.validate import (check_choice, check_feature, check_float, check_int, check_model, check_rows,
                             check_texts, is_activations)

_SANS = "font-family: system-ui, -apple-system, Helvetica, Arial, sans-serif"


class FeatureBrowser:
    """One SAE's features, one at a time (see `browse`). `select(feature)` changes the feature shown;
    `card()`, `ablation()`, `steering()` are the current feature's results (computed once each, cached);
    `search(query)` finds features by their top tokens; `.table` is the scatter's data."""

    def __init__(self, model, sae, activations, overview: FeatureOverview, feature: int, texts: list[str],
                 prompts: list[str], alpha: float, k: int, n_new: int):
        self.model, self.sae, self.activations, self.overview = model, sae, activations, overview
        self.feature, self.texts, self.prompts, self.alpha, self.k, self.n_new = feature, texts, prompts, alpha, k, n_new
        self._cards, self._ablations, self._steering = {}, {}, {}
        self._view = None

    @property
    def table(self) -> pd.DataFrame:
        """The alive features: feature, density, mean_active, max_activation, top_tokens."""
        return self.overview.table

    def card(self, feature: int | None = None) -> FeatureCard:
        feature = self._feature(feature)
        if feature not in self._cards:
            self._cards[feature] = feature_card(self.model, self.sae, self.activations, feature, k=self.k)
        return self._cards[feature]

    def ablation(self, feature: int | None = None) -> AblationResult:
        feature = self._feature(feature)
        if feature not in self._ablations:
            self._ablations[feature] = feature_ablation(self.model, self.sae, self.texts, feature, k=self.k,
                                                        progress=False)
        return self._ablations[feature]

    def steering(self, feature: int | None = None, alpha: float | None = None) -> SteeringResult | None:
        """Steering at `alpha` times the feature's top activation (None for a feature that never fires here)."""
        feature = self._feature(feature)
        alpha = self.alpha if alpha is None else check_float("alpha", alpha)
        if self.overview.max_activation[feature] <= 0:
            return None
        if (feature, alpha) not in self._steering:
            self._steering[(feature, alpha)] = steering_effect(
                self.model, self.sae, feature, self.prompts, alphas=[alpha], n_new=self.n_new, alpha_scale="max",
                activations=self.activations, vocab=self.activations.token_ids)
        return self._steering[(feature, alpha)]

    def search(self, query: str, limit: int = 20) -> list[int]:
        """Features whose top activating tokens contain `query` (see `FeatureOverview.search`)."""
        if not isinstance(query, str):
            raise ValueError(f"query: expected a string (a token to look for, e.g. 'def'), got {describe(query)}")
        return self.overview.search(query, check_int("limit", limit, minimum=1))

    def select(self, feature: int) -> "FeatureBrowser":
        """Show `feature` (in the live view too, when one is displayed); returns the browser."""
        self.feature = check_feature("feature", feature, self.sae.d_sae)
        if self._view is not None:
            self._view.show(self.feature)
        return self

    def _feature(self, feature) -> int:
        return self.feature if feature is None else check_feature("feature", feature, self.sae.d_sae)

    # -- display
    def summary(self) -> str:
        return (f"Feature browser: {len(self.table):,} of {self.sae.d_sae:,} features fire on these "
                f"{self.activations.n_tokens:,} tokens; showing feature {self.feature}")

    def __repr__(self) -> str:
        return self.summary()

    def section_html(self, part: str, feature: int | None = None) -> str:
        """One part of the current feature's view as HTML: "card", "ablation" or "steering"."""
        check_choice("part", part, ("card", "ablation", "steering"))
        if part == "card":
            return self.card(feature).html()
        if part == "ablation":
            return self.ablation(feature).html()
        steering = self.steering(feature)
        if steering is None:
            return f"<p style='{_SANS}; color:#777'>This feature never fires on these tokens: nothing to steer by.</p>"
        return (f"<p style='{_SANS}; font-size:12px; color:#555'>alpha = {fmt(self.alpha)} × the feature's top "
                f"activation ({fmt(float(self.overview.max_activation[self._feature(feature)]))})</p>"
                + steering.html())

    def html(self) -> str:
        """The static form (what a page without a live kernel shows): the current feature's card, ablation
        summary and steered text."""
        head = f"<p style='{_SANS}; color:#555'>{html.escape(self.summary())}"
        if not widgets_available():
            head += " (install saelab[notebooks] for the interactive browser)"
        return (f"{head}</p>{self.section_html('card')}<h3 style='{_SANS}'>Switched off: ablation</h3>"
                f"{self.section_html('ablation')}<h3 style='{_SANS}'>Switched on: steering</h3>"
                f"{self.section_html('steering')}")

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        """The live view where a frontend renders widgets, its static HTML everywhere else."""
        bundle = {"text/plain": self.summary(), "text/html": self.html()}
        if widgets_available():
            bundle.update({mime: data for mime, data in self.view.root._repr_mimebundle_().items()
                           if mime != "text/plain"})
        return bundle

    @property
    def view(self) -> BrowserView:
        """The live widgets (built on first use; ipywidgets and anywidget needed, see `widgets_available`)."""
        if self._view is None:
            if not widgets_available():
                raise ImportError("the live feature browser needs ipywidgets and anywidget: "
                                  "pip install 'saelab[notebooks]'")
            self._view = BrowserView(self)
        return self._view


def browse(model, sae, activations, feature: int | None = None, texts=None, prompts=None, alpha: float = 2.0,
           k: int = 8, n_new: int = 8, n_texts: int = 4) -> FeatureBrowser:
    """A feature browser for `sae` over held-out `activations` (a single-layer `Activations`, for the
    tokens): pick a feature by id, by searching its top tokens, or by clicking the scatter of every
    feature's density against its mean activation; see its card, its ablation summary and its steered text.

    feature: the first feature shown (default: `pick_features`' first, the lab's rule).
    texts: held-out texts for the ablation (default: the first `n_texts` texts of `activations`).
    prompts: what the steered model continues (default: two of `saelab.TEST_PROMPTS`), `n_new` tokens.
    alpha: the steering slider's start, in units of the feature's top activation on `activations`.
    k: top examples, logit effects and ablation tokens shown. Displays as the live browser in Jupyter
    (JupyterLab, Notebook, VS Code, Colab), as the static card, ablation and steering elsewhere.
    """
    check_model("model", model, needs=("cfg", "hook_dict", "to_tokens", "W_U"))
    sae = as_sae("sae", sae)
    check_rows("activations", activations, sae.d_in)
    if not is_activations(activations):
        raise ValueError("activations: expected a single-layer Activations (the browser shows and searches the "
                         f"tokens), got {describe(activations)}; collect them with saelab.collect_activations")
    check_int("k", k, minimum=1)
    check_int("n_new", n_new, minimum=1)
    check_int("n_texts", n_texts, minimum=1)
    alpha = check_float("alpha", alpha, minimum=0)
    if alpha > ALPHA_MAX:
        raise ValueError(f"alpha: expected a number from 0 to {ALPHA_MAX} (the slider's range), got {alpha}")
    texts = activations.texts[:n_texts] if texts is None else check_texts("texts", texts, allow_str=True)
    prompts = list(TEST_PROMPTS.values())[:2] if prompts is None else check_texts("prompts", prompts, allow_str=True)
    if feature is not None:
        feature = check_feature("feature", feature, sae.d_sae)
    overview = feature_overview(sae, activations, k=k)
    if feature is None:
        feature = pick_features(model, sae, overview.density, n=1, vocab=activations.token_ids)[0]
    return FeatureBrowser(model, sae, activations, overview, feature, texts, prompts, alpha, k, n_new)
