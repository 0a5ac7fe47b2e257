"""GPT-2 small's real loading path, offline, on the stand-in (tests/gpt2_standin.py).

`saelab.load_model("gpt2-small")` goes through TransformerLens's `HookedTransformer.from_pretrained`
(config from the Hub cache's config.json, weights through transformers' GPT2LMHeadModel and
TransformerLens's GPT-2 conversion, the tokenizer through AutoTokenizer), reading a Hugging Face
cache entry that the session fixture `gpt2_hf_home` wrote. The model has GPT-2 small's shapes and
seeded random weights.
"""
import json

import pytest
import torch

import gpt2_standin
from saelab import TiedSAE, collect_activations
from subprocess_run import ROOT, run_cli, run_python

pytestmark = pytest.mark.gpt2


def test_standin_cache_has_the_hub_layout(gpt2_hf_home):
    repo = gpt2_hf_home / "hub" / gpt2_standin.REPO_FOLDER
    assert (repo / "refs" / "main").read_text() == gpt2_standin.revision()
    snapshot = repo / "snapshots" / gpt2_standin.revision()
    for name in ("config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (snapshot / name).is_file(), name
    config = json.loads((snapshot / "config.json").read_text())
    assert (config["n_layer"], config["n_embd"], config["n_head"], config["n_ctx"]) == (12, 768, 12, 1024)
    assert gpt2_standin.is_standin(gpt2_hf_home)


def test_gpt2_small_loads_through_transformer_lens_pretrained_path(gpt2_model):
    cfg = gpt2_model.cfg
    # Only TransformerLens's pretrained path sets these: the official name's repo, the HF
    # architecture read from config.json, the tokenizer named after the repo, no random init.
    assert cfg.model_name == "gpt2" and cfg.tokenizer_name == "gpt2"
    assert cfg.original_architecture == "GPT2LMHeadModel"
    assert cfg.init_weights is False
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.n_ctx) == (12, 768, 12, 64, 3072, 1024)
    assert cfg.d_vocab == 50257 and cfg.normalization_type == "LNPre"  # LN folded, as from_pretrained does
    assert not gpt2_model.training


def test_weights_come_from_the_cached_safetensors(gpt2_model, gpt2_hf_home):
    from safetensors import safe_open

    path = gpt2_hf_home / "hub" / gpt2_standin.REPO_FOLDER / "snapshots" / gpt2_standin.revision() / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        wte, wpe = f.get_tensor("transformer.wte.weight"), f.get_tensor("transformer.wpe.weight")
    # from_pretrained centres the writing weights (center_writing_weights=True)
    torch.testing.assert_close(gpt2_model.W_E, wte - wte.mean(-1, keepdim=True))
    torch.testing.assert_close(gpt2_model.W_pos, wpe - wpe.mean(-1, keepdim=True))


def test_tokenizer_is_gpt2_format_with_bos(gpt2_model):
    tokens = gpt2_model.to_tokens("The capital of France is Paris.")
    assert tokens[0, 0].item() == gpt2_model.tokenizer.bos_token_id
    assert gpt2_model.to_string(tokens[0, 1:]) == "The capital of France is Paris."
    if gpt2_standin.tokenizer_source() == "gpt2":  # GPT-2's own vocab.json/merges.txt
        assert tokens[0].tolist() == [50256, 464, 3139, 286, 4881, 318, 6342, 13]


def test_activations_and_tied_sae_on_gpt2_shapes(gpt2_model, train_texts):
    acts = collect_activations(gpt2_model, train_texts[:4], [1, 11], context_length=32, max_tokens=200,
                               progress=False)
    assert acts.layers == (1, 11) and acts.model_name == "gpt2"
    rows = acts[11].rows
    assert rows.shape == (200, 768) and torch.isfinite(rows).all()   # 32-token windows, cut at max_tokens
    sae = TiedSAE(768, 4 * 768, seed=0)
    features = sae.encode(rows)
    assert features.shape == (rows.shape[0], 3072) and (features >= 0).all()
    assert sae.decode(features).shape == rows.shape


def test_fallback_tokenizer_is_tiny_bpe_in_gpt2_format(tmp_path):
    from transformers import AutoTokenizer

    gpt2_standin.write_tokenizer_files(tmp_path, source="tiny")
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(tokenizer) == 6144 and tokenizer.bos_token == "<|endoftext|>"
    text = "def f(x):\n    return x"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_standin_script_reuses_a_written_cache_and_prints_the_env(gpt2_hf_home):
    result = run_python([str(ROOT / "tests" / "gpt2_standin.py"), str(gpt2_hf_home)], timeout=900)
    assert result.returncode == 0, result.stderr
    assert f"HF_HOME={gpt2_hf_home}" in result.stdout and "HF_HUB_OFFLINE=1" in result.stdout


@pytest.mark.slow  # the whole lab (run_lab) on the GPT-2 stand-in
def test_cli_run_on_gpt2_small_completes(gpt2_hf_home, tmp_path):
    out = tmp_path / "run"
    result = run_cli(["run", "--model", "gpt2-small", "--max-tokens", "2000", "--out", str(out)], timeout=3600,
                     **gpt2_standin.offline_env(gpt2_hf_home))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "report.html").is_file() and "expect about" in result.stderr  # the CPU estimate is printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == "gpt2-small" and manifest["settings"]["max_tokens"] == 2000
    cfg = json.loads((out / "saes" / "sweep_layer6_coef4" / "cfg.json").read_text())
    assert cfg["d_in"] == 768 and cfg["metadata"]["steps"] == 16      # two epochs of 2,000 rows: 16 steps of 256
    assert cfg["metadata"]["saelab_input_scale"] > 0


@pytest.mark.slow  # two Jupyter kernels (nbval)
def test_both_notebooks_execute_on_gpt2_small(gpt2_hf_home):
    # SAELAB_LAB_SIZE=small: the lab's documented reduced sizes (saelab.training.lab_settings.SIZES); one pytest
    # (nbval, addopts --nbval-lax) runs the exercise notebook and the solutions, each in its own kernel
    result = run_python(["-m", "pytest", "-q", "-p", "no:cacheprovider", "notebooks/lab_c4.ipynb",
                         "solutions/lab_c4.ipynb"], timeout=3600, SAELAB_MODEL="gpt2-small", SAELAB_LAB_SIZE="small",
                        **gpt2_standin.offline_env(gpt2_hf_home))
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
