"""TiedSAE: the seed's math exactly, seeding, input checks, and the SAELens on-disk format."""
import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from saelab.sae.folder_format import CFG_FILENAME, WEIGHTS_FILENAME
from saelab.sae.tied import TiedSAE


from seed_reference import SparseAutoencoder  # noqa: E402  (tests/ is on sys.path)
from subprocess_run import run_python  # noqa: E402


D, N = 16, 64


def _pair(seed=3):
    """The seed's class and a TiedSAE with the same (trained-looking, non-zero bias) weights."""
    torch.manual_seed(seed)
    ref = SparseAutoencoder(D, N)
    with torch.no_grad():
        ref.decoder_bias.normal_()
    sae = TiedSAE(D, N)
    sae.load_state_dict(ref.state_dict())
    return ref, sae


@pytest.mark.parametrize("shape", [(32, D), (3, 5, D), (D,)])
def test_same_outputs_and_loss_as_seed_class(shape):
    ref, sae = _pair()
    x = torch.randn(*shape) * 3
    for a, b in zip(ref(x), sae(x)):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(ref.encode(x), sae.encode(x), rtol=0, atol=0)
    f = sae.encode(x)
    torch.testing.assert_close(ref.decode(f), sae.decode(f), rtol=0, atol=0)
    loss_ref, stats_ref = ref.compute_loss(x, sparsity_coef=0.05)
    loss, stats = sae.compute_loss(x, sparsity_coef=0.05)
    assert set(stats) == {"recon", "sparsity", "n_active"}
    assert loss.item() == pytest.approx(loss_ref.item(), rel=1e-6)
    for key in stats_ref:
        assert stats[key] == pytest.approx(stats_ref[key], rel=1e-6), key


@pytest.mark.parametrize("shape", [(32, D), (2, 7, D), (D,)])
def test_hand_written_backward_matches_autograd_for_every_input(shape):
    """TiedSAE's backward (tied_gradients with k = 1) against autograd through the seed's class: the
    parameters' and the input's gradients, with a scaled loss. The stacked path (k > 1) is tested below."""
    ref, sae = _pair()
    x_ref = (torch.randn(*shape) * 3).requires_grad_()
    x = x_ref.detach().clone().requires_grad_()
    (3.0 * ref.compute_loss(x_ref, sparsity_coef=0.2)[0]).backward()
    (3.0 * sae.compute_loss(x, sparsity_coef=0.2)[0]).backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    for (name, p_ref), p in zip(ref.named_parameters(), sae.parameters()):  # gradients of size ~50
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-5, atol=1e-5, msg=name)


def test_seeded_init_equals_seed_class_after_manual_seed_and_leaves_global_rng_alone():
    torch.manual_seed(7)
    ref = SparseAutoencoder(D, N)
    state = torch.random.get_rng_state()
    sae = TiedSAE(D, N, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(sae.encoder.weight, ref.encoder.weight)
    assert torch.equal(sae.encoder.bias, ref.encoder.bias)
    assert torch.equal(sae.decoder_bias, torch.zeros(D))


def test_seeded_init_is_the_same_under_every_cpu_kernel():
    """torch's scalar uniform_ kernel rounds differently from its vectorised one (half the weights differ in
    the last bit: training grows that into other features); TiedSAE's init is the same under each."""
    code = ("import hashlib, torch; from saelab.sae.tied import TiedSAE; s = TiedSAE(128, 512, seed=0); "
            "print(hashlib.sha1(s.encoder.weight.detach().numpy().tobytes() + "
            "s.encoder.bias.detach().numpy().tobytes()).hexdigest())")
    digests = {}
    for kernel in ("default", "avx2"):
        done = run_python(["-c", code], timeout=300, ATEN_CPU_CAPABILITY=kernel)
        assert done.returncode == 0, done.stderr
        digests[kernel] = done.stdout.strip()
    sae = TiedSAE(128, 512, seed=0)
    here = hashlib.sha1(sae.encoder.weight.detach().numpy().tobytes() + sae.encoder.bias.detach().numpy().tobytes())
    assert digests["default"] == digests["avx2"] == here.hexdigest()


def test_same_seed_same_weights_different_seed_different_weights():
    a, b, c = TiedSAE(D, N, seed=1), TiedSAE(D, N, seed=1), TiedSAE(D, N, seed=2)
    assert torch.equal(a.encoder.weight, b.encoder.weight) and torch.equal(a.encoder.bias, b.encoder.bias)
    assert not torch.equal(a.encoder.weight, c.encoder.weight)


def test_unseeded_init_uses_the_global_rng_like_the_seed():
    torch.manual_seed(11)
    ref = SparseAutoencoder(D, N)
    torch.manual_seed(11)
    sae = TiedSAE(D, N)
    assert torch.equal(sae.encoder.weight, ref.encoder.weight)


def test_tied_decoder_and_attributes():
    sae = TiedSAE(D, N, seed=0)
    assert sae.W_dec is sae.encoder.weight
    assert tuple(sae.W_dec.shape) == (N, D) and (sae.d_model, sae.n_features) == (D, N)
    assert sorted(n for n, _ in sae.named_parameters()) == ["decoder_bias", "encoder.bias", "encoder.weight"]
    assert sae.metadata == {}


@pytest.mark.parametrize("call, match", [
    (lambda s: s.encode(torch.randn(4, D + 1)), r"x: expected .*d_model = 16, got a tensor of shape \[4, 17\]"),
    (lambda s: s(torch.randn(4, 3)), r"x: expected .*d_model = 16"),
    (lambda s: s.compute_loss(torch.randn(4, 8)), r"x: expected .*d_model = 16"),
    (lambda s: s.decode(torch.randn(4, D)), r"features: expected .*n_features = 64, got a tensor of shape \[4, 16\]"),
    (lambda s: s.encode(torch.tensor([[float("nan")] * D])), r"x: expected finite values"),
    (lambda s: s.compute_loss(torch.full((2, D), float("inf"))), r"x: expected finite values"),
    (lambda s: s.encode(torch.ones(2, D, dtype=torch.int64)), r"x: expected a float tensor"),
    (lambda s: s.encode([[0.0] * D]), r"x: expected a float tensor .*got list"),
    (lambda s: s.encode(torch.randn(2, D, dtype=torch.float64)), r"x: expected torch.float32 on cpu"),
    (lambda s: s.compute_loss(torch.randn(2, D), sparsity_coef=-1e-3), r"sparsity_coef: expected a finite number >= 0"),
    (lambda s: s.compute_loss(torch.randn(2, D), sparsity_coef=float("nan")), r"sparsity_coef: expected a finite"),
])
def test_bad_inputs_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(TiedSAE(D, N, seed=0))


@pytest.mark.parametrize("args, match", [
    ((0, 8), r"d_model: expected an int >= 1, got int 0"),
    ((8, 2.5), r"n_features: expected an int >= 1, got float 2.5"),
    ((8, 8, -1), r"seed: expected an int >= 0 or None, got int -1"),
])
def test_bad_constructor_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        TiedSAE(*args)


def _trained_looking(seed=5):
    sae = TiedSAE(D, N, seed=seed)
    with torch.no_grad():
        sae.encoder.bias.normal_(0, 0.1)
        sae.decoder_bias.normal_()
    sae.metadata = {"hook_name": "blocks.1.hook_resid_post", "layer": 1, "model_name": "tiny", "lr": 1e-3}
    return sae


def test_save_writes_the_saelens_format(tmp_path):
    sae = _trained_looking()
    sae.save(tmp_path / "sae")
    assert sorted(p.name for p in (tmp_path / "sae").iterdir()) == [CFG_FILENAME, WEIGHTS_FILENAME]
    cfg = json.loads((tmp_path / "sae" / CFG_FILENAME).read_text())
    assert cfg["architecture"] == "standard" and (cfg["d_in"], cfg["d_sae"]) == (D, N)
    assert cfg["apply_b_dec_to_input"] is False and cfg["normalize_activations"] == "none"
    assert cfg["dtype"] == "float32"
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post" and cfg["metadata"]["lr"] == 1e-3
    weights = load_file(str(tmp_path / "sae" / WEIGHTS_FILENAME))
    assert {k: tuple(v.shape) for k, v in weights.items()} == {
        "W_enc": (D, N), "W_dec": (N, D), "b_enc": (N,), "b_dec": (D,)}
    assert torch.equal(weights["W_enc"], sae.encoder.weight.T) and torch.equal(weights["W_dec"], sae.encoder.weight)


def test_round_trip_through_saelab(tmp_path):
    sae = _trained_looking()
    sae.save(tmp_path / "sae")
    back = TiedSAE.load(tmp_path / "sae", device="cpu")
    assert back.metadata == sae.metadata
    for a, b in zip(sae.state_dict().values(), back.state_dict().values()):
        assert torch.equal(a, b)


def test_saelens_loads_the_folder_and_agrees(tmp_path):
    from sae_lens import SAE

    sae = _trained_looking()
    sae.save(tmp_path / "sae")
    loaded = SAE.load_from_disk(str(tmp_path / "sae"), device="cpu")
    assert loaded.cfg.d_in == D and loaded.cfg.d_sae == N and loaded.cfg.apply_b_dec_to_input is False
    assert loaded.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    x = torch.randn(20, D) * 2
    with torch.no_grad():
        features = sae.encode(x)
        torch.testing.assert_close(loaded.encode(x), features, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loaded.decode(features), sae.decode(features), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loaded(x), sae(x)[0], rtol=1e-5, atol=1e-5)


def test_load_rejects_untied_weights_naming_the_file(tmp_path):
    sae = _trained_looking()
    folder = sae.save(tmp_path / "sae")
    weights = load_file(str(folder / WEIGHTS_FILENAME))
    weights["W_enc"] = weights["W_enc"] + 0.01
    save_file(weights, str(folder / WEIGHTS_FILENAME))
    with pytest.raises(RuntimeError, match=r"sae_weights.safetensors: expected a tied SAE with W_enc == W_dec.T"):
        TiedSAE.load(folder, device="cpu")


@pytest.mark.parametrize("damage, error, match", [
    (lambda f: (f / CFG_FILENAME).unlink(), FileNotFoundError, r"cfg.json is missing"),
    (lambda f: (f / WEIGHTS_FILENAME).unlink(), FileNotFoundError, r"sae_weights.safetensors is missing"),
    (lambda f: (f / CFG_FILENAME).write_text("{not json"), RuntimeError, r"cfg.json is corrupt: not valid JSON"),
    (lambda f: (f / WEIGHTS_FILENAME).write_bytes(b"\x00garbage" * 10), RuntimeError,
     r"sae_weights.safetensors is corrupt"),
    (lambda f: _edit_cfg(f, d_in=D + 1), RuntimeError, r"sae_weights.safetensors: expected W_enc .*shape \[17, 64\]"),
    (lambda f: _edit_cfg(f, apply_b_dec_to_input=True), RuntimeError, r"cfg.json: TiedSAE needs apply_b_dec_to_input"),
    (lambda f: _edit_cfg(f, architecture="topk"), RuntimeError, r"cfg.json: TiedSAE needs architecture=\"standard\""),
    (lambda f: _edit_cfg(f, d_sae="many"), RuntimeError, r"cfg.json: expected a positive integer 'd_sae'"),
])
def test_load_reports_damaged_folders(tmp_path, damage, error, match):
    folder = _trained_looking().save(tmp_path / "sae")
    damage(folder)
    with pytest.raises(error, match=match):
        TiedSAE.load(folder, device="cpu")


def test_load_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere is not a folder"):
        TiedSAE.load(tmp_path / "nowhere", device="cpu")


def _edit_cfg(folder, **changes):
    cfg = json.loads((folder / CFG_FILENAME).read_text())
    cfg.update(changes)
    (folder / CFG_FILENAME).write_text(json.dumps(cfg))


def test_tied_gradients_of_stacked_saes_equal_each_saes_autograd_gradients():
    """The one hand-written gradient (used by the trainer for k SAEs at once and by TiedSAE's backward
    with k = 1) against autograd on the seed's loss, per SAE, with different coefficients."""
    from saelab.sae.tied import tied_gradients

    g = torch.Generator().manual_seed(0)
    k, rows, coefs = 3, 20, (0.0, 0.05, 2.0)
    x = torch.randn(rows, D, generator=g) * 2
    W = torch.randn(k, N, D, generator=g) * 0.3
    b_enc, b_dec = torch.randn(k, N, generator=g) * 0.1, torch.randn(k, D, generator=g)
    features = torch.relu(torch.baddbmm(b_enc.unsqueeze(1), x.expand(k, rows, D), W.transpose(1, 2)))
    grad_out = (torch.baddbmm(b_dec.unsqueeze(1), features, W) - x) * (2.0 / (rows * D))
    sparsity = torch.tensor([c / (rows * N) for c in coefs]).view(-1, 1, 1)
    grad_W, grad_b_enc, grad_b_dec, _ = tied_gradients(x.expand(k, rows, D), W, features, grad_out, sparsity)
    for i, coef in enumerate(coefs):
        w, be, bd = (t[i].clone().requires_grad_() for t in (W, b_enc, b_dec))
        f = torch.relu(x @ w.T + be)
        (torch.nn.functional.mse_loss(f @ w + bd, x) + coef * f.abs().mean()).backward()
        torch.testing.assert_close(grad_W[i], w.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad_b_enc[i], be.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad_b_dec[i], bd.grad, rtol=1e-5, atol=1e-6)
