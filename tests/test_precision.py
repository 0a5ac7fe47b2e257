"""$SAELAB_PRECISION: float64 training and collection (for regenerating the solutions), results in the caller's dtype."""
import copy

import pytest
import torch

import saelab
from saelab.precision import PRECISION_ENV, working_dtype
from saelab.sae.tied import TiedSAE
from saelab.training.trainer import train_sae


def test_working_dtype_follows_the_setting(monkeypatch):
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    assert working_dtype(torch.float32, "cpu") == torch.float32
    monkeypatch.setenv(PRECISION_ENV, "float32")
    assert working_dtype(torch.float16, "cpu") == torch.float16
    monkeypatch.setenv(PRECISION_ENV, "float64")
    assert working_dtype(torch.float32, "cpu") == torch.float64
    with pytest.raises(ValueError, match=r"SAELAB_PRECISION=float64: the device mps has no float64"):
        working_dtype(torch.float32, "mps")
    monkeypatch.setenv(PRECISION_ENV, "double")
    with pytest.raises(ValueError, match=r"SAELAB_PRECISION: expected one of \['float32', 'float64'\].*'double'"):
        working_dtype(torch.float32, "cpu")


def test_float64_training_is_a_float64_copy_trained_then_rounded(monkeypatch):
    """Under float64 the float32 SAE is initialised and trained in float64 and comes back float32: the same
    weights as a float64 copy trained without the setting, rounded once; float32 training differs."""
    rows = torch.randn(2000, 16, generator=torch.Generator().manual_seed(0)) * 3
    config = saelab.TrainConfig.lab(progress=False, epochs=2)
    monkeypatch.setenv(PRECISION_ENV, "float64")
    sae = TiedSAE(16, 64, seed=0)
    result = train_sae(sae, rows, 1.0, config=config)
    monkeypatch.delenv(PRECISION_ENV)
    reference = TiedSAE(16, 64, seed=0).double()
    train_sae(reference, rows.double(), 1.0, config=config)
    plain = TiedSAE(16, 64, seed=0)
    train_sae(plain, rows, 1.0, config=config)
    assert {p.dtype for p in sae.parameters()} == {torch.float32}
    assert sae.input_scale == reference.input_scale
    for p, q, r in zip(sae.parameters(), reference.parameters(), plain.parameters()):
        assert torch.equal(p, q.float())
        assert not torch.equal(p, r)
    assert result.train_metrics.fvu == pytest.approx(saelab.evaluate(reference.float(), rows).fvu, rel=1e-6)


def test_float64_collection_runs_the_model_in_float64_and_leaves_it_as_it_was(monkeypatch, model, train_texts):
    texts = train_texts[:3]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    plain = saelab.collect_activations(model, texts, [1], max_tokens=500, progress=False)[1].rows
    reference = saelab.collect_activations(copy.deepcopy(model).to(torch.float64), texts, [1], max_tokens=500,
                                           progress=False)[1].rows
    monkeypatch.setenv(PRECISION_ENV, "float64")
    rows = saelab.collect_activations(model, texts, [1], max_tokens=500, progress=False)[1].rows
    assert rows.dtype == torch.float32 and torch.equal(rows, reference) and not torch.equal(rows, plain)
    assert model.cfg.dtype == torch.float32
    after = model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


def test_float64_ce_loss_recovered_runs_the_model_in_float64(monkeypatch, model, train_texts):
    sae = TiedSAE(model.cfg.d_model, 64, seed=0)
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    plain = saelab.ce_loss_recovered(model, sae, train_texts[:2], 1)
    reference = saelab.ce_loss_recovered(copy.deepcopy(model).to(torch.float64), copy.deepcopy(sae).double(),
                                         train_texts[:2], 1)
    monkeypatch.setenv(PRECISION_ENV, "float64")
    result = saelab.ce_loss_recovered(model, sae, train_texts[:2], 1)
    assert (result.clean, result.spliced, result.zero_ablation) == (reference.clean, reference.spliced,
                                                                    reference.zero_ablation)
    assert result.clean != plain.clean and model.cfg.dtype == next(model.parameters()).dtype == torch.float32
    assert sae.W_dec.dtype == torch.float32


def test_float64_evaluate_encodes_in_float64_and_gives_the_sae_back_unchanged(monkeypatch, ref_sae):
    """A SAELens SAE too: its weights and its cfg.dtype come back exactly as they were."""
    rows = torch.randn(3000, ref_sae.d_in, generator=torch.Generator().manual_seed(1)) * 3
    before = ref_sae.W_dec.clone()
    own_cfg = ref_sae.sae.cfg.dtype
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    plain = saelab.evaluate(ref_sae, rows)
    reference = saelab.evaluate(copy.deepcopy(ref_sae).to(dtype=torch.float64), rows)
    monkeypatch.setenv(PRECISION_ENV, "float64")
    result = saelab.evaluate(ref_sae, rows)
    assert (result.mse, result.l0, result.dead_fraction) == (reference.mse, reference.l0, reference.dead_fraction)
    assert result.mse != plain.mse
    assert ref_sae.W_dec.dtype == torch.float32 and torch.equal(ref_sae.W_dec, before)
    assert ref_sae.sae.cfg.dtype == own_cfg


def test_float64_ablation_runs_model_and_sae_in_float64(monkeypatch, model, ref_sae, test_texts):
    """feature_ablation's tiny loss changes (where the feature is silent: ~1e-6 nats) come from a float64
    forward and a float64 log-softmax, so another CPU's rounding cannot move their third digit."""
    texts = test_texts[:3]
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    plain = saelab.feature_ablation(model, ref_sae, texts, 7, progress=False)
    reference = saelab.feature_ablation(copy.deepcopy(model).to(torch.float64),
                                        copy.deepcopy(ref_sae).to(dtype=torch.float64), texts, 7, progress=False)
    monkeypatch.setenv(PRECISION_ENV, "float64")
    result = saelab.feature_ablation(model, ref_sae, texts, 7, progress=False)
    assert result.table.delta_loss.tolist() == reference.table.delta_loss.tolist()
    assert result.table.delta_loss.tolist() != plain.table.delta_loss.tolist()
    assert model.cfg.dtype == torch.float32 and ref_sae.W_dec.dtype == torch.float32
