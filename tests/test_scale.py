"""Coefficients that mean the same on every activation scale (issue 13, point 2): `TrainConfig.normalize`
and `TiedSAE.input_scale` through training, encode/decode, saving, loading, SAELens export and CE splicing."""
import math

import pytest
import torch

from saelab import TiedSAE, TrainConfig, collect_activations, evaluate, train_sae
from saelab.training.initialise import density_biases, row_scale, start_from_rows
from saelab.training.trainer import train_stacked

LAYER, COEFS = 2, (1.0, 4.0)


@pytest.fixture(scope="module")
def rows(model):
    """(training rows [~9k, 128], held-out rows [2000, 128]) of tiny's layer 2."""
    from saelab.data import load_texts
    train = collect_activations(model, load_texts("train", max_texts=60), [LAYER], progress=False)[LAYER]
    test = collect_activations(model, load_texts("test", max_texts=20), [LAYER], max_tokens=2000,
                               progress=False)[LAYER]
    return train.rows, test.rows


def _l0_fvu(train, test, factor: float, normalize: bool) -> list[tuple[float, float]]:
    config = TrainConfig.lab(normalize=normalize, epochs=2, progress=False)
    out = []
    for coef in COEFS:
        sae = TiedSAE(128, 512, seed=0)
        train_sae(sae, train * factor, coef, config=config)
        m = evaluate(sae, test * factor)
        out.append((m.l0, m.fvu))
    return out


def test_each_coefficient_gives_the_same_l0_and_fvu_at_any_activation_scale(rows):
    train, test = rows
    base = _l0_fvu(train, test, 1.0, normalize=True)
    assert all(5 < l0 < 200 for l0, _ in base) and base[1][0] < 0.7 * base[0][0]  # the coefficients matter
    for factor in (0.1, 10.0, 100.0):
        for (l0, fvu), (l0_ref, fvu_ref) in zip(_l0_fvu(train, test, factor, normalize=True), base):
            assert abs(l0 - l0_ref) <= 0.05 * l0_ref, (factor, l0, l0_ref)
            assert abs(fvu - fvu_ref) <= 0.01, (factor, fvu, fvu_ref)


def test_without_normalisation_the_same_coefficient_means_something_else(rows):
    train, test = rows  # the test above can fail: without normalize, rows at 0.1x give other L0s
    raw, scaled = _l0_fvu(train, test, 1.0, normalize=False), _l0_fvu(train, test, 0.1, normalize=False)
    assert max(abs(l0 - l0_ref) / l0_ref for (l0, _), (l0_ref, _) in zip(scaled, raw)) > 0.3  # L0 57 -> 7 at coef 4


def test_row_scale_is_the_root_mean_square_per_dimension(rows):
    train, _ = rows
    expected = math.sqrt(train.double().pow(2).sum().item() / train.numel())
    assert row_scale(train) == pytest.approx(expected, rel=1e-12)
    assert row_scale(train * 10) == pytest.approx(10 * expected, rel=1e-6)
    with pytest.raises(ValueError, match="every row is zero"):
        row_scale(torch.zeros(4, 3))


def _scaled_sae(scale: float = 3.0) -> TiedSAE:
    sae = TiedSAE(128, 512, seed=0)
    sae.input_scale = scale
    return sae


def test_encode_and_decode_apply_the_scale(rows):
    _, test = rows
    sae, x = _scaled_sae(3.0), test[:50]
    W, b_enc, b_dec = sae.encoder.weight, sae.encoder.bias, sae.decoder_bias
    with torch.no_grad():
        f = torch.relu((x / 3.0) @ W.T + b_enc)
        torch.testing.assert_close(sae.encode(x), f)
        torch.testing.assert_close(sae.decode(f), 3.0 * (f @ W + b_dec))
        torch.testing.assert_close(sae.W_dec, 3.0 * W)
        torch.testing.assert_close(sae.b_dec, 3.0 * b_dec)
        loss, stats = sae.compute_loss(x, 1.0)   # the seed's loss on x / s
        expected = ((f @ W + b_dec - x / 3.0) ** 2).mean() + f.mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert "input_scale=3" in repr(sae)
    for bad in (0.0, -1.0, float("nan"), "2"):
        with pytest.raises(ValueError, match="input_scale: expected a finite number > 0"):
            sae.input_scale = bad


def test_save_folds_the_scale_for_saelens_and_load_unfolds_it(rows, tmp_path):
    from sae_lens import SAE

    _, test = rows
    sae = _scaled_sae(2.5)
    sae.save(tmp_path / "sae")
    loaded = TiedSAE.load(tmp_path / "sae", device="cpu")
    assert loaded.input_scale == 2.5 and "saelab_input_scale" not in loaded.metadata
    x = test[:200]
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), sae.encode(x), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(loaded.decode(sae.encode(x)), sae.decode(sae.encode(x)), rtol=1e-6, atol=1e-5)
        lens = SAE.load_from_disk(str(tmp_path / "sae"), device="cpu")   # SAELens reads raw rows
        torch.testing.assert_close(lens.encode(x), sae.encode(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lens.decode(lens.encode(x)), sae.decode(sae.encode(x)), rtol=1e-5, atol=1e-4)


def test_ce_splicing_of_a_scaled_sae_matches_its_saelens_export(model, test_texts, tmp_path):
    from sae_lens import SAE

    from saelab.metrics import ce_loss_recovered

    acts = collect_activations(model, test_texts, [LAYER], max_tokens=3000, progress=False)[LAYER]
    sae = TiedSAE(128, 512, seed=0)
    train_sae(sae, acts, 4.0, config=TrainConfig.lab(progress=False, epochs=3))
    assert sae.input_scale == pytest.approx(row_scale(acts), rel=1e-12)
    sae.save(tmp_path / "sae")
    exported = SAE.load_from_disk(str(tmp_path / "sae"), device="cpu")   # a SAELens SAE on raw rows
    ours, theirs = (ce_loss_recovered(model, s, test_texts[:3], LAYER) for s in (sae, exported))
    assert 0.5 < ours.score <= 1.0
    assert ours.spliced == pytest.approx(theirs.spliced, rel=1e-4)


def test_stacked_saes_with_different_scales_equal_each_trained_alone(rows):
    train, _ = rows
    sources, config = [train[:3000], 5.0 * train[3000:6000]], TrainConfig.lab(progress=False)
    stacked = [TiedSAE(128, 512, seed=0) for _ in sources]
    train_stacked(stacked, sources, [4.0, 4.0], config)
    for sae, source in zip(stacked, sources):
        alone = TiedSAE(128, 512, seed=0)
        train_stacked([alone], [source], [4.0], config)
        assert alone.input_scale == sae.input_scale
        torch.testing.assert_close(alone.encoder.weight, sae.encoder.weight, rtol=0, atol=0)
    assert stacked[1].input_scale > 4 * stacked[0].input_scale


def test_the_lab_start_norms_rows_and_sets_each_feature_to_its_density(rows):
    train, _ = rows
    sae = TiedSAE(128, 512, seed=0)
    start_from_rows([sae], [train], TrainConfig.lab())
    assert sae.input_scale == pytest.approx(row_scale(train))
    torch.testing.assert_close(sae.encoder.weight.norm(dim=1), torch.ones(512))
    density = (sae.encode(train) > 0).float().mean(0)
    assert density.mean().item() == pytest.approx(0.05, abs=0.01) and density.max() < 0.15
    before = sae.encoder.bias.detach().clone()
    sae.metadata["trainer"] = "saelab.train_sae"   # a trained SAE keeps its weights and its scale
    start_from_rows([sae], [10 * train], TrainConfig.lab())
    assert torch.equal(sae.encoder.bias, before) and sae.input_scale == pytest.approx(row_scale(train))


def test_density_biases_fire_each_feature_on_the_fraction_asked():
    rows, weight = torch.randn(1000, 8, generator=torch.Generator().manual_seed(0)), torch.randn(16, 8)
    biases = density_biases(weight, rows, 0.05)
    fired = ((rows @ weight.T + biases) > 0).sum(0)
    assert (fired == 50).all()
