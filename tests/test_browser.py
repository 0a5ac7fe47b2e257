"""The feature browser without a frontend: its overview (the scatter's data, the search), its static form
(what nbval and saved pages show), its cache, its live widgets driven from Python, and its argument checks."""
import pytest
import torch

import saelab
from saelab.course.regenerate import WIDGET_MIME
from saelab.features import browser as browser_module
from saelab.features.browser import FeatureBrowser, browse
from saelab.features.browser_view import BrowserView


@pytest.fixture(scope="module")
def acts(model, ref_sae):
    return saelab.collect_activations(model, saelab.load_texts("test", max_texts=12), [ref_sae.layer],
                                      progress=False)[ref_sae.layer]


@pytest.fixture(scope="module")
def browser(model, ref_sae, acts):
    return browse(model, ref_sae, acts, n_texts=2, n_new=4, prompts=["def main():"])


def test_the_scatter_data_is_every_alive_features_density_and_mean_activation(browser, ref_sae, acts):
    table = browser.table
    density = saelab.evaluate(ref_sae, acts).feature_density
    alive = torch.nonzero(density > 0).flatten().tolist()
    assert table.feature.tolist() == alive
    assert torch.allclose(torch.tensor(table.density.values), density[alive].double(), atol=1e-12)
    with torch.no_grad():
        values = ref_sae.encode(acts.rows)[:, alive[0]]
    assert table.mean_active.iloc[0] == pytest.approx(float(values[values > 0].mean()), rel=1e-5)
    assert table.max_activation.iloc[0] == pytest.approx(float(values.max()), rel=1e-6)


def test_search_finds_features_by_their_top_tokens_best_match_first(browser):
    found = browser.search(" def ")                     # whitespace and case do not matter
    assert found and found == browser.search("DEF")
    tokens = browser.overview.top_tokens
    assert all(any("def" in t.lower() for t in tokens[f]) for f in found)
    hits = [sum("def" in t.lower() for t in tokens[f]) for f in found]
    assert hits == sorted(hits, reverse=True)
    every = {f for f, ts in enumerate(tokens) if any("def" in t.lower() for t in ts)}
    assert set(browser.search("def", limit=len(tokens))) == every
    assert browser.search("zzqqxx-not-a-token") == [] and browser.search("  ") == []
    assert len(browser.search("e", limit=3)) == 3


def test_top_tokens_are_the_tokens_where_the_card_says_it_fires_most(browser):
    feature = browser.search("def")[0]
    card_tokens = browser.card(feature).examples.table.token.tolist()
    assert browser.overview.top_tokens[feature] == list(dict.fromkeys(card_tokens))


def test_the_static_form_shows_card_ablation_and_steering_of_the_current_feature(browser):
    feature = browser.select(browser.search("def")[0]).feature
    bundle = browser._repr_mimebundle_()
    page = bundle["text/html"]
    assert f"Feature {feature}" in page and f"Ablating feature {feature}:" in page
    assert f"Steering feature {feature} " in page and "class='steered'" in page
    assert "data:image/png;base64," in page                      # the card's histogram travels inline
    assert "<script" not in page and "http" not in page          # nothing to fetch: renders offline
    assert bundle[WIDGET_MIME]["model_id"] and str(feature) in bundle["text/plain"]


def test_without_ipywidgets_the_browser_is_its_static_form(browser, monkeypatch):
    monkeypatch.setattr(browser_module, "widgets_available", lambda: False)
    bundle = browser._repr_mimebundle_()
    assert WIDGET_MIME not in bundle and "saelab[notebooks]" in bundle["text/html"]


def test_each_features_work_runs_once(browser, monkeypatch):
    feature = browser.search("the")[1]
    card, ablation, steering = browser.card(feature), browser.ablation(feature), browser.steering(feature)
    monkeypatch.setattr(browser_module, "feature_card", None)   # a second computation would fail
    monkeypatch.setattr(browser_module, "feature_ablation", None)
    monkeypatch.setattr(browser_module, "steering_effect", None)
    assert browser.card(feature) is card and browser.ablation(feature) is ablation
    assert browser.steering(feature) is steering and browser.select(feature).section_html("card")


def test_the_live_view_follows_search_click_id_and_slider(browser):
    view = browser.view
    assert isinstance(view, BrowserView) and browser.view is view
    view.search_box.value = "def"                       # lists the matches and shows the best one
    assert [f for _, f in view.matches.options] == browser.search("def")
    assert browser.feature == browser.search("def")[0] == view.feature_box.value
    view.matches.value = view.matches.options[1][1]
    picked = view.matches.value
    assert browser.feature == picked == view.feature_box.value
    assert f"Feature {picked}" in view.card.value and f"Ablating feature {picked}:" in view.ablation.value
    trace = view.scatter.data[0]
    from plotly.callbacks import Points
    trace._dispatch_on_click(Points(point_inds=[5], trace_index=0), None)
    clicked = int(trace.customdata[5])
    assert browser.feature == clicked and f"Feature {clicked}" in view.card.value
    assert list(view.scatter.data[1].x) == [pytest.approx(float(browser.overview.density[clicked]))]
    view.feature_box.value = picked
    assert browser.feature == picked and f"Feature {picked}" in view.card.value
    view.slider.value = 3.0
    assert "alpha = 3.00 ×" in view.steering.value and browser.alpha == 3.0
    assert not view.errors.outputs


def test_a_dead_feature_has_no_steering(model, acts):
    sae = saelab.TiedSAE(128, 64, seed=0)
    sae.metadata.update(hook_name="blocks.2.hook_resid_post", layer=2)
    with torch.no_grad():
        sae.encoder.bias[7] = -1e6      # never fires
    b = browse(model, sae, acts, feature=7, n_texts=1)
    assert b.steering() is None and "never fires" in b.html()


@pytest.mark.parametrize("kwargs, message", [
    (dict(activations="rows"), "activations: expected a single-layer Activations"),
    (dict(activations=torch.zeros(4, 128)), "activations: expected a single-layer Activations (the browser"),
    (dict(model=object()), "model: expected a TransformerLens HookedTransformer"),
    (dict(feature=10_000), "feature: expected an int in [0,"),
    (dict(alpha=5.0), "alpha: expected a number from 0 to 4.0"),
    (dict(alpha=-1.0), "alpha: expected a finite number >= 0"),
    (dict(k=0), "k: expected an int >= 1"),
    (dict(prompts=[1, 2]), "prompts[0]: expected a str"),
    (dict(texts=[]), "texts: expected a non-empty list"),
])
def test_arguments_are_checked_at_the_door(model, ref_sae, acts, kwargs, message):
    args = {**dict(model=model, sae=ref_sae, activations=acts), **kwargs}
    with pytest.raises(ValueError) as error:
        browse(**args)
    assert message in str(error.value)


def test_methods_check_their_arguments(browser):
    with pytest.raises(ValueError, match="query: expected a string"):
        browser.search(3)
    with pytest.raises(ValueError, match="feature: expected an int"):
        browser.select(-1)
    with pytest.raises(ValueError, match="part: expected one of"):
        browser.section_html("cards")
    assert isinstance(browser, FeatureBrowser)
