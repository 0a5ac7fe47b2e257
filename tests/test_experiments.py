"""The seed's three exercises as library functions: sparsity_sweep, feature_correlation, compare_layers."""
import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

matplotlib.use("Agg")

from saelab.activations.collect import collect_activations  # noqa: E402
from saelab.experiments import (compare_layers, feature_correlation, notebook_layer, notebook_layers,  # noqa: E402
                                sparsity_sweep)
from saelab.metrics import ce_loss_recovered, evaluate  # noqa: E402
from saelab.experiments import layers as layers_module  # noqa: E402
from saelab.experiments.correlation import top_correlated_pairs  # noqa: E402
from saelab.sae.tied import TiedSAE  # noqa: E402
from saelab.training.trainer import train_sae  # noqa: E402

NOTEBOOK_COEFS = (1e-2, 1e-3, 1e-4)


@pytest.fixture(scope="module")
def layer(model):
    return notebook_layer(model)


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

def test_notebook_layers_scale_the_notebooks_layers_to_the_models_depth(model):
    assert notebook_layers(12) == (2, 10)
    assert notebook_layers(24) == (4, 20)
    assert notebook_layers(model) == notebook_layers(4) == (1, 3)
    assert notebook_layers(2) == (0, 1)
    assert notebook_layers(1) == (0,)
    assert notebook_layer(12) == 6 and notebook_layer(model) == 2 and notebook_layer(1) == 0
    with pytest.raises(ValueError, match="n_layers"):
        notebook_layers(0)


# ----------------------------------------------------------------------------- sparsity sweep

def test_stacked_sweep_equals_sequential_train_sae_runs(acts):
    """Same seed, same batches, same init: the stacked SAEs are the separate runs' SAEs."""
    sweep = sparsity_sweep(acts, coefs=NOTEBOOK_COEFS, steps=25, seed=3, progress=False)
    for coef in NOTEBOOK_COEFS:
        alone = train_sae(TiedSAE(acts.width, 4 * acts.width, seed=3), acts, sparsity_coef=coef, steps=25,
                          seed=3, progress=False)
        for name, value in alone.sae.state_dict().items():  # one trainer core: bit for bit
            assert torch.equal(sweep.saes[coef].state_dict()[name], value), name
        pd.testing.assert_frame_equal(sweep.histories[coef], alone.history, check_exact=True)
        assert sweep.table.set_index("coef").loc[coef, "l0"] == alone.train_metrics.l0
        assert sweep.saes[coef].metadata["sparsity_coef"] == coef
        assert sweep.saes[coef].metadata["layer"] == acts.layer


def test_sweep_l0_falls_as_the_coefficient_rises(acts):
    """Coefficients far apart (as `saelab run` uses): L0 and L1 fall by large factors, FVU rises.
    (At the notebook's 1e-4..1e-2 the L1 term is tiny next to the MSE on these rows: L0 moves by
    ~0.05 of ~140, too little to test.)"""
    sweep = sparsity_sweep(acts, coefs=(30.0, 3.0, 1e-3), steps=100, lr=5e-3, progress=False)
    t = sweep.table.set_index("coef")
    assert t.loc[30.0, "l0"] < 0.4 * t.loc[3.0, "l0"] and t.loc[3.0, "l0"] < 0.95 * t.loc[1e-3, "l0"], t["l0"]
    assert t.loc[30.0, "l1"] < 0.4 * t.loc[3.0, "l1"] < 0.4 * t.loc[1e-3, "l1"], t["l1"]
    assert t.loc[30.0, "fvu"] > 2 * t.loc[3.0, "fvu"] > 2 * t.loc[1e-3, "fvu"], t["fvu"]
    assert sweep.evaluated_on == "training data"
    assert (sweep.table["evaluated_on"] == "training data").all()


def test_sweep_result_table_plot_and_repr(short_sweep, held_out):
    t = short_sweep.table
    assert list(t["coef"]) == list(NOTEBOOK_COEFS)
    for column in ("mse", "explained_variance", "fvu", "l0", "l1", "dead_fraction", "dense_fraction"):
        assert t[column].notna().all(), column
    np.testing.assert_allclose(t["fvu"], 1 - t["explained_variance"])
    assert short_sweep.evaluated_on == "held-out" and (t["n_tokens"] == len(held_out)).all()
    assert set(short_sweep.saes) == set(NOTEBOOK_COEFS)
    assert all(isinstance(s, TiedSAE) and s.n_features == 4 * s.d_model for s in short_sweep.saes.values())
    assert list(short_sweep.histories[1e-3].columns) == ["step", "loss", "recon", "sparsity", "l0"]
    fig = short_sweep.plot()
    labels = [text.get_text() for text in fig.axes[0].texts]
    assert labels and all(label.startswith("coef=") for label in labels)  # points that coincide share a label
    assert sorted(float(c) for label in labels for c in label[5:].split(", ")) == sorted(NOTEBOOK_COEFS)
    assert fig.axes[0].get_xlabel().startswith("L0")
    html = short_sweep._repr_html_()
    assert "Sparsity sweep" in html and "<table" in html and "held-out" in html
    assert repr(short_sweep).startswith("Sparsity sweep") and "explained_variance" in repr(short_sweep)
    ax_recon, ax_l0 = short_sweep.plot_history().axes
    for ax, column in ((ax_recon, "recon"), (ax_l0, "l0")):
        assert [line.get_label() for line in ax.lines] == [f"coef={c:g}" for c in sorted(NOTEBOOK_COEFS)]
        for line, coef in zip(ax.lines, sorted(NOTEBOOK_COEFS)):
            h = short_sweep.histories[coef]
            np.testing.assert_array_equal(line.get_xdata(), h["step"])
            np.testing.assert_array_equal(line.get_ydata(), h[column])


def test_sweep_reports_ce_loss_recovered_with_model_and_texts(model, acts):
    sweep = sparsity_sweep(acts, coefs=(1e-3,), steps=10, model=model, texts=["def f(x):\n    return x + 1\n"],
                           progress=False)
    row = sweep.table.iloc[0]
    direct = ce_loss_recovered(model, sweep.saes[1e-3], ["def f(x):\n    return x + 1\n"], acts.layer)
    assert row["ce_loss_recovered"] == direct.score and row["ce_loss_spliced"] == direct.spliced
    assert row["ce_loss_clean"] == direct.clean and row["ce_loss_spliced"] > row["ce_loss_clean"] > 0
    assert math.isfinite(row["ce_loss_recovered"]) and row["ce_loss_recovered"] < 1
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
    assert len(shown) == 40 and shown == sorted(shown)
    top = set(result.table["feature_i"]) | set(result.table["feature_j"])
    assert top <= set(shown)  # the top pairs' features are always shown


def test_feature_correlation_without_frequent_features_says_so(acts):
    sae = TiedSAE(acts.width, 64, seed=0)
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
    sae = TiedSAE(acts.width, 64, seed=0)
    with pytest.raises(ValueError, match="d_model"):
        feature_correlation(TiedSAE(16, 64), acts, progress=False)
    with pytest.raises(ValueError, match="at least one row"):
        feature_correlation(sae, torch.empty(0, acts.width), progress=False)
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
    for row in t.itertuples():  # what evaluate gives for that layer's SAE on that layer's rows
        m = evaluate(result.saes[row.layer], result.activations[row.layer])
        assert (row.fvu, row.mse, row.l0) == (m.fvu, m.mse, m.l0) and row.fvu == 1 - row.explained_variance
    assert (t["activation_norm"] > 0).all() and t["activation_norm"].iloc[1] != t["activation_norm"].iloc[0]
    assert all(len(top) == 5 for top in t["top_features"])
    assert set(result.saes) == {1, 3} and all(s.metadata["layer"] == layer for layer, s in result.saes.items())
    p = result.prompt_table
    assert len(p) == 4 * 2 and set(p["prompt_name"]) == {"Code", "Question", "Emotion", "Factual"}
    for row in p.itertuples():  # recomputed from the prompt's last token
        from transformer_lens.utilities import get_act_name
        _, cache = model.run_with_cache(row.prompt)
        features = result.saes[row.layer].encode(cache[get_act_name("resid_post", row.layer)][0, -1])
        assert row.n_active == int((features > 0).sum()) and row.strongest_feature == int(features.argmax())
        assert row.strongest_value == pytest.approx(float(features.max()), rel=1e-5)
    # the stacked per-layer SAEs are what train_sae gives on each layer alone
    alone = train_sae(TiedSAE(model.cfg.d_model, 4 * model.cfg.d_model, seed=0), result.activations[3],
                      sparsity_coef=5e-4, steps=20, progress=False)
    assert torch.equal(result.saes[3].W_dec, alone.sae.W_dec)
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


# ----------------------------------------------------------------------------- faults in the stacked trainer

def test_sweep_refuses_non_finite_rows_before_training(acts):
    rows = acts.rows.clone()
    rows[123, 0] = float("nan")
    with pytest.raises(ValueError, match=r"activations: row 123 contains NaN or inf"):
        sparsity_sweep(rows, coefs=(1e-3, 1e-2), steps=5, progress=False)


def test_sweep_with_a_huge_lr_warns_and_keeps_finite_saes(acts):
    with pytest.warns(RuntimeWarning, match=r"training diverged \(sparsity_coef 0.001\)"):
        sweep = sparsity_sweep(acts, coefs=(1e-3, 1e-2), steps=40, lr=1e3, progress=False)
    for sae in sweep.saes.values():
        assert all(torch.isfinite(p).all() for p in sae.parameters()) and not sae.training


def test_sweep_interrupted_returns_partial_saes_in_eval_mode(acts, monkeypatch):
    import saelab.training.trainer as train_module

    real, calls = train_module.gather_rows, []

    def gather(source, index):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(source, index)
    monkeypatch.setattr(train_module, "gather_rows", gather)
    sweep = sparsity_sweep(acts, coefs=(1e-3, 1e-2), steps=30, seed=3, progress=False)
    monkeypatch.undo()
    assert sweep.interrupted and "INTERRUPTED" in sweep.summary()
    four = sparsity_sweep(acts, coefs=(1e-3, 1e-2), steps=4, seed=3, progress=False)
    for coef, sae in sweep.saes.items():
        assert sae.metadata["interrupted_at_step"] == 4 and not sae.training
        assert torch.equal(sae.W_dec, four.saes[coef].W_dec)  # exactly the weights after 4 steps
    pd.testing.assert_frame_equal(sweep.table.drop(columns="n_tokens"), four.table.drop(columns="n_tokens"))


# --------------------------------------------------------------------------- issue 18: the review's defects

def test_a_passed_configs_seed_wins_and_a_conflict_is_an_error(acts):
    from saelab.training.config import TrainConfig
    config = TrainConfig.lab(seed=3, steps=2)
    sweep = sparsity_sweep(acts, coefs=[1.0], config=config, progress=False)
    assert sweep.saes[1.0].metadata["seed"] == 3 and sweep.settings["seed"] == 3
    assert torch.equal(sweep.saes[1.0].encoder.weight,
                       sparsity_sweep(acts, coefs=[1.0], config=config, seed=3, progress=False).saes[1.0].encoder.weight)
    with pytest.raises(ValueError, match=r"seed: got seed=5 and config.seed=3; give it in one place"):
        sparsity_sweep(acts, coefs=[1.0], config=config, seed=5, progress=False)
    with pytest.raises(ValueError, match=r"steps: got steps=4 and config.steps=2"):
        sparsity_sweep(acts, coefs=[1.0], config=config, steps=4, progress=False)
    plain = sparsity_sweep(acts, coefs=[1.0], steps=2, progress=False)            # no config: seed 0
    assert plain.saes[1.0].metadata["seed"] == 0


def test_sweep_and_ce_splice_hooks_other_than_the_residual_stream(model, train_texts):
    """mlp_post rows are d_mlp wide (not d_model), z rows 4-D [b, pos, heads, d_head] flattened: the sweep
    measures CE on both, splicing the reconstruction back in the hook's own shape."""
    texts = train_texts[:3]
    assert model.cfg.d_mlp != model.cfg.d_model
    for hook, width in (("mlp_post", model.cfg.d_mlp), ("z", model.cfg.n_heads * model.cfg.d_head)):
        rows = collect_activations(model, texts, 1, hook=hook, max_tokens=600, progress=False)
        assert rows.width == width
        sweep = sparsity_sweep(rows, coefs=[1.0], steps=5, model=model, texts=texts[:1], progress=False)
        assert math.isfinite(sweep.table["ce_loss_recovered"].iloc[0])
        wrong = TiedSAE(width // 2, 64, seed=0)
        with pytest.raises(ValueError, match=rf"sae: expected an SAE of d_in = {width}, the width of "
                                             rf"blocks.1.{'mlp.hook_post' if hook == 'mlp_post' else 'attn.hook_z'}"):
            ce_loss_recovered(model, wrong, texts[:1], layer=1, hook=hook)
    resid = collect_activations(model, texts, 1, max_tokens=300, progress=False)
    with pytest.raises(ValueError, match=r"model: its blocks.1.hook_resid_post gives rows of width 128, the "
                                         r"activations' rows have width 64"):
        sparsity_sweep(resid.rows[:, :64], coefs=[1.0], steps=1, model=model, texts=texts[:1], layer=1, progress=False)


def test_compare_layers_refuses_a_repeated_layer(model, train_texts):
    with pytest.raises(ValueError, match=r"layers: expected distinct layers, got layer 1 twice"):
        compare_layers(model, train_texts[:2], layers=[1, 1], steps=1, progress=False)


def test_the_evaluation_bar_reaches_its_end(acts, monkeypatch, capsys):
    monkeypatch.setenv("SAELAB_PROGRESS", "1")
    sparsity_sweep(acts, coefs=[1.0, 2.0, 3.0], steps=1, progress=True)
    bars = capsys.readouterr().err
    assert "evaluating: 100%" in bars and "3/3" in bars


def test_experiments_name_the_labs_exercise_numbers():
    """The lab and the checks number the notebook's exercises 3, 4, 5 (Parts 3-5): so do the docstrings."""
    from saelab.experiments import correlation, layers, sparsity
    assert "Exercise 3" in sparsity.__doc__ and "exercise 3" in sparsity_sweep.__doc__
    assert "exercise 4" in feature_correlation.__doc__ and "exercise 5" in compare_layers.__doc__
    for text in (sparsity.__doc__, sparsity_sweep.__doc__, feature_correlation.__doc__, compare_layers.__doc__,
                 correlation.__doc__ or "", layers.__doc__ or ""):
        assert "notebook's exercise" not in text and "Exercise 1," not in text and "Exercise 2," not in text
