"""The result protocol (saelab.results): every result type, built from a real small run on the tiny
model, has a non-empty `.table`, a one-line `.summary()`, a repr and an HTML display that show the
summary, and displays its numbers at 3 significant digits while `.table` keeps every digit."""
import html
import re

import pandas as pd
import pytest
import torch

import saelab
from saelab.results import Result, change, fmt, format_table, pct

DECIMAL = re.compile(r"(?<![\w.])-?\d+\.\d+(?:e[-+]\d+)?(?![\w.])")


def significant_digits(number: str) -> int:
    """How many significant digits a displayed decimal number shows ("0.0123" -> 3, "1.00e-07" -> 3)."""
    mantissa = number.lstrip("-").split("e")[0].replace(".", "")
    return len(mantissa.lstrip("0")) or 1


@pytest.fixture(scope="module")
def runs(model, train_texts, test_texts):
    """One small real run of every tool: {result type name: result}."""
    torch.manual_seed(0)
    acts = saelab.collect_activations(model, train_texts[:8], [0, 1], max_tokens=600, progress=False)
    train, held_out = acts[1], saelab.collect_activations(model, test_texts[:4], [1], max_tokens=300,
                                                          progress=False)[1]
    d = model.cfg.d_model
    trained = saelab.train_sae(saelab.TiedSAE(d, 4 * d, seed=0), train, steps=20, progress=False,
                               eval_activations=held_out)
    sae = trained.sae
    feature = int(saelab.evaluate(sae, train).feature_density.argmax())
    return {
        "TrainResult": trained,
        "EvalResult": saelab.evaluate(sae, held_out),
        "CELossResult": saelab.ce_loss_recovered(model, sae, test_texts[:3], layer=1),
        "SweepResult": saelab.sparsity_sweep(train, coefs=[1e-3, 1e-2], eval_activations=held_out, steps=10,
                                             progress=False),
        "CorrelationResult": saelab.feature_correlation(sae, train, progress=False),
        "LayerComparison": saelab.compare_layers(model, train_texts[:4], layers=[0, 1], steps=10, max_tokens=400,
                                                 progress=False),
        "TopExamples": saelab.top_activating_examples(sae, train, feature, k=3),
        "LogitEffects": saelab.feature_logit_effects(model, sae, feature, k=3),
        "FeatureCard": saelab.feature_card(model, sae, train, feature, k=3),
        "FeatureMatches": saelab.match_features(sae, saelab.TiedSAE(d, 2 * d, seed=1)),
        "SteeringResult": saelab.steering_effect(model, sae, feature, ["def f(x):"], alphas=[2.0], n_new=3,
                                                 hook_name="blocks.1.hook_resid_post"),
        "TieComparison": saelab.untied_twin(sae, train, held_out, config=saelab.TrainConfig.lab(steps=20, progress=False)),
        "AblationResult": saelab.feature_ablation(model, sae, test_texts[:2], feature, k=3,
                                                  hook_name="blocks.1.hook_resid_post", progress=False),
    }


def test_every_result_type_is_exported():
    assert set(saelab.RESULT_TYPES) == {"TrainResult", "EvalResult", "CELossResult", "SweepResult",
                                        "CorrelationResult", "LayerComparison", "TopExamples", "LogitEffects",
                                        "FeatureCard", "FeatureMatches", "SteeringResult", "AblationResult",
                                        "TieComparison"}
    for name in saelab.RESULT_TYPES + ("TrainConfig", "as_sae", "Result"):
        assert name in saelab.__all__ and getattr(saelab, name) is not None, name


@pytest.mark.parametrize("name", saelab.RESULT_TYPES)
def test_result_protocol(runs, name):
    result = runs[name]
    cls = getattr(saelab, name)
    assert issubclass(cls, Result) and isinstance(result, cls)
    table = result.table
    assert isinstance(table, pd.DataFrame) and len(table) > 0 and len(table.columns) > 0
    summary = result.summary()
    assert isinstance(summary, str) and summary.strip() and "\n" not in summary
    text, page = repr(result), result._repr_html_()
    assert text.startswith(summary)
    assert html.escape(summary) in page
    # the numbers shown: every float of the shown table at <= 3 significant digits, in the repr and the HTML
    shown = result.shown_table()
    floats = [(c, v) for c in shown.columns for v in shown[c] if isinstance(v, float) and v == v]
    assert floats or name in ("TopExamples",), "a result with no float column tests nothing here"
    for column, value in floats:
        assert significant_digits(fmt(value)) <= 3, (column, value)   # the promise: 3 significant digits
    formatted = format_table(shown)
    for column in shown.columns:
        for cell in formatted[column]:
            if isinstance(cell, str) and DECIMAL.fullmatch(cell):
                assert significant_digits(cell) <= 3, (column, cell)
    assert all(fmt(v) in text for _, v in floats[:20])
    for number in DECIMAL.findall(summary):
        assert significant_digits(number) <= 3, (summary, number)


def test_tables_keep_full_precision(runs):
    metrics = runs["EvalResult"]
    assert metrics.table["mse"].iloc[0] == metrics.mse and metrics.table["fvu"].iloc[0] == metrics.fvu
    assert fmt(metrics.mse) in repr(metrics) and repr(metrics.mse) not in repr(metrics)
    ce = runs["CELossResult"]
    assert ce.table["score"].iloc[0] == ce.score and ce.table["clean"].iloc[0] == ce.clean
    card = runs["FeatureCard"]
    assert card.table["density"].iloc[0] == card.density and card.table["feature"].iloc[0] == card.feature


def test_mse_says_it_is_per_dimension(runs):
    metrics = runs["EvalResult"]
    assert "MSE per dimension" in metrics.summary() and "SAELens" in repr(metrics) and "SAELens" in metrics._repr_html_()


@pytest.mark.parametrize("value, shown", [
    (0.5, "0.500"), (14.627, "14.6"), (1234.5, "1230"), (0.012345, "0.0123"), (9.996, "10.0"), (-2.5, "-2.50"),
    (1e-7, "1.00e-07"), (3e8, "3.00e+08"), (0.0, "0"), (float("nan"), "nan"), (7, "7"), (True, "True"), ("a", "a"),
])
def test_fmt_shows_three_significant_digits(value, shown):
    assert fmt(value) == shown


@pytest.mark.parametrize("value, said", [
    (0.0743, "rises by 0.0743"), (-0.0743, "falls by 0.0743"), (0, "does not change"), (-2.34e-6, "falls by 2.34e-06"),
    (float("nan"), "changes by nan"),
])
def test_change_says_the_direction_in_words(value, said):
    assert change(value) == said


def test_ablation_summary_says_falls_for_a_feature_whose_removal_helps():
    table = pd.DataFrame({"activation": [1.0, 0.0, 0.0], "delta_loss": [-0.0743, 2e-6, 0.0]})
    said = saelab.AblationResult(feature=3, table=table).summary()
    assert said == ("Ablating feature 3: next-token loss falls by 0.0743 nats on the 1 tokens where it fires and "
                    "rises by 1.00e-06 on the 2 where it does not")


def test_pct_and_format_table():
    assert pct(0.12345) == "12.3%" and pct(1) == "100%"
    table = pd.DataFrame({"x": [0.123456, 2.0], "n": [1, 2], "s": ["a", "b"], "mixed": [0.98765, "t"]})
    shown = format_table(table)
    assert shown["x"].tolist() == ["0.123", "2.00"] and shown["n"].tolist() == [1, 2]
    assert shown["mixed"].tolist() == ["0.988", "t"] and table["x"].iloc[0] == 0.123456  # a copy
