"""The seed's three exercises as library functions: sparsity_sweep, feature_correlation, compare_layers."""
import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

matplotlib.use("Agg")

from saelab.activations import collect_activations  # noqa: E402
from saelab.experiments import (compare_layers, feature_correlation, seed_layers, seed_sweep_layer,  # noqa: E402
                                sparsity_sweep)
from saelab.experiments import layers as layers_module  # noqa: E402
from saelab.experiments.correlation import top_correlated_pairs  # noqa: E402
from saelab.sae import TiedSAE  # noqa: E402
from saelab.train import train_sae  # noqa: E402

SEED_COEFS = (1e-2, 1e-3, 1e-4)


@pytest.fixture(scope="module")
def layer(model):
    return seed_sweep_layer(model)


@pytest.fixture(scope="module")
def acts(model, train_texts, layer):
    """~2000 training rows of the sweep's layer."""
    return collect_activations(model, train_texts[:12], layer, max_tokens=2000, progress=False)


@pytest.fixture(scope="module")
def held_out(model, test_texts, layer):
    return collect_activations(model, test_texts[:6], layer, max_tokens=800, progress=False)


@pytest.fixture(scope="module")
def short_sweep(acts, held_out):
    return sparsity_sweep(acts, eval_activations=held_out, steps=30, progress=False)


# ----------------------------------------------------------------------------- layer mapping

def test_seed_layers_scale_the_seeds_layers_to_the_models_depth(model):
    assert seed_layers(12) == (2, 10)
    assert seed_layers(24) == (4, 20)
    assert seed_layers(model) == seed_layers(4) == (1, 3)
    assert seed_layers(2) == (0, 1)
    assert seed_layers(1) == (0,)
    assert seed_sweep_layer(12) == 6 and seed_sweep_layer(model) == 2 and seed_sweep_layer(1) == 0
    with pytest.raises(ValueError, match="n_layers"):
        seed_layers(0)


# ----------------------------------------------------------------------------- sparsity sweep

def test_stacked_sweep_equals_sequential_train_sae_runs(acts):
    """Same seed, same batches, same init: the stacked SAEs are the separate runs' SAEs."""
    sweep = sparsity_sweep(acts, coefs=SEED_COEFS, steps=25, seed=3, progress=False)
    for coef in SEED_COEFS:
        alone = train_sae(TiedSAE(acts.d_model, 4 * acts.d_model, seed=3), acts, sparsity_coef=coef, steps=25,
                          seed=3, progress=False)
        for name, value in alone.sae.state_dict().items():
            torch.testing.assert_close(sweep.saes[coef].state_dict()[name], value, rtol=1e-5, atol=1e-6)
        pd.testing.assert_frame_equal(sweep.histories[coef], alone.history, rtol=1e-5)
        assert sweep.table.set_index("coef").loc[coef, "l0"] == pytest.approx(alone.train_metrics.l0, rel=1e-5)
        assert sweep.saes[coef].metadata["sparsity_coef"] == coef
        assert sweep.saes[coef].metadata["layer"] == acts.layer


def test_sweep_l0_falls_as_the_coefficient_rises(acts):
    """At the seed's coefficients the L1 term is small next to the MSE (on the embedded model, L0
    differs by ~0.05 of ~140 after 400 steps), but it is monotone: the SAEs start equal and each
    coefficient pushes the features down harder than the next smaller one."""
    sweep = sparsity_sweep(acts, coefs=SEED_COEFS, steps=400, progress=False)
    l0 = sweep.table.set_index("coef")["l0"]
    assert l0[1e-2] < l0[1e-3] < l0[1e-4], l0.to_dict()
    l1 = sweep.table.set_index("coef")["l1"]
    assert l1[1e-2] < l1[1e-3] < l1[1e-4], l1.to_dict()
    assert sweep.evaluated_on == "training data"
    assert (sweep.table["evaluated_on"] == "training data").all()


def test_sweep_result_table_plot_and_repr(short_sweep, held_out):
    t = short_sweep.table
    assert list(t["coef"]) == list(SEED_COEFS)
    for column in ("mse", "explained_variance", "fvu", "l0", "l1", "dead_fraction", "dense_fraction"):
        assert t[column].notna().all(), column
    np.testing.assert_allclose(t["fvu"], 1 - t["explained_variance"])
    assert short_sweep.evaluated_on == "held-out" and (t["n_tokens"] == len(held_out)).all()
    assert set(short_sweep.saes) == set(SEED_COEFS)
    assert all(isinstance(s, TiedSAE) and s.n_features == 4 * s.d_model for s in short_sweep.saes.values())
    assert list(short_sweep.histories[1e-3].columns) == ["step", "loss", "recon", "sparsity", "l0"]
    fig = short_sweep.plot()
    labels = [text.get_text() for text in fig.axes[0].texts]
    assert labels and all(label.startswith("coef=") for label in labels)  # points that coincide share a label
    assert sorted(float(c) for label in labels for c in label[5:].split(", ")) == sorted(SEED_COEFS)
    assert fig.axes[0].get_xlabel().startswith("L0")
    html = short_sweep._repr_html_()
    assert "Sparsity sweep" in html and "<table" in html and "held-out" in html
    assert repr(short_sweep).startswith("Sparsity sweep") and "explained_variance" in repr(short_sweep)
    short_sweep.plot_history()


def test_sweep_reports_ce_loss_recovered_with_model_and_texts(model, acts):
    sweep = sparsity_sweep(acts, coefs=(1e-3,), steps=10, model=model, texts=["def f(x):\n    return x + 1\n"],
                           progress=False)
    row = sweep.table.iloc[0]
    assert math.isfinite(row["ce_loss_recovered"]) and row["ce_loss_spliced"] >= 0
    assert len(sweep.plot().axes) == 2


@pytest.mark.parametrize("coefs, match", [((), "coefs"), ([], "coefs"), ((1e-3, 0.0), r"coefs\[1\]"),
                                          ((-1e-3,), r"coefs\[0\]"), ((float("nan"),), r"coefs\[0\]"),
                                          ((float("inf"),), r"coefs\[0\]"), ((1e-3, 1e-3), "distinct"),
                                          ("1e-3", "coefs")])
def test_sweep_rejects_bad_coefficients(coefs, match):
    with pytest.raises(ValueError, match=match):
        sparsity_sweep(torch.randn(100, 8), coefs=coefs, steps=1, progress=False)


def test_sweep_rejects_bad_inputs(model, acts):
    with pytest.raises(ValueError, match="at least one row"):
        sparsity_sweep(torch.empty(0, 8), steps=1, progress=False)
    with pytest.raises(ValueError, match="eval_activations"):
        sparsity_sweep(torch.randn(100, 8), eval_activations=torch.randn(10, 9), steps=1, progress=False)
    with pytest.raises(ValueError, match="model, texts"):
        sparsity_sweep(acts, model=model, steps=1, progress=False)
    with pytest.raises(ValueError, match="layer"):
        sparsity_sweep(acts, model=model, texts=["hi"], layer=9, steps=1, progress=False)
    with pytest.raises(ValueError, match="n_features"):
        sparsity_sweep(acts, n_features=0, steps=1, progress=False)
    with pytest.raises(ValueError, match="activations"):
        sparsity_sweep(acts.rows[:, :, None], steps=1, progress=False)


# ----------------------------------------------------------------------------- feature correlation

def _dense_reference(sae, rows, min_density):
    with torch.no_grad():
        features = sae.encode(rows).double().numpy()
    ids = np.flatnonzero((features > 0).mean(axis=0) > min_density)
    return ids, np.corrcoef(features[:, ids].T)


def test_feature_correlation_matches_numpy_corrcoef(short_sweep, acts):
    sae = short_sweep.saes[1e-3]
    result = feature_correlation(sae, acts, min_density=0.01, top_k=10, batch_size=97, progress=False)
    ids, reference = _dense_reference(sae, acts.rows, 0.01)
    assert len(ids) >= 5
    np.testing.assert_array_equal(result.features, ids)
    np.testing.assert_allclose(result.matrix, reference, atol=1e-6)
    # the top pairs: distinct (i < j), highest first, and the k largest off-diagonal values
    pairs = list(zip(result.table["feature_i"], result.table["feature_j"]))
    assert len(pairs) == 10 and len(set(pairs)) == 10 and all(i < j for i, j in pairs)
    upper = reference[np.triu_indices(len(ids), k=1)]
    np.testing.assert_allclose(result.table["correlation"], np.sort(upper)[::-1][:10], atol=1e-6)
    assert list(result.table["correlation"]) == sorted(result.table["correlation"], reverse=True)
    i, j = pairs[0]
    w = sae.W_dec.detach().double()
    assert result.table["decoder_cosine"].iloc[0] == pytest.approx(
        float(w[i] @ w[j] / (w[i].norm() * w[j].norm())), abs=1e-6)
    assert result.table["density_i"].iloc[0] == pytest.approx(float((sae.encode(acts.rows)[:, i] > 0).float().mean()))
    # the checks' reference gives the same pairs from the dense features
    with torch.no_grad():
        dense_pairs = top_correlated_pairs(sae.encode(acts.rows), k=10, min_density=0.01)
    assert [(a, b) for a, b, _ in dense_pairs] == pairs
    assert "top pair" in repr(result) and "<table" in result._repr_html_()


def test_feature_correlation_heatmap(short_sweep, acts):
    result = feature_correlation(short_sweep.saes[1e-3], acts, min_density=0.0, progress=False)
    assert len(result.features) > 100  # more than the heatmap shows
    fig = result.heatmap()
    ax = fig.axes[0]
    image = ax.get_images()[0]
    assert image.get_cmap().name == "RdBu_r" and image.get_clim() == (-1, 1)
    shown = [int(t.get_text()) for t in ax.get_xticklabels()]
    assert len(shown) == 100 and shown == sorted(shown)
    top = set(result.table["feature_i"]) | set(result.table["feature_j"])
    assert top <= set(shown)  # the top pairs' features are always shown


def test_feature_correlation_without_frequent_features_says_so(acts):
    sae = TiedSAE(acts.d_model, 64, seed=0)
    with torch.no_grad():
        sae.encoder.bias.fill_(-1e4)  # nothing ever fires
    result = feature_correlation(sae, acts, progress=False)
    assert result.table.empty and len(result.features) == 0
    assert "No feature is active" in repr(result) and "No feature is active" in result._repr_html_()
    fig = result.heatmap()
    assert any("No feature is active" in t.get_text() for t in fig.axes[0].texts)


def test_constant_features_give_no_nan_pairs():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(500, 8, generator=g)
    sae = TiedSAE(8, 16, seed=1)
    with torch.no_grad():
        sae.encoder.weight[3] = 0.0
        sae.encoder.bias[3] = 2.0        # feature 3 is 2.0 on every row: zero variance
    result = feature_correlation(sae, rows, min_density=0.0, top_k=200, batch_size=64, progress=False)
    assert result.constant_features == [3]
    assert result.table["correlation"].notna().all() and len(result.table) > 0
    assert 3 not in set(result.table["feature_i"]) | set(result.table["feature_j"])
    assert np.isfinite(result.matrix).all()


def test_feature_correlation_rejects_bad_inputs(acts):
    sae = TiedSAE(acts.d_model, 64, seed=0)
    with pytest.raises(ValueError, match="d_model"):
        feature_correlation(TiedSAE(16, 64), acts, progress=False)
    with pytest.raises(ValueError, match="at least one row"):
        feature_correlation(sae, torch.empty(0, acts.d_model), progress=False)
    with pytest.raises(ValueError, match="min_density"):
        feature_correlation(sae, acts, min_density=1.5, progress=False)
    with pytest.raises(ValueError, match="top_k"):
        feature_correlation(sae, acts, top_k=0, progress=False)
    with pytest.raises(ValueError, match="sae"):
        feature_correlation("sae", acts, progress=False)


# ----------------------------------------------------------------------------- layer comparison

def test_compare_layers_collects_once_and_reports_fvu(model, train_texts, monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return collect_activations(*args, **kwargs)

    monkeypatch.setattr(layers_module, "collect_activations", spy)
    result = compare_layers(model, train_texts[:6], max_tokens=600, epochs=1, steps=20, progress=False)
    assert len(calls) == 1 and list(calls[0][0][2]) == [1, 3]  # both layers in one collection pass
    t = result.table
    assert list(t["layer"]) == [1, 3]
    assert (t["fvu"] > 0).all() and np.allclose(t["fvu"], 1 - t["explained_variance"])
    assert (t["activation_norm"] > 0).all() and t["activation_norm"].iloc[1] != t["activation_norm"].iloc[0]
    assert all(len(top) == 5 for top in t["top_features"])
    assert set(result.saes) == {1, 3} and all(s.metadata["layer"] == layer for layer, s in result.saes.items())
    p = result.prompt_table
    assert len(p) == 4 * 2 and set(p["prompt_name"]) == {"Code", "Question", "Emotion", "Factual"}
    assert (p["n_active"] >= 0).all() and (p["strongest_value"] >= 0).all()
    # the stacked per-layer SAEs are what train_sae gives on each layer alone
    alone = train_sae(TiedSAE(model.cfg.d_model, 4 * model.cfg.d_model, seed=0), result.activations[3],
                      sparsity_coef=5e-4, steps=20, progress=False)
    torch.testing.assert_close(result.saes[3].W_dec, alone.sae.W_dec, rtol=1e-5, atol=1e-6)
    fig = result.plot()
    assert [ax.get_title().split("\n")[0] for ax in fig.axes] == ["activation norm", "MSE", "FVU", "L0"]
    assert "FVU" in repr(result) and "Last token" in result._repr_html_()


def test_compare_layers_rejects_bad_layers_before_collecting(model, train_texts, monkeypatch):
    monkeypatch.setattr(layers_module, "collect_activations", lambda *a, **k: pytest.fail("collected"))
    for bad in ([7], [1, 4], [], ["1"], [1.0]):
        with pytest.raises(ValueError, match="layers"):
            compare_layers(model, train_texts[:2], layers=bad, progress=False)
    with pytest.raises(ValueError, match="test_prompts"):
        compare_layers(model, train_texts[:2], test_prompts={"x": ""}, progress=False)
    with pytest.raises(ValueError, match="sparsity_coef"):
        compare_layers(model, train_texts[:2], sparsity_coef=float("nan"), progress=False)
