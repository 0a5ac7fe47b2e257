"""SAELens SAEs in saelab: load_sae, the SAELensSAE adapter, agreement with SAELens's own evals,
and the shipped reference SAE. SAEs are saved by sae_lens itself after a few SAETrainer steps."""
import json
import sys

import pytest
import torch
from safetensors.torch import save_file

sae_lens = pytest.importorskip("sae_lens")

from sae_lens import (SAETrainer, StandardTrainingSAE, StandardTrainingSAEConfig,  # noqa: E402
                      TopKTrainingSAE, TopKTrainingSAEConfig)
from sae_lens.config import LoggingConfig, SAETrainerConfig  # noqa: E402
from sae_lens.evals import get_downstream_reconstruction_metrics, get_sparsity_and_variance_metrics  # noqa: E402
from sae_lens.saes.sae import SAEMetadata  # noqa: E402
from sae_lens.training.activation_scaler import ActivationScaler  # noqa: E402

from saelab.activations.collect import collect_activations  # noqa: E402
from saelab.data import load_texts  # noqa: E402
from saelab.sae.tied import TiedSAE  # noqa: E402
from saelab.sae.saelens import REFERENCE_SAES, SAELensSAE, is_saelens_sae, load_sae  # noqa: E402

LAYER = 2
HOOK = f"blocks.{LAYER}.hook_resid_post"
CTX = 64


@pytest.fixture(scope="module")
def eval_texts(model):
    """16 held-out texts of exactly CTX tokens (BOS first), so that saelab's windows and SAELens's fixed
    contexts are the same tokens: each text's first CTX - 1 tokens, decoded, kept where they tokenize back."""
    texts = []
    for text in load_texts("test", max_texts=80):
        ids = model.to_tokens(text, move_to_device=False)[0, :CTX]
        cut = model.tokenizer.decode(ids[1:])
        if len(ids) == CTX and torch.equal(model.to_tokens(cut, move_to_device=False)[0], ids):
            texts.append(cut)
    assert len(texts) >= 16
    return texts[:16]


@pytest.fixture(scope="module")
def eval_tokens(model, eval_texts):
    """[n_seq, CTX] token ids: the first CTX tokens (BOS first) of eval_texts."""
    return torch.stack([model.to_tokens(t, move_to_device=False)[0, :CTX] for t in eval_texts])


@pytest.fixture(scope="module")
def eval_rows(model, eval_tokens):
    """[n_rows, 128] layer-2 resid_post rows of eval_tokens, BOS rows left out (as run_evals leaves them)."""
    _, cache = model.run_with_cache(eval_tokens, names_filter=[HOOK], stop_at_layer=LAYER + 1)
    keep = eval_tokens != model.tokenizer.bos_token_id
    return cache[HOOK][keep].float()


@pytest.fixture(scope="module")
def train_rows(model, train_texts):
    """[n_rows, 128] layer-2 resid_post rows of 40 training texts."""
    return collect_activations(model, train_texts, [LAYER], progress=False)[LAYER].rows


def _briefly_trained(training_sae, rows, steps=40, batch_size=256):
    """A SAELens training SAE after `steps` SAETrainer steps on mini-batches of rows."""
    g = torch.Generator().manual_seed(0)

    def batches():
        while True:
            yield rows[torch.randint(len(rows), (batch_size,), generator=g)]

    cfg = SAETrainerConfig(total_training_samples=steps * batch_size, train_batch_size_samples=batch_size,
                           lr=3e-3, lr_end=3e-3, device="cpu", logger=LoggingConfig(log_to_wandb=False))
    return SAETrainer(cfg=cfg, sae=training_sae, data_provider=batches()).fit()


@pytest.fixture(scope="module", params=["standard", "topk"])
def saved(request, train_rows, tmp_path_factory):
    """(folder, architecture): a StandardSAE or a TopK SAE (k=12), saved by sae_lens's save_inference_model."""
    torch.manual_seed(0)
    metadata = SAEMetadata(model_name="tiny", hook_name=HOOK, context_size=CTX, prepend_bos=True)
    if request.param == "standard":
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=128, d_sae=256, l1_coefficient=1.0,
                                                            metadata=metadata))
    else:
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=128, d_sae=256, k=12, metadata=metadata))
    sae = _briefly_trained(sae, train_rows)
    folder = tmp_path_factory.mktemp(request.param) / "sae"
    sae.save_inference_model(str(folder))
    return folder, request.param


class _FixedTokens:
    """The one ActivationsStore method SAELens's metric functions call, serving fixed tokens in order."""

    def __init__(self, tokens, batch):
        self.batches = iter(tokens.split(batch))

    def get_batch_tokens(self, n):
        return next(self.batches)


def _saelens_metrics(sae, model, tokens, batch=4):
    """SAELens's own sparsity / variance / density metrics on `tokens`, BOS excluded as run_evals does."""
    return get_sparsity_and_variance_metrics(
        sae, model, _FixedTokens(tokens, batch), ActivationScaler(), n_batches=len(tokens) // batch,
        compute_l2_norms=False, compute_sparsity_metrics=True, compute_variance_metrics=True,
        compute_featurewise_density_statistics=True, eval_batch_size_prompts=batch, model_kwargs={},
        ignore_tokens=[model.tokenizer.bos_token_id])


def _interface_metrics(sae, rows):
    """EV, L0, L1, MSE (mean over dims) and densities through the SAE interface only (evaluate's formulas)."""
    with torch.no_grad():
        x = rows.to(sae.W_dec)
        f = sae.encode(x)
        err = (sae.decode(f) - x).double().pow(2).sum(-1)
    xd = x.double()
    variance = xd.pow(2).sum(-1).mean() - xd.mean(0).pow(2).sum()
    return dict(explained_variance=1 - (err.mean() / variance).item(), l0=(f != 0).sum(-1).double().mean().item(),
                l1=f.abs().sum(-1).double().mean().item(), mse=(err.mean() / sae.d_in).item(),
                density=(f != 0).double().mean(0))


def test_load_sae_gives_the_saelens_sae_and_its_interface(saved):
    folder, architecture = saved
    sae = load_sae(folder, device="cpu")
    original = sae_lens.SAE.load_from_disk(str(folder))
    assert isinstance(sae, SAELensSAE) and sae.architecture == architecture
    assert (sae.d_in, sae.d_sae, sae.hook_name, sae.layer) == (128, 256, HOOK, LAYER)
    assert sae.metadata["model_name"] == "tiny" and sae.metadata["context_size"] == CTX
    assert sae.W_dec.shape == (256, 128) and sae.b_dec.shape == (128,)
    x = torch.randn(3, 5, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features = sae.encode(x)
        assert features.shape == (3, 5, 256)
        assert torch.equal(features, original.encode(x))
        assert torch.equal(sae.decode(features), original.decode(original.encode(x)))
    if architecture == "topk":
        assert bool(((features != 0).sum(-1) <= 12).all())
    assert load_sae(sae) is sae and isinstance(load_sae(original), SAELensSAE)
    assert is_saelens_sae(original) and not is_saelens_sae(sae) and not is_saelens_sae(TiedSAE(4, 8, seed=0))


def test_evaluate_matches_saelens_evals(saved, model, eval_tokens, eval_rows):
    """`evaluate`, through the SAE interface, gives SAELens's own eval numbers on the same tokens."""
    from saelab.metrics import evaluate

    folder, _ = saved
    sae = load_sae(folder, device="cpu")
    theirs, feature_metrics = _saelens_metrics(sae.sae, model, eval_tokens)
    result = evaluate(sae, eval_rows)
    assert 0.1 < result.explained_variance < 1
    assert result.explained_variance == pytest.approx(theirs["explained_variance"], abs=1e-6)
    assert result.l0 == pytest.approx(theirs["l0"], rel=1e-6)  # SAELens averages in float32
    assert result.l1 == pytest.approx(theirs["l1"], rel=1e-6)
    assert result.mse * sae.d_in == pytest.approx(theirs["mse"], rel=1e-6)  # SAELens sums over dimensions
    torch.testing.assert_close(result.feature_density.double(),
                               torch.tensor(feature_metrics["feature_density"], dtype=torch.float64), atol=1e-6, rtol=0)


def test_ce_loss_recovered_with_saelens_conventions_matches_saelens_evals(saved, model, eval_texts, eval_tokens):
    from saelab.metrics import ce_loss_recovered

    sae = load_sae(saved[0], device="cpu")
    theirs = get_downstream_reconstruction_metrics(
        sae.sae, model, _FixedTokens(eval_tokens, 4), ActivationScaler(), compute_kl=False, compute_ce_loss=True,
        n_batches=len(eval_tokens) // 4, eval_batch_size_prompts=4, ignore_tokens=[model.tokenizer.bos_token_id])
    ours = ce_loss_recovered(model, sae, eval_texts, layer=LAYER, context_length=CTX, batch_size=4,
                             conventions="saelens")
    assert ours.n_tokens == len(eval_tokens) * (CTX - 2)  # CTX - 1 predictions, the one at BOS left out
    assert ours.clean == pytest.approx(theirs["ce_loss_without_sae"], abs=1e-6)
    assert ours.spliced == pytest.approx(theirs["ce_loss_with_sae"], abs=1e-6)
    assert ours.zero_ablation == pytest.approx(theirs["ce_loss_with_ablation"], abs=1e-6)
    assert ours.score == pytest.approx(theirs["ce_loss_score"], abs=1e-6)
    default = ce_loss_recovered(model, sae, eval_texts, layer=LAYER, context_length=CTX, batch_size=4)
    assert default.n_tokens == ours.n_tokens + len(eval_tokens) and default.score != pytest.approx(ours.score)


def test_every_tool_runs_on_saelens_saes(saved, model, test_texts):
    import saelab

    sae = load_sae(saved[0], device="cpu")
    acts = collect_activations(model, test_texts, [LAYER], progress=False)[LAYER]
    feature = int(saelab.evaluate(sae, acts).feature_density.argmax())
    ce = saelab.ce_loss_recovered(model, sae, test_texts, layer=LAYER)
    assert ce.zero_ablation > ce.spliced > ce.clean
    assert len(saelab.feature_correlation(sae, acts).table) > 0
    assert len(saelab.top_activating_examples(sae, acts, feature, k=3).table) == 3
    assert len(saelab.feature_logit_effects(model, sae, feature, k=3).table) > 0
    assert "<" in saelab.feature_card(model, sae, acts, feature)._repr_html_()
    assert saelab.as_sae("sae", sae.sae).d_sae == sae.d_sae  # a bare SAELens object enters every tool too
    matches = saelab.match_features(sae, sae.sae).table
    assert (matches["feature"] == matches["match"]).all()


def test_tied_folder_loads_as_tied_sae(tmp_path):
    sae = TiedSAE(16, 32, seed=3)
    sae.metadata = {"hook_name": HOOK, "layer": LAYER}
    loaded = load_sae(sae.save(tmp_path / "tied"), device="cpu")
    assert isinstance(loaded, TiedSAE)
    assert torch.equal(loaded.encoder.weight, sae.encoder.weight)


def test_non_tied_folder_without_sae_lens_says_so(saved, tmp_path, monkeypatch):
    TiedSAE(16, 32, seed=3).save(tmp_path / "tied")
    monkeypatch.setitem(sys.modules, "sae_lens", None)  # import sae_lens now raises ImportError
    assert isinstance(load_sae(tmp_path / "tied", device="cpu"), TiedSAE)
    with pytest.raises(ImportError, match=r"needs sae_lens.*pip install sae-lens"):
        load_sae(saved[0], device="cpu")


def test_unsupported_sources_and_architectures_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"source: expected a SAELens folder"):
        load_sae(3)
    with pytest.raises(FileNotFoundError, match=r"cfg.json is missing"):
        load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({"architecture": "no_such_arch", "d_in": 4, "d_sae": 8}))
    save_file({"W_dec": torch.zeros(8, 4)}, str(tmp_path / "sae_weights.safetensors"))
    with pytest.raises(RuntimeError, match=r"architecture 'no_such_arch' is not one sae_lens"):
        load_sae(tmp_path)
    transcoder = sae_lens.Transcoder(sae_lens.TranscoderConfig(d_in=8, d_sae=16, d_out=8, apply_b_dec_to_input=False))
    with pytest.raises(ValueError, match=r"reconstructs its input.*'transcoder'"):
        load_sae(transcoder)
    with pytest.raises(ValueError, match=r"^reference: saelab's tools need"):
        SAELensSAE(transcoder, name="reference")
    with pytest.raises(ValueError, match=r"sae: expected a SAELens SAE object"):
        SAELensSAE(TiedSAE(4, 8, seed=0))
    with pytest.raises(ValueError, match=r"x: expected a tensor whose last dimension is d_in = 8"):
        load_sae(sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=8, d_sae=16))).encode(torch.zeros(2, 7))
    with pytest.raises(ValueError, match=r"\(release, sae_id\) pair"):
        load_sae(("only-release",))


def test_pretrained_offline_gives_a_clear_message(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match=r"could not download the pretrained SAE.*tiny_layer2_standard"):
        load_sae(("gpt2-small-res-jb", "blocks.8.hook_resid_pre"), device="cpu")
    with pytest.raises(ValueError, match=r"not found in release"):
        load_sae(("gpt2-small-res-jb", "no-such-id"), device="cpu")


@pytest.fixture(scope="module")
def reference_check(model):
    """(reference SAE, its recorded numbers, held-out layer-2 Activations of all test texts)."""
    cfg = json.loads((REFERENCE_SAES["tiny_layer2_standard"] / "cfg.json").read_text(encoding="utf-8"))
    acts = collect_activations(model, load_texts("test"), [LAYER], progress=False)[LAYER]
    return load_sae("tiny_layer2_standard", device="cpu"), cfg["metadata"]["saelab_reference"], acts


def test_reference_sae_loads_offline_and_gives_the_cards_numbers(reference_check):
    sae, recorded, acts = reference_check
    assert isinstance(sae, SAELensSAE) and sae.architecture == "standard"
    assert (sae.d_in, sae.d_sae, sae.hook_name, sae.layer) == (128, recorded["d_sae"], HOOK, LAYER)
    assert recorded["tokens"] >= 10 * recorded["n_rows"]  # far more text than the lab trains on
    ours = _interface_metrics(sae, acts.rows)
    assert ours["explained_variance"] == pytest.approx(recorded["eval"]["explained_variance"], abs=1e-5)
    assert ours["l0"] == pytest.approx(recorded["eval"]["l0"], abs=1e-5)
    assert len(acts) == recorded["eval"]["n_tokens"]


def test_reference_sae_evaluate_and_ce_give_the_cards_numbers(reference_check, model):
    import saelab

    sae, recorded, acts = reference_check
    result = saelab.evaluate(sae, acts).as_dict()
    for key in ("explained_variance", "fvu", "l0", "mse", "dead_fraction", "dense_fraction"):
        assert result[key] == pytest.approx(recorded["eval"][key], abs=1e-6)
    ce = saelab.ce_loss_recovered(model, sae, load_texts("test"), layer=LAYER)
    assert ce.score == pytest.approx(recorded["ce_loss"]["score"], abs=1e-6)
