"""The embedded "tiny" model: offline loading, tokenizer, quality against its card, errors."""
import os
import shutil
from pathlib import Path

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


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline mode off; `from_pretrained` replaced by a recorder."""
    from huggingface_hub import constants
    from transformer_lens import HookedTransformer

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls = []

    def from_pretrained(name, **kwargs):
        calls.append((name, constants.HF_HUB_OFFLINE))
        return torch.nn.Linear(1, 1)

    monkeypatch.setattr(HookedTransformer, "from_pretrained", from_pretrained)
    return calls


def _cache_config(repo_id: str) -> None:
    """A cache entry holding only `repo_id`'s config.json, as huggingface_hub lays it out."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)


def test_offline_uncached_model_fails_at_once_without_a_request(empty_hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as $HF_HUB_OFFLINE=1 does
    monkeypatch.setattr("huggingface_hub.get_session", lambda: pytest.fail("a network request was attempted"))
    with pytest.raises(models.ModelUnavailableError, match=r"could not load 'gpt2-small'.*not in the local "
                       r"Hugging Face cache.*The embedded model 'tiny' works offline") as info:
        models.load_model("gpt2-small", device="cpu")
    assert empty_hub == []
    assert info.value.model_name == "gpt2-small" and info.value.offline_choice == "tiny"


def test_unreachable_hub_and_uncached_model_fail_without_loading(empty_hub, monkeypatch):
    monkeypatch.setattr(models, "hub_reachable", lambda: False)
    with pytest.raises(models.ModelUnavailableError, match="cannot be reached"):
        models.load_model("gpt2-small", device="cpu")
    assert empty_hub == []


def test_reachable_hub_downloads_as_usual(empty_hub, monkeypatch):
    monkeypatch.setattr(models, "hub_reachable", lambda: True)
    models.load_model("gpt2-small", device="cpu")
    assert empty_hub == [("gpt2-small", False)]  # online: Hugging Face's own download path


def test_cached_model_loads_offline_when_the_hub_is_unreachable(empty_hub, monkeypatch):
    from huggingface_hub import constants

    _cache_config("gpt2")
    assert models.in_hf_cache("gpt2") and not models.in_hf_cache("gpt2-medium")
    monkeypatch.setattr(models, "hub_reachable", lambda: False)
    models.load_model("gpt2-small", device="cpu")
    assert empty_hub == [("gpt2-small", True)]  # offline mode during the load: no retries
    assert constants.HF_HUB_OFFLINE is False  # and restored after it


def test_failed_download_is_a_model_unavailable_error(empty_hub, monkeypatch):
    from transformer_lens import HookedTransformer

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(models, "hub_reachable", lambda: True)
    monkeypatch.setattr(HookedTransformer, "from_pretrained", offline)
    with pytest.raises(models.ModelUnavailableError, match=r"could not load 'gpt2-small'.*(OSError).*'tiny'"):
        models.load_model("gpt2-small", device="cpu")


def test_hub_probe_is_short_and_sends_nothing_offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert models.hub_reachable("http://127.0.0.1:9", timeout=1) is False  # a closed local port
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.get_session", lambda: pytest.fail("a network request was attempted"))
    assert models.hub_reachable() is False


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
