"""The embedded "tiny" model: offline loading, tokenizer, quality against its card, errors."""
import os
import shutil

import pytest
import torch

from saelab import models
from saelab.data import load_texts


def test_tiny_loads_offline_in_eval_mode(model):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert not model.training
    assert model.cfg.model_name == "tiny"
    card = models.tiny_card()
    assert model.cfg.n_layers == card["config"]["n_layers"] >= 4
    assert 128 <= model.cfg.d_model <= 256
    assert 4096 <= model.cfg.d_vocab <= 8192


def test_tokenizer_round_trips_prose_and_code(model):
    for text in ["The capital of France is Paris.", "def fibonacci(n):\n    return n if n <= 1 else n"]:
        tokens = model.to_tokens(text)
        assert tokens[0, 0].item() == model.tokenizer.bos_token_id
        assert model.tokenizer.bos_token == "<|endoftext|>"
        assert model.to_string(tokens[0, 1:]) == text
        assert 1 < tokens.shape[1] < len(text)


def test_heldout_loss_matches_card_and_beats_unigram(model):
    card = models.tiny_card()
    texts = load_texts("test", max_texts=card["shipped_test_texts"])
    loss = models.text_loss(model, texts)
    assert loss == pytest.approx(card["shipped_test_loss"], abs=0.02)
    assert loss < card["shipped_test_unigram_loss"] - 1.5


def test_run_with_cache_gives_resid_post_for_every_layer(model):
    _, cache = model.run_with_cache("The quick brown fox jumps over the lazy dog.")
    n_tokens = model.to_tokens("The quick brown fox jumps over the lazy dog.").shape[1]
    for layer in range(model.cfg.n_layers):
        resid = cache["resid_post", layer]
        assert resid.shape == (1, n_tokens, model.cfg.d_model)
        assert torch.isfinite(resid).all()


def test_default_model_name_reads_environment(monkeypatch):
    monkeypatch.delenv("SAELAB_MODEL", raising=False)
    assert models.default_model_name() == "tiny"
    monkeypatch.setenv("SAELAB_MODEL", "gpt2-small")
    assert models.default_model_name() == "gpt2-small"


def test_unknown_model_name_lists_choices():
    with pytest.raises(ValueError, match=r"unknown model 'no-such-model'.*'tiny'.*gpt2-small"):
        models.load_model("no-such-model")


def test_unreachable_pretrained_model_names_tiny(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformer_lens import HookedTransformer

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(HookedTransformer, "from_pretrained", offline)
    with pytest.raises(RuntimeError, match=r"could not load 'gpt2-small'.*load_model\('tiny'\)"):
        models.load_model("gpt2-small", device="cpu")


@pytest.mark.parametrize("device, message", [
    ("tpu", "expected 'cpu', 'cuda'"),
    ("not a device", "expected 'cpu', 'cuda'"),
    ("cuda:7", "cuda"),
])
def test_bad_device_is_a_clear_error(device, message):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    with pytest.raises(ValueError, match=message):
        models.resolve_device(device)


def test_resolve_device_defaults_to_an_available_device():
    dev = models.resolve_device(None)
    assert dev.type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        assert dev.type in ("mps", "cpu")


def _tiny_copy(tmp_path, monkeypatch):
    target = tmp_path / "tiny"
    shutil.copytree(models.TINY_DIR, target)
    monkeypatch.setattr(models, "TINY_DIR", target)
    models.tiny_card.cache_clear()
    return target


def test_missing_package_data_names_the_file(tmp_path, monkeypatch):
    target = _tiny_copy(tmp_path, monkeypatch)
    (target / "model.safetensors").unlink()
    try:
        with pytest.raises(FileNotFoundError, match=r"missing: .*model\.safetensors"):
            models.load_model("tiny", device="cpu")
    finally:
        models.tiny_card.cache_clear()


@pytest.mark.parametrize("name, message", [
    ("model.safetensors", r"model\.safetensors did not load"),
    ("config.json", r"config\.json is not valid JSON"),
])
def test_corrupt_package_data_names_the_file(tmp_path, monkeypatch, name, message):
    target = _tiny_copy(tmp_path, monkeypatch)
    (target / name).write_bytes(b"\x00garbage" * 4)
    try:
        with pytest.raises(RuntimeError, match=message):
            models.load_model("tiny", device="cpu")
    finally:
        models.tiny_card.cache_clear()


def test_text_loss_rejects_empty_input(model):
    with pytest.raises(ValueError, match="texts"):
        models.text_loss(model, [])
