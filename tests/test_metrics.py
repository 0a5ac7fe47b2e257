"""evaluate (formulas on hand-made tensors) and ce_loss_recovered on the embedded model."""
import math

import pytest
import torch

from saelab.metrics import CELossResult, EvalResult, ce_loss_recovered, evaluate
from saelab.sae.tied import TiedSAE


def _hand_sae():
    """d_model 2, 3 features: W rows [1,0], [0,1], [0,0]; b_enc [0, -1, -1]; b_dec 0.

    features = relu(x + [0, -1]) for the first two, feature 2 never fires; reconstruction = those two.
    """
    sae = TiedSAE(2, 3, seed=0)
    with torch.no_grad():
        sae.encoder.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        sae.encoder.bias.copy_(torch.tensor([0.0, -1.0, -1.0]))
        sae.decoder_bias.zero_()
    return sae


X = torch.tensor([[1.0, 2.0], [3.0, 0.0], [-1.0, 1.0], [2.0, 2.0]])
# features: [1,1,0], [3,0,0], [0,0,0], [2,1,0]  -> reconstructions [1,1], [3,0], [0,0], [2,1]
# errors x - x_hat: [0,1], [0,0], [-1,1], [0,1] -> squared norms 1, 0, 2, 1 (sum 4)
# ||x||^2: 5, 9, 2, 8 (mean 6); E x = [5/4, 5/4] -> ||E x||^2 = 50/16; variance = 6 - 3.125 = 2.875


@pytest.mark.parametrize("batch_size", [4096, 1, 3])
def test_evaluate_matches_hand_computed_values(batch_size):
    result = evaluate(_hand_sae(), X, batch_size=batch_size)
    assert isinstance(result, EvalResult)
    assert result.n_tokens == 4
    assert result.mse == pytest.approx(4 / 8)  # mean over 4 rows x 2 dims
    assert result.explained_variance == pytest.approx(1 - (4 / 4) / 2.875)
    assert result.fvu == pytest.approx((4 / 4) / 2.875)
    assert result.l0 == pytest.approx((2 + 1 + 0 + 2) / 4)
    assert result.l1 == pytest.approx((2 + 3 + 0 + 3) / 4)
    torch.testing.assert_close(result.feature_density, torch.tensor([3 / 4, 2 / 4, 0.0]))
    assert result.dead_fraction == pytest.approx(1 / 3)
    assert result.dense_fraction == pytest.approx(2 / 3)


def test_dense_threshold_is_more_than_ten_percent_of_tokens():
    sae = TiedSAE(1, 2, seed=0)
    with torch.no_grad():
        sae.encoder.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        sae.encoder.bias.zero_()
    x = torch.tensor([[1.0]] * 10 + [[-1.0]] * 10)  # feature 0 on half the rows, feature 1 on the other half
    assert evaluate(sae, x).dense_fraction == 1.0
    x = torch.tensor([[1.0]] * 9 + [[-1.0]])  # feature 1 on exactly 10%: not dense
    result = evaluate(sae, x)
    assert result.dense_fraction == 0.5 and result.feature_density[1].item() == pytest.approx(0.1)


def test_evaluate_agrees_with_the_seed_loss_and_saelens_explained_variance():
    from sae_lens.evals import ExplainedVarianceCalculator

    sae = TiedSAE(16, 64, seed=0)
    x = torch.randn(300, 16) * 2 + 3  # a large mean makes the variance formula matter
    result = evaluate(sae, x, batch_size=64)
    _, stats = sae.compute_loss(x)
    assert result.mse == pytest.approx(stats["recon"], rel=1e-5)
    assert result.l0 == pytest.approx(stats["n_active"], rel=1e-6)
    assert result.l1 / sae.n_features == pytest.approx(stats["sparsity"], rel=1e-5)
    calc = ExplainedVarianceCalculator()
    with torch.no_grad():
        for batch in x.split(64):
            calc.add_batch(sae(batch)[0], batch)
    assert result.explained_variance == pytest.approx(calc.compute(), rel=1e-6)


def test_evaluate_as_dict_and_constant_rows():
    result = evaluate(_hand_sae(), torch.ones(5, 2))
    assert math.isnan(result.explained_variance) and math.isnan(result.fvu)  # zero variance
    d = result.as_dict()
    assert "feature_density" not in d and d["n_tokens"] == 5 and set(d) == {
        "mse", "explained_variance", "fvu", "l0", "l1", "dead_fraction", "dense_fraction", "n_tokens"}


@pytest.mark.parametrize("args, kwargs, match", [
    ((torch.zeros(4, 3),), {}, r"activations: expected rows of width d_model = 2 \(the SAE's\), got 3"),
    ((torch.zeros(0, 2),), {}, r"activations: expected at least one row, got 0 rows"),
    ((torch.tensor([[0.0, float("nan")]]),), {}, r"activations: expected finite values"),
    ((torch.zeros(3),), {}, r"activations: expected a single-layer Activations or a float tensor"),
    ((X,), {"batch_size": 0}, r"batch_size: expected an int >= 1"),
])
def test_evaluate_bad_inputs(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        evaluate(_hand_sae(), *args, **kwargs)


def test_evaluate_rejects_other_modules():
    with pytest.raises(ValueError, match=r"sae: expected a saelab TiedSAE.*saelab.load_sae"):
        evaluate(torch.nn.Linear(2, 3), X)


# --------------------------------------------------------------------------- ce_loss_recovered

def _identity_sae(d_model):
    """An exact TiedSAE identity: W = [I; -I], so relu(x) W_top + relu(-x) W_bottom = x."""
    sae = TiedSAE(d_model, 2 * d_model, seed=0)
    eye = torch.eye(d_model)
    with torch.no_grad():
        sae.encoder.weight.copy_(torch.cat([eye, -eye]))
        sae.encoder.bias.zero_()
        sae.decoder_bias.zero_()
    return sae


def _zero_sae(d_model):
    sae = TiedSAE(d_model, 8, seed=0)
    for p in sae.parameters():
        p.data.zero_()
    return sae


TEXTS = ["The capital of France is Paris.", "def fibonacci(n):\n    return n", "Hi",
         "I am so happy today, and the quick brown fox jumps over the lazy dog again and again."]


def test_exact_reconstruction_recovers_all_of_the_loss(model):
    result = ce_loss_recovered(model, _identity_sae(model.cfg.d_model), TEXTS, layer=1)
    assert isinstance(result, CELossResult)
    assert result.spliced == pytest.approx(result.clean, abs=1e-5)
    assert result.score == pytest.approx(1.0, abs=1e-4)
    assert result.zero_ablation > result.clean
    assert result.n_tokens == sum(model.to_tokens(t).shape[1] - 1 for t in TEXTS)


def test_zero_reconstruction_scores_zero_and_bos_is_kept_when_excluded(model):
    kept = ce_loss_recovered(model, _zero_sae(model.cfg.d_model), TEXTS, layer=2, exclude_bos=True)
    replaced = ce_loss_recovered(model, _zero_sae(model.cfg.d_model), TEXTS, layer=2, exclude_bos=False)
    for r in (kept, replaced):
        assert r.spliced == pytest.approx(r.zero_ablation, abs=1e-6) and r.score == pytest.approx(0.0, abs=1e-4)
    assert kept.clean == pytest.approx(replaced.clean, abs=1e-9)
    assert abs(kept.zero_ablation - replaced.zero_ablation) > 1e-4  # the BOS position was left alone
    assert kept.n_tokens == replaced.n_tokens


def test_padding_does_not_change_the_loss(model):
    sae = TiedSAE(model.cfg.d_model, 256, seed=1)
    one_by_one = ce_loss_recovered(model, sae, TEXTS, layer=0, batch_size=1)
    batched = ce_loss_recovered(model, sae, TEXTS, layer=0, batch_size=4)
    for key in ("clean", "spliced", "zero_ablation"):
        assert getattr(batched, key) == pytest.approx(getattr(one_by_one, key), rel=1e-5), key
    assert batched.score == pytest.approx(one_by_one.score, abs=1e-3)  # a ratio of small differences
    assert batched.n_tokens == one_by_one.n_tokens


def test_every_token_is_predicted_whatever_the_context_length(model):
    """Texts longer than context_length are read in windows (each starting with BOS): every token of
    every text is predicted once, whatever the window size."""
    for context_length in (4, 7, None):
        result = ce_loss_recovered(model, _identity_sae(model.cfg.d_model), TEXTS, layer=0,
                                   context_length=context_length)
        assert result.n_tokens == sum(model.to_tokens(t).shape[1] - 1 for t in TEXTS)


@pytest.mark.parametrize("kwargs, match", [
    (dict(layer=99), r"layer: expected an int in \[0, 3\]"),
    (dict(layer=0, hook="nonsense"), r"hook: expected a hook name"),
    (dict(layer=0, texts=[]), r"texts: expected a non-empty list of strings"),
    (dict(layer=0, texts=[1, 2]), r"texts\[0\]: expected a str, got int 1"),
    (dict(layer=1.0), r"layer: expected an int \(a layer number"),
    (dict(layer=0, context_length=10_000), r"context_length: expected at most the model's n_ctx"),
    (dict(layer=0, context_length=1), r"context_length: expected an int >= 2"),
    (dict(layer=0, batch_size=0), r"batch_size: expected an int >= 1"),
    (dict(layer=0, texts=["fine", ""]), r"texts\[1\]: str '' tokenizes to no tokens"),
])
def test_ce_loss_recovered_bad_inputs(model, kwargs, match):
    kwargs = {"texts": TEXTS, **kwargs}
    with pytest.raises(ValueError, match=match):
        ce_loss_recovered(model, _identity_sae(model.cfg.d_model), **kwargs)


# --------------------------------------------------------------------------- the SAE interface

def test_as_sae_admits_a_tied_sae_with_the_whole_interface():
    from saelab.sae.interface import as_sae

    sae = TiedSAE(6, 10, seed=0)
    assert as_sae("sae", sae) is sae
    assert (sae.d_in, sae.d_sae) == (6, 10) and sae.b_dec is sae.decoder_bias and sae.W_dec.shape == (10, 6)
    assert sae.hook_name is None and sae.layer is None
    sae.metadata.update(hook_name="blocks.2.hook_resid_post", layer=2)
    assert sae.hook_name == "blocks.2.hook_resid_post" and sae.layer == 2
    for name in ("d_in", "d_sae", "b_dec", "hook_name", "layer"):
        with pytest.raises(AttributeError):
            setattr(sae, name, 1)
    x = torch.randn(3, 6)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode_unchecked(x), sae.encode(x), rtol=0, atol=0)
        f = sae.encode(x)
        torch.testing.assert_close(sae.decode_unchecked(f), sae.decode(f), rtol=0, atol=0)
    for bad in (torch.nn.Linear(6, 10), "sae", None):
        with pytest.raises(ValueError, match=r"^model_sae: expected a saelab TiedSAE or a SAELens SAE \(load one with saelab.load_sae\), got "):
            as_sae("model_sae", bad)


def test_l0_and_densities_count_nonzero_features_as_saelens_does():
    """A negative feature (AbsTopK-like) is active: L0 and densities count f != 0, L1 sums |f|."""

    class Signed(TiedSAE):
        def encode_unchecked(self, x):
            return x @ self.W_dec.T  # no ReLU: features of both signs

    sae = Signed(2, 2, seed=0)
    with torch.no_grad():
        sae.encoder.weight.copy_(torch.eye(2))
        sae.decoder_bias.zero_()
    result = evaluate(sae, torch.tensor([[-1.0, 0.0], [2.0, -3.0]]))
    assert result.l0 == pytest.approx(1.5) and result.l1 == pytest.approx(3.0)
    torch.testing.assert_close(result.feature_density, torch.tensor([1.0, 0.5]))


def test_evaluate_on_cpu_sums_in_float64_on_the_device():
    from saelab.models import accumulation

    assert accumulation("cpu") == (torch.float64, torch.device("cpu"))
    sae = TiedSAE(16, 64, seed=0)
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(0)) * 2 + 3
    result = evaluate(sae, x, batch_size=64)
    with torch.no_grad():
        sq_err = sum((sae(b)[0] - b).pow(2).sum(dtype=torch.float64) for b in x.split(64))
    assert result.mse == (sq_err / 300).item() / 16  # bit-identical to float64 sums on the CPU


def test_ce_conventions_saelens_leaves_out_bos_predictions_and_zeroes_bos(model):
    sae = TiedSAE(model.cfg.d_model, 256, seed=1)
    ours = ce_loss_recovered(model, sae, TEXTS, layer=1)
    theirs = ce_loss_recovered(model, sae, TEXTS, layer=1, conventions="saelens")
    assert theirs.n_tokens == ours.n_tokens - len(TEXTS)  # no prediction made at BOS
    assert theirs.zero_ablation != pytest.approx(ours.zero_ablation, abs=1e-4)
    with pytest.raises(ValueError, match=r"conventions: expected one of \['saelab', 'saelens'\], got str 'x'"):
        ce_loss_recovered(model, sae, TEXTS, layer=1, conventions="x")


def test_ce_of_many_saes_shares_passes_and_equals_each_alone(model, test_texts):
    from saelab.metrics import ce_loss_recovered, ce_loss_recovered_many

    saes = [_identity_sae(model.cfg.d_model), _zero_sae(model.cfg.d_model), TiedSAE(model.cfg.d_model, 256, seed=3)]
    many = ce_loss_recovered_many(model, saes, test_texts[:3], 2)
    for sae, result in zip(saes, many):
        alone = ce_loss_recovered(model, sae, test_texts[:3], 2)
        assert (alone.clean, alone.spliced, alone.zero_ablation, alone.score) == \
            (result.clean, result.spliced, result.zero_ablation, result.score)
    assert many[0].score == pytest.approx(1.0) and many[1].score < many[0].score
    with pytest.raises(ValueError, match="saes: expected a non-empty list of SAEs"):
        ce_loss_recovered_many(model, [], test_texts[:3], 2)
    with pytest.raises(ValueError, match=r"saes\[1\]: expected a saelab TiedSAE or a SAELens SAE"):
        ce_loss_recovered_many(model, [saes[0], "nope"], test_texts[:3], 2)


@pytest.mark.parametrize("n", [2, 7, 100, 1000])
def test_identical_rows_have_zero_variance_at_any_scale(n):
    """Issue 19 row 8: n copies of one row (any scale) give NaN explained variance, never -1e10."""
    sae = TiedSAE(16, 32, seed=0)
    for scale in (1e-3, 1.0, 1e3):
        row = torch.randn(1, 16, generator=torch.Generator().manual_seed(n)) * scale
        result = evaluate(sae, row.repeat(n, 1))
        assert math.isnan(result.explained_variance) and math.isnan(result.fvu), (n, scale, result)
    varied = torch.randn(n, 16, generator=torch.Generator().manual_seed(0)) * 1e-2 + 100  # a small spread far from 0: not constant
    assert math.isfinite(evaluate(sae, varied).explained_variance)
