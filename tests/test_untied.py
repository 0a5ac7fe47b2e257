"""The untied twin (the lab's optional section): SAELens's standard SAE started from a tied SAE, trained
by the same recipe with its coefficient steered to the tied SAE's L0."""
import math

import pytest
import torch

import saelab
from saelab.experiments.untied import untied_twin
from saelab.sae.saelens import SAELensSAE
from saelab.sae.untied import fold_input_scale, untied_start

pytest.importorskip("sae_lens")

TRAIN_ROWS = 40_000   # 2 epochs of batch 256: 314 steps, a few seconds per SAE on 2 cores
COEF = 2.0            # L0 about 35 on these rows: the tied SAE has ~11% dense features, its twin ~7%


@pytest.fixture(scope="module")
def rows(model):
    train = saelab.collect_activations(model, saelab.load_texts("train"), [2], max_tokens=TRAIN_ROWS,
                                       progress=False)[2]
    held_out = saelab.collect_activations(model, saelab.load_texts("test"), [2], max_tokens=5_000, progress=False)[2]
    return train, held_out


@pytest.fixture(scope="module")
def tie(rows):
    train, held_out = rows
    config = saelab.TrainConfig.lab(progress=False)
    tied = saelab.sparsity_sweep(train, coefs=[COEF], config=config, n_features=512, progress=False).saes[COEF]
    return saelab.untied_twin(tied, train, held_out, config=config)


def test_untied_start_then_fold_computes_what_the_tied_sae_computes():
    tied = saelab.TiedSAE(16, 48, seed=3)
    with torch.no_grad():
        tied.encoder.bias.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
        tied.decoder_bias.normal_(0, 0.3, generator=torch.Generator().manual_seed(2))
    tied.input_scale = 2.5
    twin = fold_input_scale(untied_start(tied), tied.input_scale)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0)) * 3
    assert isinstance(twin, SAELensSAE) and twin.architecture == "standard"
    torch.testing.assert_close(twin.encode(x), tied.encode(x), rtol=1e-5, atol=1e-5)
    f = tied.encode(x)
    torch.testing.assert_close(twin.decode(f), tied.decode(f), rtol=1e-5, atol=1e-5)
    assert float(tied.encode(x).gt(0).float().mean()) > 0.1   # the comparison is not between two zero codes


def test_the_twin_matches_the_l0_and_has_fewer_dense_features(tie):
    t, u = tie.tied_metrics, tie.untied_metrics
    assert abs(u.l0 / t.l0 - 1) < 0.03, (t.l0, u.l0)                  # measured: +0.6% to +0.9% (2 seeds)
    assert t.dense_fraction > 0.05                                    # the tied SAE has dense features here
    assert u.dense_fraction < 0.8 * t.dense_fraction, (t.dense_fraction, u.dense_fraction)   # 0.60-0.67x
    assert u.fvu < t.fvu + 0.005, (t.fvu, u.fvu)                       # as good a reconstruction
    table = tie.table.set_index("sae")
    assert table.loc["tied (yours)", "enc_dec_cosine"] == 1.0
    assert 0.5 < table.loc["untied twin", "enc_dec_cosine"] < 0.95     # its encoder rows moved off the decoder's
    assert torch.allclose(tie.untied.W_dec.norm(dim=1), torch.full((512,), tie.tied.input_scale), rtol=1e-4)
    assert "dense features" in tie.summary() and len(tie.history) > 10
    assert isinstance(tie, saelab.Result) and repr(tie).startswith(tie.summary()) and "untied twin" in tie._repr_html_()
    fig = tie.plot()
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[:2] == [f"tied (yours): {int(table.loc['tied (yours)', 'n_dense'])} dense",
                          f"untied twin: {int(table.loc['untied twin', 'n_dense'])} dense"]


def test_the_twin_is_deterministic_and_follows_the_recipe(rows):
    train, held_out = rows
    config = saelab.TrainConfig.lab(progress=False, steps=25)
    tied = saelab.sparsity_sweep(train, coefs=[COEF], config=config, n_features=64, progress=False).saes[COEF]
    a, b = (untied_twin(tied, train, held_out, config=config) for _ in range(2))
    assert torch.equal(a.untied.sae.W_enc, b.untied.sae.W_enc) and a.untied_metrics.fvu == b.untied_metrics.fvu
    assert a.history["step"].iloc[-1] == 25 and math.isclose(a.history["coef"].iloc[0], COEF, rel_tol=0.5)


def test_untied_twin_refuses_what_it_cannot_use(rows, ref_sae):
    train, held_out = rows
    with pytest.raises(ValueError, match="sae: expected a trained saelab TiedSAE"):
        untied_twin(ref_sae, train, held_out)
    untrained = saelab.TiedSAE(128, 64, seed=0)
    with pytest.raises(ValueError, match="coef: expected a starting coefficient"):
        untied_twin(untrained, train, held_out)
    with pytest.raises(ValueError, match="eval_activations"):
        untied_twin(untrained, train, torch.zeros(4, 7), coef=1.0)
    with pytest.raises(ValueError, match="config"):
        untied_twin(untrained, train, held_out, config={"lr": 1e-3}, coef=1.0)
